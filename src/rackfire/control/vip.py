"""A stack's floating address (`vip:`): which host holds it, and telling the hosts.

One ready host of the stack holds it at a time (its HAProxy serves the stack's published
ports there, to instances on any host: the routing mesh). The one that holds it keeps it
while it stays ready: a host coming back does not take it back, since each move costs the
clients a moment. Otherwise the first ready host of the stack, by name, whose underlay
network has the address. A host whose lease lapsed released it itself (its watchdog removes
it at the lease's end: agent/vips.py), so it moves at once; a draining one is told to let
go first, then another takes it.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from rackfire.control.executor import CONTROLLER
from rackfire.control.hosts import GONE
from rackfire.errors import AgentOffline, RackfireError
from rackfire.model.host import HostFacts

if TYPE_CHECKING:
    from rackfire.control.fleet import Fleet

READY = "ready"
KEEP = (READY, "suspect")  # the states in which a host keeps what it holds


def on_network(vip: str, underlay: str) -> bool:
    """Whether `vip` may be held on a host whose underlay network is `underlay`."""
    try:
        return bool(underlay) and ipaddress.IPv4Address(vip) in ipaddress.IPv4Network(underlay)
    except ValueError:
        return False


def holder(stack: str, vip: str, hosts: list[str], states: dict[str, str],
           facts: dict[str, HostFacts], told: str | None = None) -> str | None:
    """The host of `hosts` (the stack's) that should hold `vip`; None if no ready one can.
    `told`: the one last told to (its facts may not say so yet; one back from a partition
    may still say it holds it too). One that holds it keeps it while `suspect` (a late
    beat is no reason to move: its lease holds); a new one must be `ready`."""
    on = [h for h in sorted(hosts) if h in facts and on_network(vip, facts[h].underlay)]
    stay = [h for h in on if states.get(h) in KEEP]
    now = [h for h in stay if (stack, vip) in facts[h].vips]
    fits = [h for h in on if states.get(h) == READY]
    return told if told in stay else now[0] if now else fits[0] if fits else None


def check(vip: str, facts: dict[str, HostFacts], addresses: dict[str, str],
          taken: dict[str, str]) -> str:
    """Why `vip` cannot be a stack's floating address ("" if it can): `addresses` are the
    hosts' own, `taken` maps the floating addresses of the other stacks to their stack."""
    if vip in taken:
        return f"{vip} is already the floating address of stack {taken[vip]}"
    owner = next((h for h, ip in addresses.items() if ip == vip), None)
    if owner is not None:
        return f"{vip} is host {owner}'s own address"
    nets = sorted({f.underlay for f in facts.values() if f.underlay})
    if not any(on_network(vip, n) for n in nets):
        where = ", ".join(nets) or "none reported yet"
        return (f"{vip} is not inside any host's underlay network ({where}): a floating "
                "address must be on the network its hosts share")
    for f_host, f in facts.items():
        if f.underlay and ipaddress.IPv4Network(f.underlay).network_address \
                == ipaddress.IPv4Address(vip):
            return f"{vip} is the network address of {f_host}'s underlay"
    return ""


class Vips:
    """Tells the stack's hosts which one holds its floating address, at each publish."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._told: dict[str, str] = {}  # stack -> the host last told to hold it
        self._failed: dict[str, str] = {}  # stack -> the last error, said once

    def place(self, stack: str, vip: str) -> str:
        """Have one host hold `vip` ("": none) and every other let go; the holder, or ""
        with why not (also an event, once)."""
        now = time.time()
        records = {h.name: h for h in self.fleet.registry.hosts()}
        states = {n: self.fleet.liveness.state(h, now) for n, h in records.items()}
        facts = {n: h.facts for n, h in records.items()}
        keep = holder(stack, vip, list(self.fleet.holding(stack)), states, facts,
                      self._told.get(stack)) if vip else None
        for name, f in facts.items():  # let go first: never two hosts answering for it
            if name != keep and any(s == stack for s, _ in f.vips) and states[name] not in GONE:
                self._tell(stack, name, "")
        moved = keep is not None and self._told.get(stack) != keep
        if keep is not None and (moved or (stack, vip) not in facts[keep].vips) \
                and self._tell(stack, keep, vip) and moved:
            self._told[stack] = keep
            self.fleet.store.add_event(CONTROLLER, stack, f"vip/{vip}", "vip", "ok",
                                       f"held by {keep}")
        if vip and keep is None:
            self._say(stack, vip, f"no ready host of stack {stack} on the network of {vip}")
        return keep or ""

    def forget(self, stack: str) -> None:
        self._told.pop(stack, None)
        self._failed.pop(stack, None)

    def _tell(self, stack: str, host: str, vip: str) -> bool:
        try:
            self.fleet.link(host).hold_vip(stack, vip)
        except AgentOffline:
            return False
        except RackfireError as e:
            self._say(stack, vip, f"{host}: {e.message}")
            return False
        self._failed.pop(stack, None)
        return True

    def _say(self, stack: str, vip: str, why: str) -> None:
        if self._failed.get(stack) != why:
            self._failed[stack] = why
            self.fleet.store.add_event(CONTROLLER, stack, f"vip/{vip}", "vip", "failed", why)
