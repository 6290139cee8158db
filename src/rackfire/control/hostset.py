"""The declared host set (`rackfire hosts plan|apply -f hosts.yaml`): the hosts file against
the set the last apply left, which the store keeps (`applied_hosts`).

An apply carries out the plan's installs over SSH, hosts side by side (at most PARALLEL):
each host's steps (providers/install.py) in order, then the wait for its agent to join; a
host that fails is reported with its step and what the server said, and the others carry
on. Only a host whose agent joined is recorded as applied, so a failed one is an install
again at the next apply. Reconfigure, upgrade and uninstall are planned, not yet carried
out: the apply reports them as not done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rackfire import __version__
from rackfire.errors import ExecError, PrereqError, RackfireError
from rackfire.model.hostsfile import AppliedHost, DeclaredHost, HostsFile
from rackfire.plan.hostset import HostChange, HostStep, plan_hosts
from rackfire.providers import bundle as bundles
from rackfire.providers.install import AgentSetup, probe, put_bundle, start_agent
from rackfire.providers.ssh import SshError, connect
from rackfire.spec.hostsfile import load_hosts_text
from rackfire.store.protocol import StateStore

PARALLEL = 10
JOIN_WAIT = 60.0  # seconds for an installed agent to join and heartbeat
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


def apply_host_set(store: StateStore, text: str, filename: str, bundle_dir: Path,
                   actor: str, clock: Callable[[], float] = time.time) -> list[HostOutcome]:
    declared = load_hosts_text(text, filename)
    changes = plan_hosts(declared, store.hosts.applied_hosts(), installed_version())
    installs = [c for c in changes if c.step is HostStep.INSTALL]
    if installs and not declared.controller:
        raise PrereqError("the hosts file gives no `controller:`: the URL the hosts reach "
                          "this server at, for their agents to join",
                          hint="e.g. controller: http://10.0.0.1:7480 (the server listening "
                               "there: rackfire server --listen 0.0.0.0)")
    bundle = bundles.build(bundle_dir) if installs else None
    hosts = declared.by_name()

    async def carry_out() -> list[HostOutcome]:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(change: HostChange) -> HostOutcome:
            if change.step is not HostStep.INSTALL or bundle is None:
                return HostOutcome(change, False, change.step.value, "not carried out yet: "
                                   "only installs are (issue 18, under way)")
            async with gate:
                return await _install(store, declared, hosts[change.name], bundle, change,
                                      clock)
        return list(await asyncio.gather(*(one(c) for c in changes)))

    outcomes = asyncio.run(carry_out())
    for o in outcomes:
        store.add_event(actor, "", f"host/{o.change.name}", f"hosts-{o.change.step}",
                        "ok" if o.done else "failed",
                        "; ".join(o.change.changes) if o.done else f"{o.step}: {o.error}")
    return outcomes


async def _install(store: StateStore, declared: HostsFile, host: DeclaredHost,
                   bundle: bundles.Bundle, change: HostChange,
                   clock: Callable[[], float]) -> HostOutcome:
    token, _ = store.hosts.create_token(TOKEN_TTL, 1, f"hosts apply ({host.name})")
    started = clock()
    try:
        async with connect(host.name, host.ssh) as s:
            found = await probe(s, bundle)
            where = await put_bundle(s, bundle)
            await start_agent(s, found, where, AgentSetup(declared.controller, host.name,
                                                          host.labels), token)
        await _joined(store, host.name, started, clock)
    except SshError as e:
        return HostOutcome(change, False, e.step, e.message)
    except RackfireError as e:
        return HostOutcome(change, False, "join", e.message)
    store.hosts.record_applied(AppliedHost(host, installed_version()))
    return HostOutcome(change, True)


async def _joined(store: StateStore, name: str, since: float,
                  clock: Callable[[], float]) -> None:
    """Until the host has joined and sent a heartbeat after `since`."""
    while True:
        if any(h.name == name and h.last_seen >= since for h in store.hosts.hosts()):
            return
        if clock() - since > JOIN_WAIT:
            raise ExecError(f"its agent did not join within {JOIN_WAIT:.0f} s",
                            hint="see /opt/rackfire/agent.log on the host")
        await asyncio.sleep(0.5)
