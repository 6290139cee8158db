"""The `rackfire` program: the CLI (cli/, a thin client of the API) and the two commands that
run a part of the system in this process, `rackfire server` and `rackfire agent`.

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
) -> None:
    """Run the server in the foreground."""
    if ctx.invoked_subcommand is not None:
        return
    from rackfire.model import stack
    from rackfire.server import serve

    kind = stack.RuntimeKind(runtime) if runtime is not None else None
    serve(data_dir, listen, port, subnet_pool, kind, local_host)


@cli.app.command()
def agent(join: Annotated[str | None, typer.Option("--join", help="the controller's URL")]
          = None,
          token: Annotated[str | None, typer.Option(help="a join token (first time only)")]
          = None,
          name: Annotated[str | None, typer.Option(help="this host's name [default: its "
                                                   "hostname]")] = None,
          label: Annotated[list[str] | None, typer.Option(
              help="KEY=VALUE, e.g. rack=r1 (repeatable)")] = None,
          data_dir: Annotated[Path, typer.Option(help="the agent's state")] =
          Path("/var/lib/rackfire-agent"),
          interval: Annotated[float, typer.Option(help="seconds between heartbeats")] = 5.0,
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
    from rackfire.agent.daemon import run

    run(join, token, name, labels, data_dir, interval, listen, runc_root)


def main() -> None:
    cli.main()
