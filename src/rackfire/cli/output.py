"""How the CLI shows things: aligned tables, plans, errors with what to do next."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rackfire.errors import RackfireError, SpecError

# Not a terminal (a pipe, a test): no width to fit, never cut a cell.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True, highlight=False, soft_wrap=True)

KIND_STYLE = {"create": "green", "destroy": "red", "replace": "yellow",
              "reconfigure": "cyan", "restart": "magenta"}
KIND_MARK = {"create": "+", "destroy": "-", "replace": "-/+", "reconfigure": "~",
             "restart": "↻"}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_plan(plan: dict[str, Any]) -> None:
    actions = plan["actions"]
    if not actions:
        out.print(f"stack [bold]{plan['stack']}[/]: no changes; it matches the file.")
        return
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for col in ("", "ACTION", "INSTANCE", "REASON"):
        table.add_column(col)
    for a in actions:
        style = KIND_STYLE.get(a["kind"], "")
        table.add_row(Text(KIND_MARK.get(a["kind"], "?"), style), Text(a["kind"], style),
                      Text(a["instance"]),
                      Text(a["reason"] + (f" (held: {a['held']})" if a.get("held") else "")))
    out.print(table)
    counts: dict[str, int] = {}
    for a in actions:
        counts[a["kind"]] = counts.get(a["kind"], 0) + 1
    summary = ", ".join(f"{n} to {k}" for k, n in counts.items())
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


def print_instances(rows: list[dict[str, Any]], show_stack: bool) -> None:
    if not rows:
        out.print("no instances")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    cols = (["STACK"] if show_stack else []) + [
        "NAME", "ROLE", "INDEX", "STATE", "IP", "HOST", "UPTIME", "HEALTH", "RUNTIME"]
    for c in cols:
        table.add_column(c, justify="right" if c == "INDEX" else "left")
    for r in rows:
        state = r["state"]
        if r.get("oom_killed"):
            state += " (OOM)"
        elif r.get("exit_code") is not None and state == "stopped":
            state += f" ({r['exit_code']})"
        state_style = {"running": "green", "stopped": "red", "partial": "yellow"}.get(
            r["state"], "")
        health = r["health"]
        h_style = {"healthy": "green", "unhealthy": "red", "starting": "yellow"}.get(health, "")
        runtime = r["runtime"] if r["isolated"] else f"{r['runtime']} (not isolated)"
        cells = [Text(c) for c in ([r["stack"]] if show_stack else []) + [
            r["name"], r["role"], str(r["index"])]]
        cells += [Text(state, state_style), Text(r["ip"] or "-"), Text(r["host"]),
                  Text(fmt_uptime(r["uptime"])), Text(health, h_style), Text(runtime)]
        table.add_row(*cells)
    out.print(table)


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
