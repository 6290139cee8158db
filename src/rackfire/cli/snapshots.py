"""Snapshot commands (`snapshot create/ls/rm`, `restore`) and clones (`clone`, `promote`,
`diff`). Each is one API call; a restore, clone or promote then waits for the stack to roll,
as a push does."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from rackfire.cli.common import (
    Json,
    NoWait,
    Timeout,
    Url,
    Yes,
    connect,
    parse_target,
    wait_converged,
)
from rackfire.cli.output import out, print_json
from rackfire.errors import PrereqError
from rackfire.model.units import format_size

if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.api.shapes import ReleaseRunShape, SnapshotShape

snapshot_app = typer.Typer(help="Snapshots: instances' disks frozen and copied at one point.",
                           no_args_is_help=True)
STATE_STYLE = {"ready": "green", "taking": "yellow", "failed": "red"}
Ref = Annotated[str, typer.Argument(help="STACK@NAME")]


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
    app.command("restore")(restore)
    app.command("clone")(clone)
    app.command("promote")(promote)
    app.command("diff")(diff)


@snapshot_app.command("create")
def create(target: Annotated[str, typer.Argument(help="STACK, STACK/ROLE or STACK/ROLE/INDEX")],
           name: Annotated[str | None, typer.Option(
               "--name", help="default: s<UTC date>-<time>")] = None,
           json: Json = False, url: Url = None) -> None:
    """Freeze the instances' filesystems (for milliseconds, not stopped), copy every disk
    of each, thaw. Keeps the stack's spec and releases of that moment beside them."""
    t = parse_target(target)
    snap = connect(url).take_snapshot(t.stack, t.role, t.index, name)
    if json:
        print_json(snap)
        return
    frozen = max((c["frozen_ms"] for c in snap["copies"]), default=0.0)
    methods = sorted({c["method"] for c in snap["copies"] if c["method"]})
    out.print(f"snapshot {snap['ref']}: {len(snap['copies'])} instance(s), "
              f"{format_size(snap['held'])} held, frozen at most {frozen:.0f} ms"
              + (f" ({', '.join(methods)})" if methods else ""))


@snapshot_app.command("ls")
def ls(stack: Annotated[str | None, typer.Argument(help="STACK [default: every stack]")] = None,
       json: Json = False, url: Url = None) -> None:
    """Snapshots, oldest first: what each holds, where, and how long it froze them."""
    rows = connect(url).snapshots(stack)
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("no snapshots" + (f" of {stack}" if stack else ""))
        return
    out.print(_table(rows))


@snapshot_app.command("rm")
def rm(ref: Ref, url: Url = None) -> None:
    """Remove a snapshot's copies from every host that holds one."""
    stack, name = split_ref(ref)
    connect(url).remove_snapshot(stack, name)
    out.print(f"removed snapshot {stack}@{name}")


def restore(ref: Ref,
            to: Annotated[str | None, typer.Option(
                "--to", help="restore into this stack [default: its own]; a new one is made "
                "if it does not exist")] = None,
            yes: Yes = False, no_wait: NoWait = False, timeout: Timeout = 900,
            url: Url = None) -> None:
    """Make a stack's instances again from a snapshot's disks (its spec and releases too,
    for a whole stack's), rolling like a replace. Asks before it replaces disks in use."""
    stack, name = split_ref(ref)
    client = connect(url)
    result = client.restore(stack, name, to, confirm_replace(client, to or stack, ref, yes))
    if no_wait:
        out.print(f"restoring {result['stack']} from {result['snapshot']}: generation "
                  f"{result['generation']}")
        return
    wait_converged(client, result["stack"], result["generation"], len(result["instances"]),
                   timeout)
    out.print(f"{result['stack']}: restored from {result['snapshot']} "
              f"({len(result['instances'])} instance(s))")


def confirm_replace(client: Client, target: str, ref: str, yes: bool) -> bool:
    """Whether the user agreed that restoring `ref` replaces the disks of `target`'s
    instances (asked only if it has some; refused without a terminal). Unconfirmed, the
    server refuses too if instances appeared meanwhile."""
    if yes or target not in {s["name"] for s in client.stacks()} \
            or not client.instances(target):
        return yes
    if not sys.stdin.isatty():
        raise PrereqError(f"restoring {ref} replaces the disks of instances of {target}: "
                          "refusing without confirmation", hint="pass -y")
    typer.confirm(f"Replace the disks of {target}'s instances with {ref}'s?", abort=True)
    return True


def _table(rows: list[SnapshotShape]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("SNAPSHOT", "STATE", "OF", "INSTANCES", "HELD", "FROZEN", "CREATED", "BY"):
        table.add_column(c, justify="right" if c in ("INSTANCES", "HELD", "FROZEN") else "left")
    for r in rows:
        frozen = max((c["frozen_ms"] for c in r["copies"]), default=0.0)
        table.add_row(
            r["ref"], Text(r["state"], STATE_STYLE.get(r["state"], "")), r["scope"],
            str(len(r["copies"])), format_size(r["held"]), f"{frozen:.0f} ms",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])), r["actor"])
    return table


def split_ref(ref: str) -> tuple[str, str]:
    stack, at, name = ref.partition("@")
    if not at or not stack or not name:
        raise PrereqError(f"not a snapshot: {ref!r}", hint="give STACK@NAME, as "
                          "`rackfire snapshot ls` shows it")
    return stack, name


def clone(stack: Annotated[str, typer.Argument(help="the stack to copy")],
          new: Annotated[str, typer.Argument(help="the new stack")],
          snapshot: Annotated[str | None, typer.Option(
              "--from", help="a snapshot of STACK (NAME or STACK@NAME) [default: one taken "
              "now]")] = None,
          port_offset: Annotated[int | None, typer.Option(
              help="added to every published port [default: 1000]")] = None,
          no_wait: NoWait = False, timeout: Timeout = 900, url: Url = None) -> None:
    """A full copy of a stack for a trial: copies of every disk, its own network and
    ports, nothing shared. Push to it, check it, then destroy or promote it."""
    if snapshot and "@" in snapshot:
        of, snapshot = split_ref(snapshot)
        if of != stack:
            raise PrereqError(f"{of}@{snapshot} is not a snapshot of {stack}")
    client = connect(url)
    result = client.clone(stack, new, snapshot, port_offset)
    if not no_wait:
        wait_converged(client, new, result["generation"], 0, timeout)
    out.print(f"{new}: a clone of {stack} from {result['snapshot']}" +
              ("" if no_wait else ", serving"))


def promote(new: Annotated[str, typer.Argument(help="the clone")],
            stack: Annotated[str, typer.Argument(help="the stack it takes over from")],
            yes: Yes = False, no_wait: NoWait = False, timeout: Timeout = 600,
            url: Url = None) -> None:
    """Make a clone the production stack: it takes STACK's published ports and floating
    address; STACK is stopped and kept, without ports, until destroyed."""
    if not yes:
        if not sys.stdin.isatty():
            raise PrereqError(f"promoting {new} stops {stack}: refusing without "
                              "confirmation", hint="pass -y")
        typer.confirm(f"Stop {stack} and give its ports to {new}?", abort=True)
    client = connect(url)
    result = client.promote(new, stack)
    if not no_wait:
        wait_converged(client, new, result["generation"], 0, timeout)
    out.print(f"{new} took over the ports of {stack}; {stack} is stopped "
              f"(`rackfire destroy {stack}` once you are sure)")


def diff(a: Annotated[str, typer.Argument(help="a stack")],
         b: Annotated[str, typer.Argument(help="another (a clone of it, say)")],
         json: Json = False, url: Url = None) -> None:
    """How two stacks' specs and live releases differ."""
    d = connect(url).diff(a, b)
    if json:
        print_json(d)
        return
    if not d["spec"] and not d["releases"]:
        out.print(f"{a} and {b} have the same spec and releases")
        return
    for line in d["spec"]:
        style = ("bold" if line.startswith(("---", "+++")) else "cyan" if line.startswith("@@")
                 else "green" if line.startswith("+") else "red" if line.startswith("-")
                 else "")
        out.print(Text(line, style))
    if d["releases"]:
        table = Table(box=None, pad_edge=False, header_style="bold", title="live releases",
                      title_justify="left")
        for c in ("ROLE", a.upper(), b.upper()):
            table.add_column(c)
        for r in d["releases"]:
            table.add_row(r["role"], *(_release(x) for x in (r["a"], r["b"])))
        out.print(table)


def _release(r: ReleaseRunShape | None) -> str:
    if r is None:
        return "-"
    return f"v{r['version']} {r['source'] or '(image only)'} on {r['image']}"
