"""The declared host set (`rackfire hosts plan|apply -f hosts.yaml`): the hosts file against
the set the last apply left, which the store keeps (`applied_hosts`).

An apply carries out the plan over SSH (providers/install.py), each host's steps in order:
- install: probe, the bundle put, the agent started with a one-use token, joined;
- reconfigure: new labels restart the agent with them (its instances keep running); a new
  address, port, user or key is only connected with, to check it;
- upgrade: the new bundle beside the old, the agent restarted from it, one host at a time;
- uninstall: the host drained by the controller, then everything the install put there
  removed, its credential revoked.
A host that fails is reported with its step and what the server said, and the others carry
on. A host is recorded as applied only once its agent heartbeats as declared, so a failed
one is planned again at the next apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rackfire import __version__
from rackfire.errors import Conflict, NotFound, PrereqError, RackfireError
from rackfire.model.hostsfile import AppliedHost, DeclaredHost, HostsFile
from rackfire.plan.hostset import HostChange, HostStep, plan_hosts
from rackfire.providers import bundle as bundles
from rackfire.providers.install import (
    AgentSetup,
    installed,
    probe,
    put_bundle,
    start_agent,
    uninstall,
)
from rackfire.providers.ssh import SshError, connect
from rackfire.spec.hostsfile import load_hosts_text
from rackfire.store.protocol import StateStore

PARALLEL = 32
JOIN_WAIT = 60.0  # seconds for an installed agent to join and heartbeat
DRAIN_WAIT = 300.0  # seconds for an uninstall's drain to move every instance away
TOKEN_TTL = 600.0


def installed_version() -> str:
    """The rackfire version an apply installs: this server's own."""
    return __version__


def plan_host_set(store: StateStore, text: str, filename: str) -> list[HostChange]:
    """What an apply of this hosts file would do; a bad file is a SpecError, nothing read
    of any host."""
    return plan_hosts(load_hosts_text(text, filename), store.hosts.applied_hosts(),
                      installed_version())


@dataclass(frozen=True, slots=True)
class HostOutcome:
    change: HostChange
    done: bool
    step: str = ""  # where it failed
    error: str = ""


@dataclass(frozen=True)
class HostSetContext:
    """What an apply works with: the store, where bundles are kept, and the controller's
    drain (an uninstall moves a host's instances away first, each role kept available)."""

    store: StateStore
    bundle_dir: Path
    drain: Callable[[str], int]
    clock: Callable[[], float] = time.time


_APPLYING = threading.Lock()


def apply_host_set(ctx: HostSetContext, text: str, filename: str,
                   actor: str) -> list[HostOutcome]:
    """Carry out the plan: installs and reconfigures side by side (at most PARALLEL SSH
    sessions at once), then upgrades one host at a time, then uninstalls side by side. One
    apply at a time: a second is refused while one is under way (both would install the
    same hosts)."""
    if not _APPLYING.acquire(blocking=False):
        raise Conflict("a hosts apply is under way", hint="wait for it, then plan again")
    try:
        return _apply(ctx, text, filename, actor)
    finally:
        _APPLYING.release()


def _apply(ctx: HostSetContext, text: str, filename: str, actor: str) -> list[HostOutcome]:
    declared = load_hosts_text(text, filename)
    applied = ctx.store.hosts.applied_hosts()
    changes = plan_hosts(declared, applied, installed_version())
    if any(c.step is HostStep.INSTALL for c in changes) and not declared.controller:
        raise PrereqError("the hosts file gives no `controller:`: the URL the hosts reach "
                          "this server at, for their agents to join",
                          hint="e.g. controller: http://10.0.0.1:7480 (the server listening "
                               "there: rackfire server --listen 0.0.0.0)")
    needs = {HostStep.INSTALL, HostStep.UPGRADE}
    bundle = bundles.build(ctx.bundle_dir) if any(c.step in needs for c in changes) else None
    hosts = declared.by_name()

    async def one(change: HostChange, gate: asyncio.Semaphore) -> HostOutcome:
        try:
            if change.step is HostStep.UNINSTALL:
                await _uninstall(ctx, applied[change.name], gate)
            else:
                await _converge(ctx, declared, hosts[change.name], applied.get(change.name),
                                change, bundle, gate)
        except SshError as e:
            return HostOutcome(change, False, e.step, e.said)
        except RackfireError as e:  # of the controller's own (a token, the drain)
            return HostOutcome(change, False, "controller", e.message)
        return HostOutcome(change, True)

    async def carry_out() -> list[HostOutcome]:
        gate = asyncio.Semaphore(PARALLEL)  # SSH sessions at once (not the waits after)
        by_step = {step: [c for c in changes if c.step is step] for step in HostStep}
        done = list(await asyncio.gather(*(one(c, gate) for c in (
            *by_step[HostStep.INSTALL], *by_step[HostStep.RECONFIGURE]))))
        for change in by_step[HostStep.UPGRADE]:  # one at a time: the others keep serving
            done.append(await one(change, gate))
        done += await asyncio.gather(*(one(c, gate) for c in by_step[HostStep.UNINSTALL]))
        return done

    outcomes = asyncio.run(carry_out())
    for o in outcomes:
        ctx.store.add_event(actor, "", f"host/{o.change.name}", f"hosts-{o.change.step}",
                            "ok" if o.done else "failed",
                            "; ".join(o.change.changes) if o.done else f"{o.step}: {o.error}")
    return outcomes


async def _converge(ctx: HostSetContext, declared: HostsFile, host: DeclaredHost,
                    was: AppliedHost | None, change: HostChange,
                    bundle: bundles.Bundle | None, gate: asyncio.Semaphore) -> None:
    """Install, upgrade or reconfigure one host: its agent (re)started as the file says,
    then joined or heartbeating again; recorded as applied only then. A reconfigure of
    the connection alone (address, port, user, key) only connects, to check it."""
    store, since = ctx.store, ctx.clock()
    setup = AgentSetup(declared.controller, host.name, host.labels)
    restart = change.step is not HostStep.RECONFIGURE or was is None \
        or was.host.labels != host.labels
    async with gate, connect(host.name, host.ssh) as s:
        found = await probe(s, bundle)
        if change.step is HostStep.RECONFIGURE:
            where = await installed(s)
        else:
            assert bundle is not None
            where = await put_bundle(s, bundle)
        if restart:
            token = ""
            if change.step is HostStep.INSTALL:
                token, _ = store.hosts.create_token(TOKEN_TTL, 1, f"hosts apply ({host.name})")
            await start_agent(s, found, where, setup, token)
    if restart:
        await _heartbeat(store, host, since, ctx.clock)
    store.hosts.record_applied(AppliedHost(host, installed_version()))


async def _heartbeat(store: StateStore, host: DeclaredHost, since: float,
                     clock: Callable[[], float]) -> None:
    """Until the host's agent heartbeats after `since` with the labels it is declared with
    (a fresh install: once it has joined)."""
    while True:
        if any(h.name == host.name and h.last_seen >= since and h.labels == host.labels
               for h in store.hosts.hosts()):
            return
        if clock() - since > JOIN_WAIT:
            raise SshError(host.name, "join", f"its agent did not heartbeat within "
                           f"{JOIN_WAIT:.0f} s", hint="see /opt/rackfire/agent.log on the host")
        await asyncio.sleep(0.5)


async def _uninstall(ctx: HostSetContext, was: AppliedHost, gate: asyncio.Semaphore) -> None:
    """Drain the host, then remove everything an install put there, then forget it."""
    name, store = was.host.name, ctx.store
    if any(h.name == name for h in store.hosts.hosts()):
        ctx.drain(name)
        since = ctx.clock()
        while left := [k for k, h in store.placements.all().items() if h == name]:
            if ctx.clock() - since > DRAIN_WAIT:
                raise SshError(name, "drain", f"{len(left)} instance(s) still on it after "
                               f"{DRAIN_WAIT:.0f} s (e.g. {left[0]}): nothing removed",
                               hint="see `rackfire host drain` and `rackfire capacity`: the "
                                    "other hosts may have no room for them")
            await asyncio.sleep(0.5)
    async with gate, connect(name, was.host.ssh) as s:
        await uninstall(s, await probe(s))
    with contextlib.suppress(NotFound):
        store.hosts.remove(name)
    store.hosts.forget_applied(name)
