"""What several command modules share: option types, target parsing, waiting for a stack.

The CLI starts fast by importing only what the command that runs needs: a command module
imports typer and its option types at the top, and the API client (httpx), the stack file
loader (pydantic, YAML, Jinja) and rich's live displays inside the commands that use them.
`rackfire --help` builds every command, so it imports every command module, and no more
(tests/unit/test_cli_imports.py checks it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rackfire.cli.output import err
from rackfire.errors import PrereqError, RackfireError

if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.model.instance import Target

Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Yes = Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")]
Url = Annotated[str | None, typer.Option("--url", envvar="RACKFIRE_URL",
                                         help="the server [default: http://127.0.0.1:7480]")]
Timeout = Annotated[float, typer.Option(help="seconds to wait for convergence")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="return once the change is stored")]


def connect(url: str | None = None, data_dir: Path | None = None) -> Client:
    """The API client of the server at `url`."""
    from rackfire.api.client import Client

    return Client(url, data_dir=data_dir)


def default_data_dir() -> Path:
    """api.client.default_data_dir, here so that a default in --help needs no httpx (the
    test of the CLI's imports checks that the two agree)."""
    return Path(os.environ.get("RACKFIRE_DATA_DIR") or "/var/lib/rackfire")


def parse_target(text: str, *, need_role: bool = False) -> Target:
    from rackfire.model.instance import Target

    try:
        target = Target.parse(text)
    except ValueError as e:
        raise PrereqError(str(e)) from None
    if need_role and target.role is None:
        raise PrereqError(f"{text!r} names a stack; give STACK/ROLE (e.g. {text}/web)")
    return target


def wait_converged(client: Client, stack: str, generation: int, total: int,
                   timeout: float) -> None:
    """A progress bar until the stack reaches `generation`; an error that names the failing
    instance and why if it cannot."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("applying", total=max(total, 1))
        while True:
            s = client.stack(stack)
            ours = [a for a in s["actions"] if a["generation"] == generation]
            done = [a for a in ours if a["state"] in ("done", "failed")]
            running = [a for a in ours if a["state"] == "running"]
            desc = (f"{running[-1]['kind']} {running[-1]['instance']}" if running
                    else s["message"] or s["status"])
            bar.update(task, completed=min(len(done), total) if total else 0,
                       description=desc[:60])
            # A later generation (a rollback the controller made) counts as settled too.
            if s["converged"] and s["generation"] >= generation:
                bar.update(task, completed=max(total, 1), description=s["status"])
                if s["status"] == "degraded":
                    err.print(f"[yellow]stack {stack} is degraded:[/] ", end="")
                    err.print(s["message"], markup=False)
                return
            if s["status"] == "failed":
                failed = [a for a in ours if a["state"] == "failed"]
                detail = "; ".join(f"{a['instance']}: {a['error']}" for a in failed[-3:]
                                   if a["error"] not in s["message"])
                raise RackfireError(
                    f"stack {stack} failed: {s['message']}" + (f" ({detail})" if detail else ""),
                    hint=f"`rackfire ps {stack}` shows each instance and its log; the server "
                    "keeps retrying")
            if time.monotonic() > deadline:
                raise RackfireError(f"stack {stack} did not converge in {timeout:.0f}s: "
                                    + ", ".join(s["unready"][:5]),
                                    hint=f"`rackfire ps {stack}`; the server keeps trying")
            time.sleep(0.3)
