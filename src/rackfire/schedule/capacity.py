"""Capacity analysis over the current placements, Ganeti-style: what each host has reserved
and free, whether everything could be placed again after losing any one host (N+1) or any
one rack, and how many more instances of a role fit. Every answer comes from the scheduler
itself, so it never promises a placement that `schedule` would not make."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from rackfire.model.host import CPU_SLACK, Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask, RoleRef, role_of
from rackfire.schedule.feasibility import Ledger, Rejection, check
from rackfire.schedule.placement import Decision
from rackfire.schedule.scheduler import hosts_by_name, placement_order, schedule


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

    lost: str  # the host's name, or the rack's
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

    @property
    def n_plus_1(self) -> bool:
        """Every instance could run again after losing any one host."""
        return all(loss.ok for loss in self.hosts)

    @property
    def rack_safe(self) -> bool:
        return all(loss.ok for loss in self.racks)


def lose(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
         asks: Mapping[InstanceKey, Ask], lost: Collection[str], name: str) -> Loss:
    """Schedule the current instances again as if the hosts named in `lost` were down."""
    scenario = [replace(h, state=HostState.DOWN) if h.name in lost else h for h in hosts]
    current = _current(placed, asks)
    result = schedule(scenario, placed, current)
    displaced = tuple(k for k in current if placed[k] in lost)
    return Loss(name, tuple(sorted(lost)), displaced, result.unplaced)


def redundancy(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
               asks: Mapping[InstanceKey, Ask]) -> Redundancy:
    """N+1 for hosts and for racks. Give every instance on the hosts (all stacks): what is
    left in `Host.reserved` is taken to be pinned there and is lost with its host."""
    by_name = hosts_by_name(hosts)
    racks: dict[str, list[str]] = {}
    for h in by_name.values():
        if h.rack is not None:
            racks.setdefault(h.rack, []).append(h.name)
    hs = list(by_name.values())
    return Redundancy(
        tuple(lose(hs, placed, asks, {name}, name) for name in sorted(by_name)),
        tuple(lose(hs, placed, asks, set(members), rack)
              for rack, members in sorted(racks.items())),
        tuple(sorted(name for name, h in by_name.items() if h.rack is None)))


@dataclass(frozen=True, slots=True)
class Room:
    host: str
    fits: int | None  # how many more the host takes; None: no end (it reserves nothing)
    then: tuple[Rejection, ...]  # why one more would not fit


@dataclass(frozen=True, slots=True)
class Headroom:
    role: RoleRef
    ask: Ask
    hosts: tuple[Room, ...]  # by name

    @property
    def total(self) -> int | None:
        counts = [r.fits for r in self.hosts]
        return None if None in counts else sum(c for c in counts if c is not None)


def headroom(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
             asks: Mapping[InstanceKey, Ask], role: RoleRef,
             ask: Ask | None = None) -> Headroom:
    """How many more instances of `role` (asking `ask`, by default what its instances ask)
    fit once the current instances are where the scheduler keeps or moves them. Hosts are
    independent, so the count is the same for spread and binpack: only the order of
    filling differs."""
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
    why = check(host, probe, ask, ledger)
    if why:
        return Room(host.name, 0, why)
    free, need = ledger.free(host.name), ask.need
    counts = [int((free.cpus + CPU_SLACK) // need.cpus)] if need.cpus > 0 else []
    counts += [f // n for f, n in ((free.memory, need.memory), (free.disk, need.disk)) if n > 0]
    fits = min(counts) if counts else None
    if ask.distinct_hosts:
        fits = 1
    if fits is None:
        return Room(host.name, None, ())
    # What stops the next one: hold what `fits` more would reserve, then ask again. (The
    # ledger is this call's own; holding on one host changes no other host's checks.)
    ledger.add(probe, host.name, Reservation(need.cpus * fits, need.memory * fits,
                                             need.disk * fits))
    return Room(host.name, fits, check(host, probe, ask, ledger))


def _current(placed: Mapping[InstanceKey, str],
             asks: Mapping[InstanceKey, Ask]) -> dict[InstanceKey, Ask]:
    return {k: a for k, a in asks.items() if k in placed}
