"""`rackfire` commands. Each one is a few calls to the API client and a way to show them.

Exit codes: 0 success; 1 error; `plan` exits 2 when there are changes (Terraform's
detailed exit codes).
"""

from __future__ import annotations

import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rackfire.cli import backups, day2, hosts, jobs, load, output, releases, snapshots, stackfile
from rackfire.cli.common import Json, Url, Yes, connect, default_data_dir, wait_converged
from rackfire.cli.output import err, out, print_json
from rackfire.errors import PrereqError, RackfireError


# The choices of `image build --from` and of `server --runtime` (entry.py's), as the values
# of model.stack's ImageSource and RuntimeKind: --help builds every option, and importing
# model.stack (its dataclasses) for them would be a tenth of that start.
# tests/unit/test_cli_imports.py checks that they agree.
class ImageSource(StrEnum):
    HOST = "host"
    DEBOOTSTRAP = "debootstrap"
    TARBALL = "tarball"
    RELEASE = "release"


class RuntimeKind(StrEnum):
    """The runtimes a user may force (`server --runtime`): not the tests' fake, which an agent
    offers only when RACKFIRE_RUNTIMES names it."""

    CONTAINER = "container"
    PROCESS = "process"


if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.model.stack import StackSpec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rackfire: a fleet of virtual servers from one stack file.",
                  pretty_exceptions_enable=False)
image_app = typer.Typer(no_args_is_help=True, help="Build, import, list and remove images.")
server_app = typer.Typer(no_args_is_help=True,  # running one: entry.py's callback
                         help="Run the server (API, store, reconcile loop, local agent).")
app.add_typer(image_app, name="image")
app.add_typer(server_app, name="server")

DEFAULT_DATA_DIR = default_data_dir()

File = Annotated[Path, typer.Option("-f", "--file", help="the stack file")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="where state lives")]


def _print_urls(spec: StackSpec) -> None:
    for role in spec.roles:
        for p in role.ports:
            host = "127.0.0.1" if p.host_ip in ("0.0.0.0", "::") else p.host_ip
            out.print(f"open http://{host}:{p.host_port}/  -> {role.name} port "
                      f"{p.container_port} (round robin over healthy instances)")


# stacks -------------------------------------------------------------------------------------

@app.command()
def plan(file: File, json: Json = False, url: Url = None,
         explain: Annotated[bool, typer.Option(
             "--explain", help="show where each instance goes and why not elsewhere")] = False,
         ) -> None:
    """Show what apply would change. Exit 0: no changes, 2: changes, 1: error."""
    client = connect(url)
    sent = stackfile.upload(client, file)
    result = client.plan(sent.text, sent.filename, sent.sources, sent.tarballs,
                         explain=explain)
    print_json(result) if json else output.print_plan(result, explain=explain)
    raise typer.Exit(2 if result["actions"] else 0)


@app.command()
def apply(file: File, yes: Yes = False, url: Url = None,
          timeout: Annotated[float, typer.Option(help="seconds to wait for convergence")] = 600,
          ) -> None:
    """Show the plan, apply it, and wait until the stack converges."""
    _apply(connect(url), file, yes, timeout)


@app.command()
def up(file: File, url: Url = None, data_dir: DataDir = DEFAULT_DATA_DIR,
       timeout: Annotated[float, typer.Option(help="seconds to wait for convergence")] = 600,
       ) -> None:
    """Start a server if none answers, then apply the stack file without asking."""
    client = connect(url, data_dir=data_dir)
    if not client.alive():
        _start_server(client, data_dir)
    _apply(client, file, True, timeout)


def _apply(client: Client, file: Path, yes: bool, timeout: float) -> None:
    sent = stackfile.upload(client, file)
    planned = client.plan(sent.text, sent.filename, sent.sources, sent.tarballs)
    output.print_plan(planned)
    if not yes and planned["actions"]:
        if not sys.stdin.isatty():
            raise PrereqError("refusing to apply without confirmation", hint="pass -y")
        typer.confirm("Apply these changes?", abort=True)
    result = client.apply(sent.text, sent.filename, planned["generation"], sent.sources,
                          sent.tarballs)
    wait_converged(client, result["stack"], result["generation"], len(result["actions"]),
                   timeout)
    output.print_instances(client.instances(result["stack"]), show_stack=False)
    _print_urls(sent.spec)


@app.command()
def destroy(stack: str, yes: Yes = False, url: Url = None,
            keep_data: Annotated[bool, typer.Option(
                "--keep-data", help="keep the data disks: a new stack of this name finds "
                "them again")] = False) -> None:
    """Remove every instance, the network and the published ports of a stack, and its data
    disks unless --keep-data."""
    client = connect(url)
    rows = client.instances(stack)
    try:
        disks = int(client.stack(stack).get("data_disks", 0))
    except RackfireError:
        disks = 0
    if not yes:
        if not sys.stdin.isatty():
            raise PrereqError("refusing to destroy without confirmation", hint="pass -y")
        data = (f" and DELETE its {disks} data disk(s) (--keep-data keeps them)"
                if disks and not keep_data else "")
        typer.confirm(f"Destroy stack {stack} and its {len(rows)} instance(s){data}?",
                      abort=True)
    result = client.destroy(stack, keep_data)
    if result["generation"] == 0:
        out.print(f"stack {stack} does not exist; nothing to do")
        return
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), console=err) as bar:
        task = bar.add_task(f"destroying {stack}", total=max(len(rows), 1))
        while True:
            try:
                s = client.stack(stack)
            except RackfireError as e:
                if getattr(e, "status", 0) == 404:
                    break
                raise
            if s["status"] == "failed":
                raise RackfireError(f"destroy of {stack} failed: {s['message']}",
                                    hint="the server keeps retrying")
            left = len(client.instances(stack))
            bar.update(task, completed=len(rows) - left)
            time.sleep(0.2)
        bar.update(task, completed=max(len(rows), 1))
    out.print(f"stack {stack} destroyed")


@app.command()
def ps(stack: Annotated[str | None, typer.Argument()] = None, json: Json = False,
       url: Url = None) -> None:
    """One row per instance: name, role, index, state, IP, host, uptime, health."""
    rows = connect(url).instances(stack)
    print_json(rows) if json else output.print_instances(rows, show_stack=stack is None)


day2.register(app)  # scale, resize, stop/start/restart, stats, events: after ps in --help
releases.register(app)  # push, releases, rollback
snapshots.register(app)  # snapshot create/ls/rm, restore, clone, promote, diff
backups.register(app)  # backup repo add/ls/rm, backup create/ls/rm/verify/restore
hosts.register(app)  # hosts, host rm, token create, agent
jobs.register(app)  # run, jobs, cancel
load.register(app)  # load


@app.command()
def schema() -> None:
    """Print the stack file's JSON Schema (for editors)."""
    from rackfire.spec import stack_json_schema

    print_json(stack_json_schema())


# server -------------------------------------------------------------------------------------

# `rackfire server` itself (running one) is rackfire/entry.py's: cli/ imports no server code.
@server_app.command("stop")
def server_stop(url: Url = None) -> None:
    """Stop the server. Instances keep running; a new server re-adopts them."""
    client = connect(url)
    client.stop_server()
    deadline = time.monotonic() + 20
    while client.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    out.print("server stopped; instances keep running")


def _start_server(client: Client, data_dir: Path) -> None:
    import subprocess

    data_dir.mkdir(parents=True, exist_ok=True)
    port = client.url.rsplit(":", 1)[-1].split("/")[0]
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "rackfire", "server", "--data-dir", str(data_dir),
         "--port", port],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    err.print(f"started rackfire server (pid {proc.pid}, log {data_dir / 'server.log'})")
    deadline = time.monotonic() + 30
    while not client.alive():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RackfireError("the server did not start",
                                hint=f"see {data_dir / 'server.log'}")
        time.sleep(0.1)


# images -------------------------------------------------------------------------------------

@image_app.command("build")
def image_build(
    name: str,
    source: Annotated[ImageSource, typer.Option("--from", help="host or debootstrap")] =
    ImageSource.HOST,
    suite: Annotated[str, typer.Option(help="Debian suite")] = "bookworm",
    package: Annotated[list[str] | None, typer.Option("--package", "-p",
                                                      help="extra Debian package")] = None,
    mirror: Annotated[str | None, typer.Option(help="Debian mirror URL")] = None,
    url: Url = None,
) -> None:
    """Build an image from the host's OS directories or with debootstrap."""
    err.print(f"building image {name} from {source} ...")
    info = connect(url).build_image(name=name, source=source.value, suite=suite,
                                   packages=package or [], mirror=mirror)
    out.print(f"image {info['name']} {info['digest'][:12]} ({info['size_bytes'] >> 20} MiB)")


@image_app.command("import")
def image_import(name: str, tarball: Path, url: Url = None) -> None:
    """Import a root filesystem tarball (.tar, .tar.gz, .tar.xz), extracted safely."""
    if not tarball.is_file():
        raise PrereqError(f"{tarball}: no such file")
    info = connect(url).import_image(name, tarball)
    out.print(f"image {info['name']} {info['digest'][:12]} ({info['size_bytes'] >> 20} MiB)")


@image_app.command("ls")
def image_ls(json: Json = False, url: Url = None) -> None:
    """List images."""
    rows = connect(url).images()
    if json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("NAME", "DIGEST", "SOURCE", "SIZE", "CREATED"):
        table.add_column(c, justify="right" if c == "SIZE" else "left")
    for r in rows:
        table.add_row(r["name"], r["digest"][:12], r["source"], f"{r['size_bytes'] >> 20} MiB",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])))
    out.print(table)


@image_app.command("rm")
def image_rm(name: str, url: Url = None) -> None:
    """Remove an image no instance uses."""
    removed = connect(url).remove_image(name)["removed"]
    out.print(f"image {name} removed" if removed else f"no image named {name}; nothing to do")


from rackfire.cli import streams  # noqa: E402 - logs, exec

streams.register(app)


# Usage errors are click's, but typer >= 0.29 raises those of a click it vendors: take the
# base class from what typer itself raises, so either typer's usage errors are shown as usage.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    try:
        # Without standalone mode, click returns an Exit's code instead of exiting.
        rc = app(standalone_mode=False, prog_name="rackfire")
        sys.exit(rc if isinstance(rc, int) else 0)
    except RackfireError as e:
        output.print_error(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted; nothing was changed")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except _ClickException as e:  # usage: what was wrong, the command's usage line, exit 2
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except Exception as e:
        if os.environ.get("RACKFIRE_DEBUG"):
            raise
        err.print("[red]internal error:[/] ", end="")
        err.print(f"{e.__class__.__name__}: {e}", markup=False)
        err.print("this is a bug in rackfire; rerun with RACKFIRE_DEBUG=1 for the traceback")
        sys.exit(1)
