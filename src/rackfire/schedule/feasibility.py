"""Feasibility: can this host take this instance at all? Every failed check is kept, with
its numbers, so a refusal says exactly what is missing where."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rackfire.model.host import CPU_SLACK, Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import Spread
from rackfire.model.units import format_size, format_size_approx
from rackfire.schedule.ask import Ask, RoleRef, role_of


class Check(StrEnum):
    HOST = "host"  # the host is not known (any more)
    STATE = "state"
    RUNTIME = "runtime"
    LABEL = "label"
    DISTINCT = "distinct"
    SPREAD = "spread"  # the role's failure domain (rack, site) holds one of it already
    CPU = "cpu"
    MEMORY = "memory"
    DISK = "disk"


@dataclass(frozen=True, slots=True)
class Rejection:
    host: str
    check: Check
    detail: str  # "needs 512M, 256M free"

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


class Ledger:
    """What is reserved on each host so far in one run (its own reservations first), and
    which instances of each role are where. Mutable, but private to one pure call."""

    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self.hosts = hosts
        self._rack = {name: h.rack for name, h in hosts.items()}
        self._site = {name: h.site for name, h in hosts.items()}
        self._total = {name: h.total for name, h in hosts.items()}
        self._used = {name: h.reserved for name, h in hosts.items()}
        self._on_host: dict[tuple[str, RoleRef], list[InstanceKey]] = {}
        # Per failure domain (the rack's or site's label value) and role: who is there.
        self._on_rack: dict[tuple[str, RoleRef], list[InstanceKey]] = {}
        self._on_site: dict[tuple[str, RoleRef], list[InstanceKey]] = {}

    def add(self, key: InstanceKey, host: str, need: Reservation) -> None:
        role = role_of(key)
        self._used[host] += need
        self._on_host.setdefault((host, role), []).append(key)
        rack, site = self._rack[host], self._site[host]
        if rack is not None:
            self._on_rack.setdefault((rack, role), []).append(key)
        if site is not None:
            self._on_site.setdefault((site, role), []).append(key)

    def copy(self, hosts: Mapping[str, Host]) -> Ledger:
        """The same reservations over `hosts`: the same ones, perhaps in another state."""
        other = Ledger.__new__(Ledger)
        other.hosts, other._rack, other._site, other._total = (
            hosts, self._rack, self._site, self._total)  # never changed once made
        other._used = dict(self._used)
        other._on_host = {k: list(v) for k, v in self._on_host.items()}
        other._on_rack = {k: list(v) for k, v in self._on_rack.items()}
        other._on_site = {k: list(v) for k, v in self._on_site.items()}
        return other

    def remove(self, key: InstanceKey, host: str, need: Reservation) -> None:
        """Undo `add` (a probe held to ask what comes next)."""
        role = role_of(key)
        self._used[host] -= need
        self._on_host[host, role].remove(key)
        rack, site = self._rack[host], self._site[host]
        if rack is not None:
            self._on_rack[rack, role].remove(key)
        if site is not None:
            self._on_site[site, role].remove(key)

    def used(self, host: str) -> Reservation:
        return self._used[host]

    def total(self, host: str) -> Reservation:
        return self._total[host]

    def free(self, host: str) -> Reservation:
        return self._total[host] - self._used[host]

    def on_host(self, host: str, role: RoleRef) -> list[InstanceKey]:
        return sorted(self._on_host.get((host, role), ()))

    def count_on_host(self, host: str, role: RoleRef) -> int:
        return len(self._on_host.get((host, role), ()))

    def count_on_rack(self, host: str, role: RoleRef) -> int:
        """Instances of the role on the host's rack; a host with no rack is a rack alone."""
        rack = self._rack[host]
        if rack is None:
            return self.count_on_host(host, role)
        return len(self._on_rack.get((rack, role), ()))

    def in_domain(self, host: str, role: RoleRef, spread: Spread) -> list[InstanceKey] | None:
        """The role's instances in the host's rack (or site), first placed first; None when
        the host has no such label."""
        site = spread is Spread.SITE
        value = (self._site if site else self._rack)[host]
        if value is None:
            return None
        return (self._on_site if site else self._on_rack).get((value, role), [])


def check(host: Host, key: InstanceKey, ask: Ask, ledger: Ledger) -> tuple[Rejection, ...]:
    """Every check the host fails for the instance; () if it can take it now."""
    if host.state is not HostState.READY:
        return (Rejection(host.name, Check.STATE, f"host is {host.state}"),)
    out: list[Rejection] = []

    def no(c: Check, detail: str) -> None:
        out.append(Rejection(host.name, c, detail))

    has = ", ".join(host.runtimes) or "none"
    if ask.runtime is None and not host.runtimes:
        no(Check.RUNTIME, "host has none")
    elif ask.runtime is not None and ask.runtime not in host.runtimes:
        no(Check.RUNTIME, f"needs {ask.runtime}, host has {has}")
    labels = dict(host.labels)
    for k, v in ask.labels:
        got = labels.get(k)
        if got != v:
            no(Check.LABEL, f"needs {k}={v}, host has " + (f"{k}={got}" if got else f"no {k}"))
    if ask.distinct_hosts:
        there = ledger.on_host(host.name, role_of(key))
        if there:
            no(Check.DISTINCT, f"{there[0]} is already on this host")
    if ask.spread is not None:
        kind = ask.spread.value
        inside = ledger.in_domain(host.name, role_of(key), ask.spread)
        if inside is None:  # a host outside every rack (site) cannot prove it is apart
            no(Check.LABEL, f"spread: {kind} needs a {kind} label, host has no {kind}")
        elif inside:
            no(Check.SPREAD, f"{inside[0]} is already in {kind} {labels[kind]}")
    free, need = ledger.free(host.name), ask.need
    if need.cpus > free.cpus + CPU_SLACK:
        no(Check.CPU, _short(show_cpus(need.cpus), show_cpus(free.cpus), free.cpus))
    if need.memory > free.memory:
        no(Check.MEMORY, _short(show_bytes(need.memory), show_bytes(free.memory), free.memory))
    if need.disk > free.disk:
        no(Check.DISK, _short(show_bytes(need.disk), show_bytes(free.disk), free.disk))
    return tuple(out)


def _short(need: str, free: str, amount: float) -> str:
    # A host can be over already (it shrank, or other reservations grew): say so plainly.
    if amount < 0:
        return f"needs {need}, none free (over by {free.lstrip('-')})"
    return f"needs {need}, {free} free"


def show_cpus(n: float) -> str:
    return f"{round(n, 6):g}"


def show_bytes(n: int) -> str:
    sign, n = ("-", -n) if n < 0 else ("", n)
    exact = format_size(n)
    return sign + (format_size_approx(n) if exact.endswith("B") and n >= 1024 else exact)
