"""Runs and jobs: `rackfire run STACK/ROLE -- CMD...` (a one-off task: its log followed, its
exit code the command's), `rackfire jobs STACK` (each job's schedule and last runs, and the
stack's recent runs) and `rackfire cancel STACK NUMBER`."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from rackfire.cli.common import Json, Url, connect, parse_target
from rackfire.cli.output import err, fmt_uptime, out, print_json

if TYPE_CHECKING:
    from rackfire.api.shapes import RunShape

POLL = 0.25
STATE_STYLE = {"succeeded": "green", "running": "cyan", "pending": "yellow",
               "failed": "red", "timed_out": "red", "lost": "red", "skipped": "dim",
               "cancelled": "dim"}
ACTIVE = ("pending", "running")


def register(app: typer.Typer) -> None:
    app.command("run", context_settings={"allow_interspersed_args": False})(run)
    app.command("jobs")(jobs)
    app.command("cancel")(cancel)


def run(target: Annotated[str, typer.Argument(help="STACK/ROLE")],
        command: Annotated[list[str] | None, typer.Argument(
            help="after --: the command (default: the role's own)")] = None,
        timeout: Annotated[str | None, typer.Option(
            help="stop it after this long, e.g. 10m (default: the job's, or 1h)")] = None,
        detach: Annotated[bool, typer.Option(
            "-d", "--detach", help="return once it is claimed; `rackfire jobs` shows it")
        ] = False,
        json: Json = False, url: Url = None) -> None:
    """Run a command once in a fresh instance of the role (its image, release, config and
    env: a database migration), print its log as it runs and exit with its exit code (128
    + the signal that killed it; 124 after its timeout). Ctrl-C leaves it running."""
    from rackfire.model.units import parse_duration

    t = parse_target(target, need_role=True)
    assert t.role is not None
    try:
        seconds = parse_duration(timeout) if timeout else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--timeout") from None
    command = command[1:] if command and command[0] == "--" else command
    client = connect(url)
    started = client.start_task(t.stack, t.role, list(command or []), seconds)
    name = f"{t.stack} run #{started['number']}"
    if detach:
        if json:
            print_json(started)
        else:
            err.print(f"{name} ({started['instance']}) claimed")
        return
    err.print(f"{name}: {' '.join(command or []) or 'the role command'} "
              f"in {started['instance']}", style="dim")
    try:
        done = _follow(client, started, url, quiet=json)
    except KeyboardInterrupt:
        err.print(f"{name} goes on; `rackfire cancel {t.stack} {started['number']}` stops it")
        sys.exit(130)
    if json:
        print_json(done)
    else:
        style = STATE_STYLE.get(done["state"], "")
        err.print(Text(f"{name} {done['state']}: {done['reason']}", style=style))
    sys.exit(done["exit_status"])


def _follow(client: Any, run: RunShape, url: str | None, quiet: bool) -> RunShape:
    """Wait for it to start, print its log until it ends, and its record then."""
    stack, number = run["stack"], run["number"]
    while run["state"] == "pending":
        time.sleep(POLL)
        run = client.run(stack, number)
    streamer = None
    if run["state"] == "running" and not quiet:
        streamer = threading.Thread(target=_print_log, args=(url, run["instance"]),
                                    daemon=True)
        streamer.start()
    while run["state"] in ACTIVE:
        time.sleep(POLL)
        run = client.run(stack, number)
    if streamer is not None:
        streamer.join(5.0)  # its instance goes soon after it ends: the stream ends then
    elif not quiet and run["log"]:
        sys.stdout.write(run["log"] + "\n")  # over before it was seen running
    return run


def _print_log(url: str | None, instance: str) -> None:
    from rackfire.cli.streams import _base_url, _stream
    from rackfire.errors import RackfireError

    try:
        for chunk in _stream(_base_url(url), f"/v1/instances/{instance}/logs",
                             {"tail": 0, "follow": "true", "timestamps": "false"}):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    except (RackfireError, OSError):
        return  # gone already: its record holds the log's tail


def jobs(stack: Annotated[str, typer.Argument(help="STACK")],
         limit: Annotated[int, typer.Option(help="recent runs shown", min=1, max=1000)] = 20,
         json: Json = False, url: Url = None) -> None:
    """Each job of the stack (its schedule, next slot, last run) and the stack's recent runs
    (jobs' and tasks'), newest first."""
    client = connect(url)
    found, runs = client.jobs(stack), client.runs(stack, limit=limit)
    if json:
        print_json({"jobs": found, "runs": runs})
        return
    now = time.time()
    if found:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for c in ("JOB", "SCHEDULE (UTC)", "NEXT", "CONCURRENCY", "ACTIVE", "LAST RUN"):
            table.add_column(c)
        for j in found:
            last = j["runs"][0] if j["runs"] else None
            nxt = j["next_slot"]
            table.add_row(j["role"], j["schedule"],
                          f"in {fmt_uptime(nxt - now)}" if nxt is not None else "-",
                          j["concurrency"], str(j["active"]), _result(last) if last else "-")
        out.print(table)
    if not runs:
        out.print(f"no runs in {stack} yet")
        return
    table = Table(box=None, pad_edge=False, header_style="bold", title=None)
    for c in ("#", "ROLE", "KIND", "STARTED", "TOOK", "HOST", "RESULT"):
        table.add_column(c, justify="right" if c in ("#", "TOOK") else "left")
    for r in runs:
        took = ((r["ended"] or now) - r["started"]) if r["started"] else None
        table.add_row(str(r["number"]), r["role"], r["kind"],
                      time.strftime("%m-%d %H:%M:%S", time.localtime(r["started"]))
                      if r["started"] else "-", fmt_uptime(took) if took is not None else "-",
                      r["host"] or "-", _result(r))
    out.print(table)


def _result(r: RunShape) -> Text:
    text = r["state"] if r["state"] in ACTIVE else f"{r['state']}: {r['reason']}"
    return Text(text, style=STATE_STYLE.get(r["state"], ""))


def cancel(stack: Annotated[str, typer.Argument(help="STACK")],
           number: Annotated[int, typer.Argument(help="the run's number", min=1)],
           json: Json = False, url: Url = None) -> None:
    """Stop a run (SIGTERM, SIGKILL after the role's stop_timeout)."""
    done = connect(url).cancel_run(stack, number)
    if json:
        print_json(done)
    else:
        out.print(f"{stack} run #{number}: {done['state']} {done['reason']}".rstrip())
