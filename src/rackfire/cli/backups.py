"""Backup commands: `backup repo add/ls/rm`, `backup create/ls/rm/restore/verify`. A
repository's password is read from a file or RESTIC_PASSWORD (or asked, unechoed), its bucket
keys from this environment (AWS_*): never from the command line, where `ps` shows them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
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
from rackfire.cli.snapshots import STATE_STYLE, confirm_replace, split_ref
from rackfire.errors import PrereqError
from rackfire.model.units import format_size

if TYPE_CHECKING:
    from rackfire.api.shapes import BackupShape

backup_app = typer.Typer(help="Backups: snapshots sent off their hosts to a repository "
                         "(restic: deduplicated, encrypted, verified).", no_args_is_help=True)
repo_app = typer.Typer(help="Backup repositories: a directory or an S3 bucket.",
                       no_args_is_help=True)
backup_app.add_typer(repo_app, name="repo")
Ref = Annotated[str, typer.Argument(help="STACK@NAME")]
BACKEND_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
               "AWS_SESSION_TOKEN")


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")


@repo_app.command("add")
def repo_add(name: Annotated[str, typer.Argument(help="its name, e.g. default")],
             url: Annotated[str, typer.Argument(help="a directory on the hosts, or "
                                                "s3:http(s)://HOST/BUCKET[/PREFIX]")],
             password_file: Annotated[Path | None, typer.Option(
                 help="the repository's password, in a file [default: $RESTIC_PASSWORD, "
                 "or asked]")] = None,
             url_: Url = None) -> None:
    """Keep a repository once a host could open it with the password (a new one is made).
    An S3 bucket's keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY here."""
    if not url.startswith(("/", "local:/", "s3:http://", "s3:https://")):
        raise PrereqError(f"{url!r} is neither an absolute directory nor an S3 bucket",
                          hint="a directory on the hosts (/srv/backup) or "
                          "s3:http(s)://HOST/BUCKET")
    if password_file is not None:
        try:
            password = password_file.read_text().rstrip("\n")
        except OSError as e:
            raise PrereqError(f"cannot read {password_file}: {e.strerror}") from None
    elif os.environ.get("RESTIC_PASSWORD"):
        password = os.environ["RESTIC_PASSWORD"]
    elif sys.stdin.isatty():
        password = typer.prompt("repository password", hide_input=True,
                                confirmation_prompt=True)
    else:
        raise PrereqError("no password for the repository",
                          hint="give --password-file FILE, or set RESTIC_PASSWORD")
    env = {k: os.environ[k] for k in BACKEND_ENV if os.environ.get(k)}
    if url.startswith("s3:") and not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env):
        raise PrereqError("an S3 repository needs its keys",
                          hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    repo = connect(url_).add_repository(name, url, password, env)
    out.print(f"repository {repo['name']}: {repo['url']} (keeps {', '.join(repo['holds'])})")


@repo_app.command("ls")
def repo_ls(json: Json = False, url: Url = None) -> None:
    """Repositories: names and addresses (never their secrets)."""
    rows = connect(url).repositories()
    if json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("REPOSITORY", "URL", "KEEPS", "ADDED", "BY"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["name"], r["url"], ", ".join(r["holds"]),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])), r["actor"])
    out.print(table if rows else "no repositories")


@repo_app.command("rm")
def repo_rm(name: Annotated[str, typer.Argument(help="the repository")],
            url: Url = None) -> None:
    """Forget a repository that holds no backups (its data stays where it is)."""
    connect(url).remove_repository(name)
    out.print(f"forgot repository {name}")


@backup_app.command("create")
def create(target: Annotated[str, typer.Argument(help="STACK, STACK/ROLE or STACK/ROLE/INDEX")],
           to: Annotated[str, typer.Option("--to", help="the repository")] = "default",
           name: Annotated[str | None, typer.Option(help="default: b<UTC date>-<time>")] = None,
           json: Json = False, url: Url = None) -> None:
    """Snapshot it, send every disk of it to the repository from its host, drop the
    snapshot."""
    t = parse_target(target)
    b = connect(url).take_backup(t.stack, t.role, t.index, to, name)
    if json:
        print_json(b)
        return
    out.print(f"backup {b['ref']} in {b['repository']}: {len(b['parts'])} instance(s), "
              f"{format_size(b['size'])} sent")


@backup_app.command("ls")
def ls(stack: Annotated[str | None, typer.Argument(help="STACK [default: every stack]")] = None,
       json: Json = False, url: Url = None) -> None:
    """Backups, oldest first, of stacks that exist or not."""
    rows = connect(url).backups(stack)
    if json:
        print_json(rows)
        return
    out.print(_table(rows) if rows else "no backups" + (f" of {stack}" if stack else ""))


@backup_app.command("rm")
def rm(ref: Ref, url: Url = None) -> None:
    """Remove a backup from its repository (its data goes once no other backup shares it)."""
    stack, name = split_ref(ref)
    connect(url).remove_backup(stack, name)
    out.print(f"removed backup {stack}@{name}")


@backup_app.command("verify")
def verify(ref: Ref, json: Json = False, url: Url = None) -> None:
    """Check the repository's data and read every disk of the backup back, whole, with its
    digest: proof that it restores."""
    stack, name = split_ref(ref)
    v = connect(url).verify_backup(stack, name)
    if json:
        print_json(v)
        return
    out.print(f"backup {v['backup']}: {format_size(v['read'])} read back whole in "
              f"{v['seconds']:.1f} s")


@backup_app.command("restore")
def restore(ref: Ref,
            to: Annotated[str | None, typer.Option(
                "--to", help="restore into this stack [default: its own]")] = None,
            yes: Yes = False, no_wait: NoWait = False, timeout: Timeout = 3600,
            url: Url = None) -> None:
    """Read a backup back onto hosts and make the stack (its own, or --to a new one) from
    it, rolling like a replace. Asks before it replaces disks in use."""
    stack, name = split_ref(ref)
    client = connect(url)
    result = client.restore_backup(stack, name, to,
                                   confirm_replace(client, to or stack, ref, yes))
    if not no_wait:
        wait_converged(client, result["stack"], result["generation"],
                       len(result["instances"]), timeout)
    out.print(f"{result['stack']}: restored from backup {result['snapshot']} "
              f"({len(result['instances'])} instance(s))")


def _table(rows: list[BackupShape]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("BACKUP", "STATE", "OF", "REPOSITORY", "INSTANCES", "SIZE", "CREATED", "BY"):
        table.add_column(c, justify="right" if c in ("INSTANCES", "SIZE") else "left")
    for r in rows:
        table.add_row(r["ref"], Text(r["state"], STATE_STYLE.get(r["state"], "")), r["scope"],
                      r["repository"], str(len(r["parts"])), format_size(r["size"]),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
                      r["actor"])
    return table
