"""Release commands: push a source dir (or a base image) into a role, list releases, roll
back. Each is one API call, then a wait for the stack and a word on how it went."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from rackfire.cli.common import Json, NoWait, Timeout, Url, connect, parse_target, wait_converged
from rackfire.cli.output import err, out, print_json
from rackfire.errors import PrereqError, RackfireError

if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.api.shapes import ChangeShape

Role = Annotated[str, typer.Argument(help="STACK/ROLE")]
STATUS_STYLE = {"live": "green", "deploying": "yellow", "failed": "red", "retired": "dim"}


def register(app: typer.Typer) -> None:
    app.command("push")(push)
    app.command("releases")(releases)
    app.command("rollback")(rollback)


def push(role: Role,
         src: Annotated[Path | None, typer.Argument(help="the app's source dir")] = None,
         image: Annotated[str | None, typer.Option(help="a built image as the role's new "
                                                   "base OS")] = None,
         no_wait: NoWait = False, timeout: Timeout = 600, url: Url = None) -> None:
    """Make a source dir the role's next release (its requirements.txt installed), roll it
    out by the role's update policy, and say whether it went live or was rolled back."""
    t = parse_target(role, need_role=True)
    assert t.role is not None
    if src is None and image is None:
        raise PrereqError("nothing to push", hint="give a source dir, --image NAME, or both")
    if src is not None and not src.is_dir():
        raise PrereqError(f"{src} is not a directory", hint="push the app's source dir")
    client = connect(url)
    source = client.upload_source(src) if src is not None else None
    result = client.push(t.stack, t.role, source, str(src.resolve()) if src else "", image)
    _follow(client, t.stack, t.role, result, no_wait, timeout, (source, image))


def rollback(role: Role,
             version: Annotated[int | None, typer.Argument(
                 help="the release to go back to [default: the one live before]")] = None,
             no_wait: NoWait = False, timeout: Timeout = 600, url: Url = None) -> None:
    """Go back to an earlier release of a role, rolling out like a push."""
    t = parse_target(role, need_role=True)
    assert t.role is not None
    client = connect(url)
    result = client.rollback(t.stack, t.role, version)
    _follow(client, t.stack, t.role, result, no_wait, timeout)


def releases(role: Role, json: Json = False, url: Url = None) -> None:
    """A role's releases, newest first: version, status, source hash, image, when, who."""
    t = parse_target(role)
    rows = connect(url).releases(t.stack, t.role)
    if json:
        print_json(rows)
        return
    if not rows:
        out.print(f"{role}: no releases yet")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("", "VERSION", "STATUS", "SOURCE", "IMAGE", "CREATED", "BY", "FROM / WHY"):
        table.add_column(c, justify="right" if c == "VERSION" else "left")
    for r in rows:
        name = f"v{r['version']}" if t.role else f"{r['role']} v{r['version']}"
        table.add_row(
            Text("*" if r["current"] else ""), Text(name),
            Text(r["status"], STATUS_STYLE.get(r["status"], "")),
            Text(r["source"][:12] or "-"), Text(f"{r['image']}@{r['image_digest'][:12]}"),
            Text(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))),
            Text(r["actor"]), Text(r["reason"] or r["label"] or "-"))
    out.print(table)


Pushed = tuple[str | None, str | None]  # (source digest, image name) of a push


def _follow(client: Client, stack: str, role: str, result: ChangeShape, no_wait: bool,
            timeout: float, pushed: Pushed = (None, None)) -> None:
    """Wait for the rollout, then say which release the role runs and whether the pushed
    one (by its source and image) failed and was rolled back."""
    if no_wait:
        out.print(f"{stack}/{role}: generation {result['generation']} stored")
        return
    try:
        wait_converged(client, stack, result["generation"], len(result["actions"]), timeout)
    except RackfireError:
        if not _report(client, stack, role, pushed):
            raise
        raise typer.Exit(1) from None
    if _report(client, stack, role, pushed):
        raise typer.Exit(1)


def _report(client: Client, stack: str, role: str, what: Pushed) -> bool:
    """Print what the role runs now; True if the pushed release failed and was rolled
    back."""
    rows = client.releases(stack, role)
    current = next((r for r in rows if r["current"]), None)
    source, image = what
    pushed = max((r for r in rows if (source is None or r["source"] == source)
                  and (image is None or r["image"] == image) and (source or image)),
                 key=lambda r: r["version"], default=None)
    if pushed is not None and pushed["status"] == "failed":
        if current is None or current["version"] == pushed["version"]:
            err.print(f"[red]release v{pushed['version']} failed, and {role} has no release "
                      "that was ever live to go back to: it stays on "
                      f"v{pushed['version']}:[/] ", end="")
        else:
            err.print(f"[red]release v{pushed['version']} failed and was rolled back; {role} "
                      f"runs v{current['version']} again:[/] ", end="")
        err.print(pushed["reason"], markup=False)
        return True
    if current is not None:
        out.print(f"{stack}/{role} runs v{current['version']} ({current['status']})")
    return False
