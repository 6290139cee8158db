"""Host commands: join tokens, the host list. (`rackfire agent`, which runs one, is
rackfire/entry.py's: cli/ imports no agent code.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from rackfire.cli.common import Json, Url, Yes, connect
from rackfire.cli.output import err, out, print_json
from rackfire.errors import PrereqError
from rackfire.model.units import format_size_approx, parse_duration

if TYPE_CHECKING:
    from rackfire.api.shapes import (
        HostsPlanShape,
        LossShape,
        PairLossesShape,
        StackSurvivalShape,
    )

token_app = typer.Typer(no_args_is_help=True, help="Join tokens for new hosts.")
host_app = typer.Typer(no_args_is_help=True, help="Manage one host.")
ha_app = typer.Typer(no_args_is_help=True, help="How singletons fail over.")
hosts_app = typer.Typer(invoke_without_command=True,
                        help="The hosts, and the set a hosts file declares.")
HostsFileOption = Annotated[Path, typer.Option("-f", "--file", help="the hosts file")]
STEP_STYLE = {"install": "green", "reconfigure": "yellow", "upgrade": "cyan",
              "uninstall": "red"}
STUCK = 60.0  # seconds a drain may see no move under way before it gives up waiting
STATE_STYLE = {"ready": "green", "suspect": "yellow", "lost": "red", "draining": "yellow",
               "fenced": "red", "down": "red"}


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(host_app, name="host")
    app.add_typer(hosts_app, name="hosts")
    app.command("capacity")(capacity)
    app.command("migrate")(migrate)
    app.add_typer(ha_app, name="ha")


@hosts_app.command("plan")
def hosts_plan(file: HostsFileOption, json: Json = False, url: Url = None) -> None:
    """What `hosts apply` of this file would install, reconfigure, upgrade and uninstall.
    Exit 0: no changes, 2: changes, 1: error."""
    text = _read_hosts_file(file)
    result = connect(url).hosts_plan(text, str(file))
    print_json(result) if json else _print_host_plan(result)
    raise typer.Exit(2 if result["changes"] else 0)


@hosts_app.command("apply")
def hosts_apply(file: HostsFileOption, yes: Yes = False, json: Json = False,
                url: Url = None) -> None:
    """Carry out the plan over SSH: each host installed and joined, side by side. A host
    that fails is reported with its step; the others carry on. Exit 1 if any failed."""
    text = _read_hosts_file(file)
    client = connect(url)
    plan = client.hosts_plan(text, str(file))
    if not json:
        _print_host_plan(plan)
    if not plan["changes"]:
        if json:
            print_json({"version": plan["version"], "outcomes": []})
        return
    if not yes and not json:
        typer.confirm("Apply these changes to the hosts?", abort=True)
    with out.status(f"applying to {len(plan['changes'])} host(s) ...", spinner="dots"):
        result = client.hosts_apply(text, str(file))
    if json:
        print_json(result)
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("HOST", "STEP", "RESULT"):
            table.add_column(column)
        for o in result["outcomes"]:
            table.add_row(o["name"], o["step"], Text("done", "green") if o["done"] else
                          Text(f"failed at {o['failed_step']}: {o['error']}", "red"))
        out.print(table)
    if not all(o["done"] for o in result["outcomes"]):
        raise typer.Exit(1)


def _read_hosts_file(file: Path) -> str:
    """The file's text, checked here first (its own line numbers, no server needed)."""
    from rackfire.spec.hostsfile import MAX_HOSTS_FILE, load_hosts_text
    from rackfire.spec.loader import read_spec_file

    text = read_spec_file(file, "hosts file", MAX_HOSTS_FILE)
    load_hosts_text(text, str(file))
    return text


def _print_host_plan(result: HostsPlanShape) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("STEP", "HOST", "CHANGES"):
        table.add_column(column)
    for c in result["changes"]:
        table.add_row(Text(c["step"], STEP_STYLE.get(c["step"], "")), c["name"],
                      "; ".join(c["changes"]))
    if result["changes"]:
        out.print(table)
    counts = {step: sum(c["step"] == step for c in result["changes"]) for step in STEP_STYLE}
    out.print("no changes: every host is as the file declares, with rackfire "
              f"{result['version']}" if not result["changes"] else
              "to " + ", ".join(f"{step} {n}" for step, n in counts.items() if n))


@token_app.command("create")
def token_create(ttl: Annotated[str, typer.Option(help="how long it can be used")] = "1h",
                 uses: Annotated[int, typer.Option(help="how many hosts may join")] = 1,
                 url: Url = None) -> None:
    """A join token, shown once: `rackfire agent --join URL --token TOKEN` on the new host."""
    client = connect(url)
    result = client.create_token(parse_duration(ttl), uses)
    out.print(result["token"])
    out.print(f"[dim]valid until {time.ctime(result['expires'])} for {uses} host(s); on "
              f"each: rackfire agent --join {client.url} --token <token> [--label rack=r1][/]")


@hosts_app.callback()
def hosts(ctx: typer.Context, json: Json = False, url: Url = None) -> None:
    """Every host: state, labels, what it can reserve, what stacks reserve, what is used.
    `rackfire hosts plan -f hosts.yaml`: what an apply of a hosts file would do."""
    if ctx.invoked_subcommand is not None:
        return
    rows = connect(url).hosts()
    if json:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("NAME", "STATE", "LABELS", "CPUS", "MEMORY (RESERVED / CAN / USED)",
              "DISK (RESERVED / CAN / USED)", "RUNTIMES", "LEASE (AGE / TTL)"):
        table.add_column(c, justify="right" if c == "CPUS" else "left")
    for r in rows:
        cap, res, used = r["capacity"], r["reserved"], r["used"]
        age, ttl = r["lease_age"], r["lease"]  # null only for the server's own host
        seen = ("local" if r["local"] else "-" if age is None or ttl is None
                else f"{age:.1f}s / {ttl:g}s")
        table.add_row(
            r["name"], Text(r["state"], STATE_STYLE.get(r["state"], "")),
            ",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-",
            f"{res['cpus']:g} / {cap['cpus']:g}",
            " / ".join(format_size_approx(n) for n in (res["memory"], cap["memory"],
                                                      used["memory"])),
            " / ".join(format_size_approx(n) for n in (res["disk"], cap["disk"], used["disk"])),
            ",".join(r["runtimes"]), seen)
    out.print(table)


def capacity(json: Json = False, url: Url = None) -> None:
    """Reserved and free per host; whether every instance could run again after losing any
    one host (N+1), any two, any rack or any site, and whether each stack keeps serving;
    how many more instances of each role fit."""
    report = connect(url).capacity()
    if json:
        print_json(report)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("HOST", "STATE", "INSTANCES", "CPUS FREE", "MEMORY FREE", "DISK FREE"):
        table.add_column(c, justify="left" if c in ("HOST", "STATE") else "right")
    for h in report["hosts"]:
        free, cap = h["free"], h["capacity"]
        table.add_row(h["name"], Text(h["state"], STATE_STYLE.get(h["state"], "")),
                      str(h["instances"]), f"{free['cpus']:g} of {cap['cpus']:g}",
                      f"{format_size_approx(free['memory'])} of "
                      f"{format_size_approx(cap['memory'])}",
                      f"{format_size_approx(free['disk'])} of {format_size_approx(cap['disk'])}")
    out.print(table)
    for title, part, what in (("N+1 (any one host lost)", report["n_plus_1"], "hosts"),
                              ("any one rack lost", report["racks"], "racks"),
                              ("any one site lost", report["sites"], "sites")):
        if not part["losses"]:
            out.print(f"{title}: no {what} to lose")
            continue
        if part["ok"]:
            out.print(f"{title}: [green]ok[/], every instance could run elsewhere")
            continue
        for loss in part["losses"]:
            if loss["stranded"]:
                out.print(_strands(title, loss))
    _pairs(report["n_plus_2"])
    _survival(report["stacks"])
    for room in report["headroom"]:
        more = "no limit (it reserves nothing)" if room["more"] is None else str(room["more"])
        hosts_part = ", ".join(f"{k} {'∞' if v is None else v}"
                               for k, v in room["hosts"].items())
        out.print(f"{room['role']}: {more} more fit ({hosts_part})")


PAIRS_SHOWN = 5  # failing pairs printed; --json has them all
VERDICT_STYLE = {"ok": "green", "degraded": "yellow", "down": "red", "untested": "dim"}


def _strands(title: str, loss: LossShape) -> str:
    first = loss["stranded"][0]
    why = "; ".join(f"{h}: {w}" for h, w in sorted(first["why"].items()))
    return (f"{title}: [red]losing {loss['lost']} strands {len(loss['stranded'])} of "
            f"{loss['displaced']}[/], e.g. {first['instance']} ({why or 'no other host'})")


def _pairs(part: PairLossesShape) -> None:
    title = "any two hosts lost"
    capped = (f"; capped: the pairs of the {len(part['hosts'])} hosts holding the most"
              if part["capped"] else "")
    if not part["pairs"]:
        out.print(f"{title}: fewer than two hosts")
    elif part["ok"]:
        out.print(f"{title}: [green]ok[/], every instance could run elsewhere "
                  f"({part['pairs']} pairs{capped})")
    else:
        for loss in part["losses"][:PAIRS_SHOWN]:
            out.print(_strands(title, loss))
        hidden = len(part["losses"]) - PAIRS_SHOWN
        out.print(f"{title}: {len(part['losses'])} of {part['pairs']} pairs strand something"
                  f" ({max(hidden, 0)} not shown{capped})")


def _survival(stacks: list[StackSurvivalShape]) -> None:
    """Per stack, whether it keeps serving: the worst scenario of each kind of loss."""
    if not stacks:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("STACK", "1 HOST LOST", "2 HOSTS LOST", "A RACK LOST", "A SITE LOST"):
        table.add_column(c)
    for s in stacks:
        cells = []
        for fate in (s["host"], s["hosts_2"], s["rack"], s["site"]):
            verdict = fate["verdict"]
            cell = Text(verdict, VERDICT_STYLE.get(verdict, ""))
            if fate["loss"] is not None:
                cell.append(f" ({fate['loss']}: {len(fate['stranded'])} stranded)")
            cells.append(cell)
        table.add_row(s["stack"], *cells)
    out.print(table)
    # The verdicts say where the scheduler could place them; failover holds these instead.
    for s in stacks:
        for instance, host in s["pinned"].items():
            out.print(f"[yellow]{instance} keeps its data on {host} only[/]: it stops if "
                      f"{host} is lost (until {host} returns)")


@host_app.command("rm")
def host_rm(name: str, url: Url = None) -> None:
    """Forget a joined host: its credential stops working (its agent stops)."""
    connect(url).remove_host(name)
    out.print(f"host {name} removed")


@host_app.command("fence")
def host_fence(name: str, url: Url = None) -> None:
    """Declare HOST dead now (it is, or it is cut off for good): what it held is placed
    again elsewhere at once, singletons too. Should it come back, it destroys those copies
    before they serve. `rackfire host ready HOST` takes it back."""
    placing = connect(url).fence(name)["placing"]
    out.print(f"host {name} is fenced: {placing} instance(s) to place again elsewhere")


@host_app.command("ready")
def host_ready(name: str, url: Url = None) -> None:
    """Bring a drained or fenced HOST back: it takes instances again."""
    state = connect(url).ready(name)["state"]
    out.print(f"host {name} takes instances again (its lease: {state})")


@ha_app.command("status")
def ha_status(json: Json = False, url: Url = None) -> None:
    """Each singleton (and each instance replaced only after a fence): its host, that
    host's lease, and the chain of timings that proves it stopped before it runs
    elsewhere, with the worst case."""
    rows = connect(url).ha()
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("no singletons: every instance is replaced at once when its host is lost")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in ("INSTANCE", "HOST", "STATE", "LEASE (AGE / TTL)", "FENCE AFTER", "WORST CASE",
              "CHAIN"):
        table.add_column(c, justify="right" if c in ("FENCE AFTER", "WORST CASE") else "left")
    for r in rows:
        age, ttl, fence, worst = r["lease_age"], r["lease"], r["fence_after"], r["worst_case"]
        table.add_row(r["instance"], r["host"] or "-",
                      Text(r["state"], STATE_STYLE.get(r["state"], "")),
                      "-" if age is None or ttl is None else f"{age:.1f}s / {ttl:g}s",
                      "-" if fence is None else f"{fence:g}s",
                      "-" if worst is None else f"{worst:.2f}s", r["chain"])
    out.print(table)


@host_app.command("drain")
def host_drain(name: str, url: Url = None, wait: Annotated[bool, typer.Option(
        help="wait until the host is empty")] = True,
        timeout: Annotated[float, typer.Option(help="seconds to wait")] = 1800) -> None:
    """Move every instance off HOST (it gets nothing new), each role keeping its
    availability (`update.max_unavailable`, at least one at a time)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    client = connect(url)
    total = client.drain(name)["moving"]
    if not wait:
        out.print(f"host {name} is draining: {total} instance(s) to move")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(f"draining {name}", total=total)
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while True:
            left = [k for k, h in client.placements().items() if h == name]
            moving = [m for m in client.migrations() if m["source"] == name]
            bar.update(task, completed=max(0, total - len(left)),
                       description=f"draining {name}" + (
                           f": {moving[0]['instance']} {moving[0]['step']}" if moving else ""))
            if not left:
                break
            if moving:
                idle_since = time.monotonic()
            # Nothing on the move for a while: the rest waits for a role to be available
            # again, or could not move (a failed move is tried again after 2 minutes).
            if time.monotonic() > deadline or time.monotonic() - idle_since > STUCK:
                raise PrereqError(f"host {name} still holds {len(left)} instance(s) "
                                  f"({', '.join(sorted(left)[:3])}); it stays draining",
                                  hint="see `rackfire events` for why; `rackfire host drain "
                                  f"{name}` again follows it on")
            time.sleep(0.5)
    out.print(f"host {name} is drained: {total} instance(s) moved")


def migrate(instance: Annotated[str, typer.Argument(help="STACK/ROLE/INDEX")],
            to: Annotated[str | None, typer.Option(help="target host (default: the "
                                                        "scheduler picks)")] = None,
            url: Url = None, timeout: Annotated[float, typer.Option(
                help="seconds to wait")] = 900) -> None:
    """Move an instance to another host, cold: stop it, copy its disks, start it there with
    the same name and IP; the old copy goes once the new one is healthy."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    client = connect(url)
    m = client.migrate(instance, to)
    key = m["instance"]
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(f"{key}: {m['source']} -> {m['target']}: {m['step']}")
        while (now := next((x for x in client.migrations() if x["instance"] == key), None)):
            bar.update(task, description=f"{key}: {m['source']} -> {m['target']}: "
                                         f"{now['step']}")
            if time.monotonic() > deadline:
                raise PrereqError(f"the migration of {key} is still at {now['step']}",
                                  hint="it carries on; see `rackfire events`")
            time.sleep(0.3)
    host = client.placements().get(key)
    if host != m["target"]:
        where = f"it stays on {host}" if host else "it is no longer placed"
        raise PrereqError(f"the migration of {key} failed; {where}",
                          hint="see `rackfire events` for why")
    out.print(f"{key} moved {m['source']} -> {m['target']}")
