"""Day-2 commands: scale, resize, stop/start/restart, stats, events. Each is one API call
(then a wait for the stack, or a table)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from rackfire.cli import output
from rackfire.cli.common import Json, NoWait, Timeout, Url, connect, parse_target, wait_converged
from rackfire.cli.output import err, out, print_json
from rackfire.errors import PrereqError
from rackfire.model.units import parse_size

if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.api.shapes import ChangeShape, EventShape

PAGE = 500  # events per request under -f
Target = Annotated[str, typer.Argument(help="STACK, STACK/ROLE or STACK/ROLE/INDEX")]


def register(app: typer.Typer) -> None:
    app.command("scale")(scale)
    app.command("instances", help="Alias of `scale`.")(scale)
    app.command("resize")(resize)
    app.command("autoscale")(autoscale)
    for verb in ("stop", "start", "restart"):
        app.command(verb, help=_OPERATE_HELP[verb])(_operation(verb))
    app.command("stats")(stats)
    app.command("events")(events)


def autoscale(target: Annotated[str, typer.Argument(help="STACK or STACK/ROLE")],
              json: Json = False, url: Url = None) -> None:
    """Each autoscaled role (`scale:` in the stack file): its metric, target and bounds, the
    count it has and the count it wants, and the reason of its last decision."""
    from rich.table import Table

    t = parse_target(target)
    rows = connect(url).autoscale(t.stack, t.role)
    if json:
        print_json(rows)
        return
    if not rows:
        out.print(f"no role of {t.stack} autoscales (give one `scale:`)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("ROLE", "TARGET", "METRIC", "READY", "COUNT", "WANTS", "MIN-MAX", "LAST DECISION"):
        table.add_column(c, justify="right" if c in ("READY", "COUNT", "WANTS") else "left")
    for r in rows:
        metric = "unknown" if r["metric"] is None else f"{r['metric']:.4g}"
        bounds = f"{r['min_now'] if r['min_now'] is not None else r['min']}-{r['max']}"
        why = r["reason"] + (f" ({r['error']})" if r["error"] else "")
        table.add_row(r["role"], r["target"] or "schedule", metric,
                      "-" if r["ready"] is None else str(r["ready"]), str(r["count"]),
                      "-" if r["wanted"] is None else str(r["wanted"]), bounds, why or "-")
    out.print(table)


def scale(role: Annotated[str, typer.Argument(help="STACK/ROLE")],
          count: Annotated[int, typer.Argument(help="the new instance count")],
          no_wait: NoWait = False, timeout: Timeout = 600, url: Url = None) -> None:
    """Set a role's instance count: up creates the missing indexes, down removes the highest
    first (out of names and ports, then a graceful stop). Stored as the desired state."""
    t = parse_target(role, need_role=True)
    client = connect(url)
    result = client.scale(t.stack, str(t.role), count)
    _follow(client, result, no_wait, timeout)


def resize(
    role: Annotated[str, typer.Argument(help="STACK/ROLE")],
    cpu: Annotated[float | None, typer.Option(help="cores, e.g. 1.5")] = None,
    memory: Annotated[str | None, typer.Option(help="e.g. 256M")] = None,
    disk: Annotated[str | None, typer.Option(help="grow online, e.g. 2G")] = None,
    pids: Annotated[int | None, typer.Option(help="process limit")] = None,
    no_wait: NoWait = False, timeout: Timeout = 600, url: Url = None,
) -> None:
    """Change a role's limits live (no restart) and grow its disks online. Refused before
    any change if a disk would shrink or the host could not hold it."""
    t = parse_target(role, need_role=True)
    changes: dict[str, float | int] = {}
    if cpu is not None:
        changes["cpu"] = cpu
    for name, size in (("memory", memory), ("disk", disk)):
        if size is not None:
            try:
                changes[name] = parse_size(size)
            except ValueError as e:
                raise PrereqError(f"--{name}: {e}") from None
    if pids is not None:
        changes["pids"] = pids
    if not changes:
        raise PrereqError("nothing to resize", hint="give --cpu, --memory, --disk or --pids")
    client = connect(url)
    _follow(client, client.resize(t.stack, str(t.role), **changes), no_wait, timeout)


def _follow(client: Client, result: ChangeShape, no_wait: bool, timeout: float) -> None:
    output.print_plan(result, unchanged="it is already so")
    if not no_wait:
        wait_converged(client, result["stack"], result["generation"], len(result["actions"]),
                       timeout)
        output.print_instances(client.instances(result["stack"]), show_stack=False)


_OPERATE_HELP = {
    "stop": "Stop instances gracefully; they keep their disk and IP and stay stopped.",
    "start": "Start stopped or failed instances (clears `failed`).",
    "restart": "Restart instances; running ones one at a time, each healthy before the next.",
}


def _operation(verb: str) -> Callable[..., None]:
    def command(target: Target, no_wait: NoWait = False, timeout: Timeout = 600,
                url: Url = None) -> None:
        t = parse_target(target)
        client = connect(url)
        result = client.operate(t.stack, verb, t.role, t.index)
        err.print(f"{verb}: {', '.join(result['instances'])}")
        if not no_wait:
            wait_converged(client, t.stack, result["generation"], len(result["instances"]),
                           timeout)
            output.print_instances(client.instances(t.stack), show_stack=False)

    command.__name__ = verb
    return command


def stats(target: Target, watch: Annotated[bool, typer.Option(
              "--watch", "-w", help="refresh in place every 2 s")] = False,
          json: Json = False, url: Url = None) -> None:
    """CPU, memory, disk, network, pids, uptime, state and health per instance, measured."""
    t = parse_target(target)
    client = connect(url)
    if not watch:
        rows = client.stats(t.stack, t.role, t.index)
        print_json(rows) if json else out.print(output.stats_table(rows))
        return
    from rich.live import Live

    with Live(output.stats_table(client.stats(t.stack, t.role, t.index)), console=out,
              auto_refresh=False) as live:
        try:
            while True:
                time.sleep(2)
                live.update(output.stats_table(client.stats(t.stack, t.role, t.index)),
                            refresh=True)
        except KeyboardInterrupt:
            pass


def events(stack: Annotated[str | None, typer.Argument(help="only this stack")] = None,
           follow: Annotated[bool, typer.Option("-f", "--follow",
                                                help="keep printing new events")] = False,
           limit: Annotated[int, typer.Option("-n", "--limit", help="how many to show")] = 50,
           json: Json = False, url: Url = None) -> None:
    """What the controller did or was asked to do: time, actor, target, action, result."""
    client = connect(url)
    rows = client.events(stack, limit=limit)
    if not follow:
        print_json(rows) if json else output.print_events(rows, header=True)
        return
    # Followed: one JSON object per line (a stream a script can read line by line).
    _print_events(rows, json, header=True)
    last = rows[-1]["id"] if rows else 0
    try:
        while True:
            time.sleep(0.5)
            while rows := client.events(stack, after=last, limit=PAGE):  # every one, in order
                _print_events(rows, json, header=False)
                last = rows[-1]["id"]
                if len(rows) < PAGE:
                    break
    except KeyboardInterrupt:
        pass


def _print_events(rows: list[EventShape], json: bool, header: bool) -> None:
    if json:
        for r in rows:
            print_json(r, indent=None)
    elif rows or header:
        output.print_events(rows, header)
