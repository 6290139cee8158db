"""`rackfire load STACK --target URL --clients N --rate R/s --duration D`: a load test by the
built-in client appliance (control/loadtest.py), a progress bar while it runs, then its
report as a table (`--json`: the report's JSON; `--save FILE` keeps it too).

Exit status: 0 once the test ran, whatever its requests' errors (they are its result, shown
in the report); 1 if the test itself failed (no client gave a result)."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from rackfire.cli.common import Json, Url, connect
from rackfire.cli.output import err, out, print_json

if TYPE_CHECKING:
    from rackfire.api.shapes import LoadReportShape, LoadTestShape

POLL = 0.5


def register(app: typer.Typer) -> None:
    app.command("load")(load)


def parse_rate(text: str) -> float:
    """`600/s`, `600`, `36000/m`: requests a second."""
    raw, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip())
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if per is None or not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r}: not a rate (e.g. 600/s)")
    return value / per


def load(stack: Annotated[str, typer.Argument(help="the target's stack")],
         target: Annotated[str, typer.Option(help="http://host:port/path")],
         clients: Annotated[int, typer.Option(help="client instances (64 MB each)",
                                              min=1, max=64)] = 4,
         rate: Annotated[str, typer.Option(help="requests a second, all clients: 600/s")
                         ] = "100/s",
         duration: Annotated[str, typer.Option(help="how long requests arrive: 60s, 5m")
                             ] = "30s",
         connections: Annotated[int, typer.Option(help="connections at most, per client",
                                                  min=1, max=1024)] = 64,
         save: Annotated[Path | None, typer.Option(help="also write the report's JSON here")
                         ] = None,
         json: Json = False, url: Url = None) -> None:
    """Load-test a URL: CLIENTS instances of the built-in client (a stack of their own,
    STACK-load), started together, send RATE requests a second between them (an open model:
    on schedule whatever the answers' pace) for DURATION; then one report of throughput,
    latency percentiles (from each request's intended start) and errors by kind. The
    clients' stack is removed afterwards. Exits 0 once it ran (errors are in the report),
    1 if the test itself failed."""
    from rackfire.model.units import parse_duration

    try:
        per_second = parse_rate(rate)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--rate") from None
    try:
        seconds = parse_duration(duration)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--duration") from None
    client = connect(url)
    test = client.start_load(stack, target, clients, per_second, seconds, connections)
    try:
        test = _follow(client, test)
    except KeyboardInterrupt:
        err.print(f"load test {test['id']} goes on; its stack {test['load_stack']} is "
                  "removed when it ends")
        sys.exit(130)
    if save is not None and test["report"] is not None:
        save.write_text(jsonlib.dumps(test["report"], indent=2) + "\n")
    if json:
        print_json(test["report"] if test["report"] is not None else test)
    elif test["report"] is not None:
        out.print(report_table(test["report"]))
    if test["state"] != "done":
        err.print(Text(f"load test failed: {test['message']}", style="red"))
        sys.exit(1)
    if test["message"] and not json:
        err.print(Text(test["message"], style="yellow"))


def _follow(client: Any, test: LoadTestShape) -> LoadTestShape:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[what]}"), TimeElapsedColumn())
    total = max(test["start_at"] - test["created"], 0) + test["duration"]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"load {test['target']}", total=total, what="")
        while test["state"] == "running":
            time.sleep(POLL)
            test = client.load_test(test["id"])
            now = time.time()
            if now < test["start_at"]:
                what = f"{test['clients']} clients starting"
            elif test["runs_done"] < test["runs_total"]:
                what = f"{test['runs_done']}/{test['runs_total']} clients done"
            else:
                what = "removing the clients"
            bar.update(task, completed=min(now - test["created"], total), what=what)
        bar.update(task, completed=total, what=test["state"])
    return test


def report_table(r: LoadReportShape) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("WHAT")
    table.add_column("VALUE", justify="right")
    failed = sum(r["errors"].values())
    rows = [
        ("clients", f"{r['reporting']}/{r['clients']}"),
        ("rate asked", f"{r['intended_rate']:.1f}/s"),
        ("rate sent", f"{r['achieved_rate']:.1f}/s"),
        ("requests", f"{r['sent']}"),
        ("answered", f"{r['completed']}"),
        ("ok (1xx-3xx)", f"{r['ok']}"),
        ("duration", f"{r['duration']:.2f} s"),
        ("throughput", f"{r['throughput']:.1f}/s"),
        ("p50", f"{r['p50_ms']:.2f} ms"),
        ("p95", f"{r['p95_ms']:.2f} ms"),
        ("p99", f"{r['p99_ms']:.2f} ms"),
        ("max", f"{r['max_ms']:.2f} ms"),
        ("errors", str(failed)),
    ]
    rows += [(f"  {kind}", str(n)) for kind, n in r["errors"].items() if n]
    rows += [(f"status {code}", str(n)) for code, n in r["statuses"].items()]
    for what, value in rows:
        style = "red" if what.startswith("  ") or (what == "errors" and failed) else ""
        table.add_row(what, Text(value, style=style))
    return table
