"""Capacity analysis over the current placements, Ganeti-style: what each host has reserved
and free, whether everything could be placed again after losing any one host (N+1), any two,
any one rack or any one site (and per stack, whether it would still serve), and how many more
instances of a role fit. Every answer comes from the scheduler itself, so it never promises
a placement that `schedule` would not make."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from rackfire.model.host import CPU_SLACK, Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask, RoleRef, role_of
from rackfire.schedule.feasibility import Ledger, Rejection, check
from rackfire.schedule.placement import Decision
from rackfire.schedule.scheduler import hosts_by_name, placement_order, schedule
from rackfire.schedule.search import Indexed


@dataclass(frozen=True, slots=True)
class HostUsage:
    host: str
    state: HostState
    labels: tuple[tuple[str, str], ...]
    capacity: Reservation
    reserved: Reservation  # the host's own reservations plus its instances'
    free: Reservation  # capacity - reserved: negative where the host is over (it shrank)
    instances: tuple[InstanceKey, ...]


def usage(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
          asks: Mapping[InstanceKey, Ask]) -> tuple[HostUsage, ...]:
    """Per host, by name. Instances on hosts not given are left out."""
    by_name = hosts_by_name(hosts)
    reserved = {name: h.reserved for name, h in by_name.items()}
    on: dict[str, list[InstanceKey]] = {name: [] for name in by_name}
    for key, where in placed.items():
        if where in by_name and key in asks:
            reserved[where] += asks[key].need
            on[where].append(key)
    return tuple(HostUsage(name, h.state, h.labels, h.total, reserved[name],
                           h.total - reserved[name], tuple(sorted(on[name])))
                 for name, h in sorted(by_name.items()))


@dataclass(frozen=True, slots=True)
class Loss:
    """One failure scenario: `hosts` go down at once."""

    lost: str  # the host's name, a pair's ("a+b"), the rack's or the site's
    hosts: tuple[str, ...]
    displaced: tuple[InstanceKey, ...]  # what ran on them
    stranded: tuple[Decision, ...]  # instances that would fit nowhere, with every host's why

    @property
    def ok(self) -> bool:
        return not self.stranded


@dataclass(frozen=True, slots=True)
class Redundancy:
    hosts: tuple[Loss, ...]  # one per host, by name
    racks: tuple[Loss, ...]  # one per `rack` label value, by name
    unracked: tuple[str, ...]  # hosts with no rack label: in no rack scenario
    pairs: tuple[Loss, ...] = ()  # one per pair of the `paired` hosts, by name
    paired: tuple[str, ...] = ()  # every host, or the PAIRED_MAX holding the most
    sites: tuple[Loss, ...] = ()  # one per `site` label value, by name
    unsited: tuple[str, ...] = ()  # hosts with no site label: in no site scenario

    @property
    def n_plus_1(self) -> bool:
        """Every instance could run again after losing any one host."""
        return all(loss.ok for loss in self.hosts)

    @property
    def rack_safe(self) -> bool:
        return all(loss.ok for loss in self.racks)

    @property
    def n_plus_2(self) -> bool:
        """... after losing any two hosts (of `paired`)."""
        return all(loss.ok for loss in self.pairs)

    @property
    def site_safe(self) -> bool:
        return all(loss.ok for loss in self.sites)

    @property
    def pairs_capped(self) -> bool:
        """Not every pair was tried: `paired` is not every host."""
        return len(self.paired) < len(self.hosts)


PAIRED_MAX = 40
"""Losing two hosts is one `schedule` per pair, n(n-1)/2 of them. Up to this many hosts every
pair is tried (780 at most); past it, the pairs of the PAIRED_MAX hosts that hold the most
instances (their loss displaces the most), and the report says it was capped."""


def lose(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
         asks: Mapping[InstanceKey, Ask], lost: Collection[str], name: str) -> Loss:
    """Schedule the current instances again as if the hosts named in `lost` were down."""
    scenario = [replace(h, state=HostState.DOWN) if h.name in lost else h for h in hosts]
    current = _current(placed, asks)
    result = schedule(scenario, placed, current)
    displaced = tuple(k for k in current if placed[k] in lost)
    return Loss(name, tuple(sorted(lost)), displaced, result.unplaced)


def redundancy(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
               asks: Mapping[InstanceKey, Ask], *, paired_max: int = PAIRED_MAX) -> Redundancy:
    """Losing any one host (N+1), any two (N+2), any rack and any site. Give every instance
    on the hosts (all stacks): what is left in `Host.reserved` is taken to be pinned there
    and is lost with its host."""
    by_name = hosts_by_name(hosts)
    hs = list(by_name.values())
    held = Counter(where for k, where in placed.items() if k in asks)
    paired = sorted(sorted(by_name, key=lambda n: (-held[n], n))[:paired_max])
    losing = _Losing(by_name, placed, asks)

    def domains(kind: str) -> tuple[tuple[Loss, ...], tuple[str, ...]]:
        members: dict[str, list[str]] = {}
        for h in hs:
            value = h.label(kind)
            if value is not None:
                members.setdefault(value, []).append(h.name)
        return (tuple(losing.lose(set(names), value)
                      for value, names in sorted(members.items())),
                tuple(sorted(h.name for h in hs if h.label(kind) is None)))

    racks, unracked = domains("rack")
    sites, unsited = domains("site")
    return Redundancy(
        tuple(losing.lose({name}, name) for name in sorted(by_name)),
        racks, unracked,
        tuple(losing.lose({a, b}, f"{a}+{b}") for a, b in itertools.combinations(paired, 2)),
        tuple(paired), sites, unsited)


class _Losing:
    """`lose` for many scenarios over the same placement, cheaper and with the same answer.

    When `schedule` keeps every current instance where it is (the usual case), it keeps
    every one that is not on a lost host too: each is checked against what came before it
    on its host, which is the same, and against its rack and site, which hold no more. So a
    scenario is every instance held where it is but those on the lost hosts, which are then
    placed in order by the same index `schedule` uses: no check of every kept instance per
    scenario. (The ledger of them all is made once; a scenario's copy lets the lost ones
    go: what a down host reserves is never asked, and each role's rack and site lists keep
    their order.) Otherwise each scenario is `lose` itself."""

    def __init__(self, by_name: Mapping[str, Host], placed: Mapping[InstanceKey, str],
                 asks: Mapping[InstanceKey, Ask]) -> None:
        self.by_name, self.placed = by_name, placed
        self.current = _current(placed, asks)
        self.asks = asks
        self.order = placement_order(self.current)
        self.all_kept = all(d.kept for d in
                            schedule(by_name.values(), placed, self.current).decisions)
        self.ledger = Ledger(by_name)
        if self.all_kept:
            for k in self.order:
                self.ledger.add(k, placed[k], self.current[k].need)

    def lose(self, lost: Collection[str], name: str) -> Loss:
        if not self.all_kept:
            return lose(self.by_name.values(), self.placed, self.asks, lost, name)
        scenario = {n: replace(h, state=HostState.DOWN) if n in lost else h
                    for n, h in self.by_name.items()}
        ledger = self.ledger.copy(scenario)
        displaced = [k for k in self.order if self.placed[k] in lost]
        for k in displaced:
            ledger.remove(k, self.placed[k], self.current[k].need)
        pick = Indexed(scenario, ledger)
        stranded = []
        for k in displaced:
            best, rejected = pick.place(k, self.current[k])
            if not best:  # the decision `schedule` makes: it had to leave its (down) host
                where = self.placed[k]
                stranded.append(Decision(k, self.current[k], None, previous=where,
                                         left=check(scenario[where], k, self.current[k],
                                                    ledger), rejected=rejected))
        return Loss(name, tuple(sorted(lost)),
                    tuple(k for k in self.current if self.placed[k] in lost), tuple(stranded))


class Verdict(StrEnum):
    OK = "ok"  # every instance of the stack could run again
    DEGRADED = "degraded"  # some could not, but each of its roles keeps at least one
    DOWN = "down"  # a role of it would have no instance left
    UNTESTED = "untested"  # no such scenario: fewer than two hosts, no rack or site labels


@dataclass(frozen=True, slots=True)
class Survival:
    """A stack's fate over one kind of scenario: the worst of them."""

    verdict: Verdict
    loss: str | None = None  # the scenario that decides it (the first by name of the worst)
    stranded: tuple[InstanceKey, ...] = ()  # the stack's instances it strands


@dataclass(frozen=True, slots=True)
class StackSurvival:
    stack: str
    host: Survival  # any one host lost
    pair: Survival  # any two hosts lost (of `Redundancy.paired`)
    rack: Survival
    site: Survival


def survival(red: Redundancy, placed: Mapping[InstanceKey, str],
             asks: Mapping[InstanceKey, Ask]) -> tuple[StackSurvival, ...]:
    """Per stack (by name), whether it survives each kind of loss `red` tried: a role
    spread one per rack over three racks is degraded by a rack's loss (the one it had
    there can go nowhere else), not down."""
    sizes = Counter(role_of(k) for k in _current(placed, asks))

    def worst(losses: tuple[Loss, ...], stack: str) -> Survival:
        if not losses:
            return Survival(Verdict.UNTESTED)
        found = Survival(Verdict.OK)
        for loss in losses:
            mine = tuple(d.key for d in loss.stranded if d.key.stack == stack)
            if not mine:
                continue
            gone = Counter(role_of(k) for k in mine)
            verdict = (Verdict.DOWN if any(n >= sizes[r] for r, n in gone.items())
                       else Verdict.DEGRADED)
            if _WORSE[verdict] > _WORSE[found.verdict]:
                found = Survival(verdict, loss.lost, mine)
        return found

    return tuple(StackSurvival(s, worst(red.hosts, s), worst(red.pairs, s),
                               worst(red.racks, s), worst(red.sites, s))
                 for s in sorted({stack for stack, _ in sizes}))


_WORSE = {Verdict.UNTESTED: 0, Verdict.OK: 0, Verdict.DEGRADED: 1, Verdict.DOWN: 2}


@dataclass(frozen=True, slots=True)
class Room:
    host: str
    fits: int | None  # how many more the host takes; None: no end (it reserves nothing)
    then: tuple[Rejection, ...]  # why one more would not fit
    domain: str | None = None  # its rack (site) when the ask spreads over them


@dataclass(frozen=True, slots=True)
class Headroom:
    role: RoleRef
    ask: Ask
    hosts: tuple[Room, ...]  # by name

    @property
    def total(self) -> int | None:
        if self.ask.spread is not None:  # one per rack (site) that can take one
            return len({r.domain for r in self.hosts if r.fits})
        counts = [r.fits for r in self.hosts]
        return None if None in counts else sum(c for c in counts if c is not None)


def headroom(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
             asks: Mapping[InstanceKey, Ask], role: RoleRef,
             ask: Ask | None = None) -> Headroom:
    """How many more instances of `role` (asking `ask`, by default what its instances ask)
    fit once the current instances are where the scheduler keeps or moves them. Hosts are
    independent, so the count is the same for spread and binpack: only the order of
    filling differs. (A role spread over racks or sites takes one per rack or site: each
    host there may say 1, the total counts the rack once.)"""
    by_name = hosts_by_name(hosts)
    current = _current(placed, asks)
    if ask is None:
        ask = next((a for k, a in current.items() if role_of(k) == role), None)
        if ask is None:
            raise KeyError(f"{role[0]}/{role[1]} has no instances to take its ask from")
    settled = schedule(by_name.values(), placed, current).assignments()
    ledger = Ledger(by_name)
    for key in placement_order(settled):
        ledger.add(key, settled[key], current[key].need)
    index = 1 + max((k.index for k in current if role_of(k) == role), default=-1)
    probe = InstanceKey(role[0], role[1], index)  # the next instance the role would get
    return Headroom(role, ask, tuple(_room(h, probe, ask, ledger)
                                     for _, h in sorted(by_name.items())))


def _room(host: Host, probe: InstanceKey, ask: Ask, ledger: Ledger) -> Room:
    domain = host.label(ask.spread.value) if ask.spread is not None else None
    why = check(host, probe, ask, ledger)
    if why:
        return Room(host.name, 0, why, domain)
    free, need = ledger.free(host.name), ask.need
    counts = [int((free.cpus + CPU_SLACK) // need.cpus)] if need.cpus > 0 else []
    counts += [f // n for f, n in ((free.memory, need.memory), (free.disk, need.disk)) if n > 0]
    fits = min(counts) if counts else None
    if ask.distinct_hosts or ask.spread is not None:
        fits = 1
    if fits is None:
        return Room(host.name, None, ())
    # What stops the next one: hold what `fits` more would reserve, ask again, and let go
    # (held, it would fill the rack or site for the other hosts of it too).
    held = Reservation(need.cpus * fits, need.memory * fits, need.disk * fits)
    ledger.add(probe, host.name, held)
    then = check(host, probe, ask, ledger)
    ledger.remove(probe, host.name, held)
    return Room(host.name, fits, then, domain)


def _current(placed: Mapping[InstanceKey, str],
             asks: Mapping[InstanceKey, Ask]) -> dict[InstanceKey, Ask]:
    return {k: a for k, a in asks.items() if k in placed}
