"""The `rackfire` program: the CLI (cli/, a thin client of the API) and the commands that
run a part of the system in this process, `rackfire server`, `rackfire agent` and
`rackfire watchdog` (the agent's self-fencing watchdog, agent/watchdog.py).

Those two are here, not in cli/, so that the CLI imports only the API client's side (the
dependency rule, tests/unit/test_layering.py). They import the server or the agent when they
run, so the CLI's other commands load neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rackfire.cli import main as cli
from rackfire.errors import PrereqError


# The group is cli's, for `rackfire server stop` (a client call); running one is this.
@cli.server_app.callback(invoke_without_command=True, no_args_is_help=False)
def server(
    ctx: typer.Context,
    data_dir: cli.DataDir = cli.DEFAULT_DATA_DIR,
    listen: Annotated[str, typer.Option(help="address to serve the API on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 7480,
    subnet_pool: Annotated[str, typer.Option(help="stack networks come from here")] =
    "10.88.0.0/16",
    runtime: Annotated[cli.RuntimeKind | None, typer.Option(help="force one runtime")] = None,
    local_host: Annotated[bool, typer.Option(
        help="run instances on this machine too, not only on joined hosts")] = True,
    lease: Annotated[float, typer.Option(
        help="seconds a heartbeat holds a host's lease (at least 3 of its heartbeats)")] = 3.0,
    fence_after: Annotated[float | None, typer.Option(
        help="seconds without a renewed lease before a host's watchdog stops what fences "
             "[default: its lease + 1]")] = None,
) -> None:
    """Run the server in the foreground."""
    if ctx.invoked_subcommand is not None:
        return
    from rackfire.model import stack
    from rackfire.server import serve

    if not 1.0 <= lease <= 600:
        raise PrereqError("--lease must be 1 to 600 seconds")
    if fence_after is not None and not 1.0 <= fence_after <= 3600:
        raise PrereqError("--fence-after must be 1 to 3600 seconds")
    from rackfire.control.hosts import Liveness

    kind = stack.RuntimeKind(runtime) if runtime is not None else None
    serve(data_dir, listen, port, subnet_pool, kind, local_host, Liveness(lease, fence_after))


@cli.app.command()
def agent(join: Annotated[str | None, typer.Option("--join", help="the controller's URL")]
          = None,
          token: Annotated[str | None, typer.Option(help="a join token (first time only)")]
          = None,
          token_file: Annotated[Path | None, typer.Option(
              help="a file holding the join token, removed once read (as an install over "
                   "SSH leaves it: not in the process list)")] = None,
          name: Annotated[str | None, typer.Option(help="this host's name [default: its "
                                                   "hostname]")] = None,
          label: Annotated[list[str] | None, typer.Option(
              help="KEY=VALUE, e.g. rack=r1 (repeatable)")] = None,
          data_dir: Annotated[Path, typer.Option(help="the agent's state")] =
          Path("/var/lib/rackfire-agent"),
          interval: Annotated[float, typer.Option(help="seconds between heartbeats")] = 1.0,
          listen: Annotated[str, typer.Option(help="HOST:PORT of this agent's API (the "
                                              "controller calls it)")] = "0.0.0.0:7481",
          runc_root: Annotated[Path, typer.Option(help="runc's state dir for this agent")] =
          Path("/run/rackfire/runc"),
          ) -> None:
    """Run this host's agent: join the controller once (with a token), then report."""
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise PrereqError(f"--label {item!r} is not KEY=VALUE", hint="e.g. --label rack=r1")
        labels[key] = value
    if not 0.2 <= interval <= 300:
        raise PrereqError("--interval must be 0.2 to 300 seconds")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
            token_file.unlink()
        except FileNotFoundError:
            pass  # read and removed at an earlier start: the credential is kept by now
    from rackfire.agent.daemon import run

    run(join, token, name, labels, data_dir, interval, listen, runc_root)


@cli.app.command()
def watchdog(data_dir: Annotated[Path, typer.Option(help="the agent's state")] =
             Path("/var/lib/rackfire-agent")) -> None:
    """Run this host's self-fencing watchdog (the agent starts one itself)."""
    from rackfire.agent.watchdog import main as watch

    watch(data_dir.absolute())


def main() -> None:
    cli.main()
