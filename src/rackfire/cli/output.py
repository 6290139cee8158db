"""How the CLI shows things: aligned tables, plans, errors with what to do next."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rackfire.errors import RackfireError, SpecError
from rackfire.model.units import format_size_approx

if TYPE_CHECKING:
    from rackfire.api.shapes import EventShape, InstanceShape, PlanShape, StatsShape

# Not a terminal (a pipe, a test): no width to fit, never cut a cell.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True, highlight=False, soft_wrap=True)

KIND_STYLE = {"create": "green", "destroy": "red", "replace": "yellow",
              "reconfigure": "cyan", "restart": "magenta", "stop": "red", "fail": "red",
              "resize": "cyan", "reload": "cyan", "build-image": "blue",
              "build-release": "blue", "migrate": "yellow", "publish": "cyan"}
KIND_MARK = {"create": "+", "destroy": "-", "replace": "-/+", "reconfigure": "~",
             "restart": "↻", "stop": "■", "fail": "✗", "resize": "↔", "reload": "⟳",
             "build-image": "▲", "build-release": "▲", "migrate": "→", "publish": "⟳"}


def print_json(data: Any, indent: int | None = 2) -> None:
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")
    sys.stdout.flush()


def print_plan(plan: PlanShape, unchanged: str = "it matches the file", *,
               explain: bool = False) -> None:
    actions = plan["actions"]
    for note in plan.get("notes", ()):
        err.print("[yellow]note:[/] ", end="")
        err.print(note, markup=False)
    lost = plan.get("lost", ())
    for host in sorted({x["host"] for x in lost}):
        names = ", ".join(x["instance"] for x in lost if x["host"] == host)
        err.print("[red]lost:[/] ", end="")
        err.print(f"host {host} missed its heartbeats (its lease lapsed); left as they are: "
                  f"{names}", markup=False)
    if explain:
        out.print("[bold]Placement[/] (chosen host; why each other host ranked lower or "
                  "was rejected):")
        for line in plan.get("placement", ()):
            out.print("  " + line, markup=False, highlight=False)
        out.print()
    if not actions:
        out.print(Text.assemble("stack ", (plan["stack"], "bold"), f": no changes; {unchanged}."))
        return
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for col in ("", "ACTION", "TARGET", "REASON"):
        table.add_column(col)
    for a in actions:
        style = KIND_STYLE.get(a["kind"], "")
        by = a.get("by", "executor")
        table.add_row(Text(KIND_MARK.get(a["kind"], "?"), style), Text(a["kind"], style),
                      Text(a.get("subject") or a["instance"] or ""),
                      Text(a["reason"] + (f" (held: {a['held']})" if a.get("held") else "")
                           + (f" [by the {by}]" if by != "executor" else "")))
    out.print(table)
    counts: dict[str, int] = {}
    for a in actions:
        counts[a["kind"]] = counts.get(a["kind"], 0) + 1
    summary = ", ".join(f"{n} to {k.replace('-', ' ')}" for k, n in counts.items())
    out.print(f"\nPlan for stack [bold]{plan['stack']}[/]: {summary}.")


def fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def print_instances(rows: list[InstanceShape], show_stack: bool) -> None:
    if not rows:
        out.print("no instances")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    cols = (["STACK"] if show_stack else []) + [
        "NAME", "ROLE", "INDEX", "STATE", "IP", "HOST", "UPTIME", "HEALTH", "RESTARTS",
        "RUNTIME", "LAST ERROR"]
    for c in cols:
        table.add_column(c, justify="right" if c in ("INDEX", "RESTARTS") else "left")
    for r in rows:
        state = r["state"]
        if r.get("stopped_by_operator") and r["state"] == "stopped":
            state += " by operator"  # (how its run ended is the operator's stop)
        elif r.get("ended", "stopped") != "stopped" and state in ("stopped", "failed"):
            state += f", {r['ended']}"  # "failed, exited 3"
        state_style = {"running": "green", "stopped": "red", "partial": "yellow",
                       "failed": "bold red"}.get(r["state"], "")
        health = r["health"]
        h_style = {"healthy": "green", "unhealthy": "red", "starting": "yellow"}.get(health, "")
        runtime = r["runtime"] if r["isolated"] else f"{r['runtime']} (not isolated)"
        cells = [Text(c) for c in ([r["stack"]] if show_stack else []) + [
            r["name"], r["role"], str(r["index"])]]
        cells += [Text(state, state_style), Text(r["ip"] or "-"), Text(r["host"]),
                  Text(fmt_uptime(r["uptime"])), Text(health, h_style),
                  Text(str(r.get("restarts", 0))), Text(runtime),
                  Text(r.get("health_message") or "-")]
        table.add_row(*cells)
    out.print(table)


def _size(n: int | None) -> str:
    return "-" if n is None else format_size_approx(n)


def _used_of(used: int | None, limit: int | None) -> str:
    return f"{_size(used)} / {_size(limit) if limit else 'no limit'}" if used is not None \
        else "-"


def stats_table(rows: list[StatsShape]) -> Table | Text:
    if not rows:
        return Text("no instances")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("NAME", "STATE", "HEALTH", "CPU", "MEMORY", "DISK", "LOG", "NET RX / TX",
              "PIDS", "UPTIME", "HOST"):
        table.add_column(c, justify="right" if c in ("CPU", "PIDS") else "left")
    for r in rows:
        cpu = f"{r['cpu_percent']:.1f}%" if r.get("cpu_percent") is not None else "-"
        net = (f"{_size(r['net_rx'])} / {_size(r['net_tx'])}"
               if r.get("net_rx") is not None else "-")
        table.add_row(r["name"], r["state"], r["health"], cpu,
                      _used_of(r.get("memory_used"), r.get("memory_limit")),
                      _used_of(r.get("disk_used"), r.get("disk_limit")),
                      _size(r.get("log_bytes")), net,
                      str(r["pids"]) if r.get("pids") is not None else "-",
                      fmt_uptime(r["uptime"]), r["host"])
    return table


# Fixed widths, so that lines printed batch by batch under `events -f` line up too.
EVENT_COLUMNS = (("TIME", 19), ("ACTOR", 22), ("TARGET", 28), ("ACTION", 11), ("RESULT", 8))


def print_events(rows: list[EventShape], header: bool) -> None:
    if header:
        out.print(Text(" ".join(name.ljust(w) for name, w in EVENT_COLUMNS) + " REASON",
                       style="bold"))
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
        cells = [when, r["actor"], r["target"], r["action"]]
        line = Text(" ".join(c.ljust(w) for c, (_, w) in zip(cells, EVENT_COLUMNS, strict=False)))
        style = {"failed": "red", "refused": "yellow"}.get(r["result"], "")
        line.append(" " + r["result"].ljust(EVENT_COLUMNS[-1][1]), style)
        line.append(" " + r["reason"])
        out.print(line)


def print_error(e: RackfireError) -> None:
    if isinstance(e, SpecError):
        err.print(f"[red]error:[/] the stack file has {len(e.problems)} problem(s):")
        for p in e.problems:
            err.print("  " + p.render(), markup=False)
        err.print("nothing was changed.")
        return
    problems = getattr(e, "body", {}).get("problems") if hasattr(e, "body") else None
    if problems:
        err.print(f"[red]error:[/] the stack file has {len(problems)} problem(s):")
        for p in problems:
            where = f"{p['file']}:{p['line']}:{p['column']}"
            err.print(f"  {where}: {p['field']}: {p['message']}", markup=False)
        err.print("nothing was changed.")
        return
    err.print("[red]error:[/] ", end="")
    err.print(e.message, markup=False)
    if e.hint:
        err.print("[dim]hint:[/] ", end="")
        err.print(e.hint, markup=False)
