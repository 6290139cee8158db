"""The hosts `rackfire hosts` shows: this server's own (its in-process agent) and those that
joined, with what they can reserve, what stacks reserve on them and what is in use."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rackfire.model.host import Host, HostFacts, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.records import HostRecord
from rackfire.model.stack import StackSpec
from rackfire.schedule import (
    Ask,
    Headroom,
    Loss,
    Survival,
    headroom,
    redundancy,
    role_of,
    survival,
    usage,
    wanted_for,
)

MISSED_BEATS = 3  # a host that missed this many heartbeats is lost
SUSPECT_BEATS = 1.5  # ... and suspect once it missed one
FENCE_MARGIN = 1.0  # seconds an agent waits past its lease before it fences (default)
FENCE_GRACE = 1.0  # seconds its watchdog has to kill what it fences (a poll, SIGKILL)


@dataclass(frozen=True, slots=True)
class Liveness:
    """How long a heartbeat holds a host's lease, and when a host that cannot renew it has
    stopped what it fences: `rackfire server --lease/--fence-after`."""

    ttl: float = 3.0  # a lease lasts at least this long (a loaded controller answers late)
    fence_after: float | None = None  # None: its lease + FENCE_MARGIN
    since: float = 0.0  # this server started: no lease lapses sooner than a lease after it

    def lease(self, interval: float) -> float:
        """For heartbeats every `interval` seconds."""
        return max(self.ttl, MISSED_BEATS * interval)

    def suspect_after(self, interval: float) -> float:
        return min(self.lease(interval), SUSPECT_BEATS * interval)

    def fence(self, interval: float) -> float:
        """Seconds without a renewed lease after which the host's watchdog stops what
        fences (agent/watchdog.py), counted from the heartbeat it last sent."""
        if self.fence_after is not None:
            return self.fence_after
        return self.lease(interval) + FENCE_MARGIN

    def fenced_by(self, h: HostRecord) -> float:
        """When what fences on `h` has surely stopped, if it heard nothing since: the
        agent counts from before its last heartbeat reached here, so from `last_seen` on
        this clock the deadline is no earlier; plus what its watchdog takes to kill."""
        return self.seen(h) + self.fence(h.facts.interval) + FENCE_GRACE

    def seen(self, h: HostRecord) -> float:
        """When its lease was last renewed, as far as this server could have heard it."""
        return max(h.last_seen, self.since)

    def state(self, h: HostRecord, now: float) -> str:
        """ready | suspect | lost (its lease lapsed) | draining | fenced | down."""
        age = now - self.seen(h)
        if h.state in (HostState.FENCED, HostState.DOWN):
            return h.state.value
        if age > self.lease(h.facts.interval):
            return "lost"
        if h.state is HostState.DRAINING:
            return h.state.value
        return "suspect" if age > self.suspect_after(h.facts.interval) else "ready"

    def gone(self, h: HostRecord, now: float) -> bool:
        """What is placed there has to run elsewhere: its lease lapsed, or it was fenced."""
        return self.state(h, now) in GONE

    def gone_at(self, h: HostRecord) -> float:
        """From when `gone` holds, if nothing changes: its lease's end (-inf: fenced)."""
        if h.state in (HostState.FENCED, HostState.DOWN):
            return -math.inf
        return self.seen(h) + self.lease(h.facts.interval)


GONE = ("lost", "fenced", "down")  # the states whose instances have to run elsewhere
DEFAULT_LIVENESS = Liveness()


class Lapses:
    """When each joined host is gone, as the detector last read the hosts (control/
    detector.py, every LOOK s): what a call under way asks every GONE_LOOK s
    (agent/remote.py) without reading the store. A lease lapses at its own time, as
    `Liveness.gone` says; a fence, a `host ready` or a heartbeat that renews a lease about to
    lapse counts from the detector's next look; a host it never saw (removed) is not gone."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}  # replaced whole, never changed: readers need no lock

    def set(self, hosts: Iterable[HostRecord], liveness: Liveness) -> None:
        self._at = {h.name: liveness.gone_at(h) for h in hosts}

    def gone(self, host: str) -> bool:
        return time.time() > self._at.get(host, math.inf)


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    state: str  # ready | suspect | lost | draining | fenced | down
    local: bool  # the server's own, in-process agent
    labels: tuple[tuple[str, str], ...]
    facts: HostFacts
    reserved: Reservation
    last_seen: float | None
    address: str = ""  # its agent's API (HOST:PORT); "" for the server's own
    epoch: int = 1  # its incarnation (store/hosts.py)
    lease_until: float | None = None  # it lapses then unless it heartbeats (None: the server)
    observed_at: float | None = None  # when it last told of all its instances
    lease_age: float | None = None  # seconds since its last heartbeat (None: the server)
    lease: float | None = None  # how long a heartbeat holds its lease

    def to_json(self) -> dict[str, object]:
        cap = self.facts.capacity
        return {"name": self.name, "state": self.state, "local": self.local,
                "labels": dict(self.labels), "runtimes": [r.value for r in self.facts.runtimes],
                "capacity": {"cpus": cap.cpus, "memory": cap.memory, "disk": cap.disk},
                "reserved": {"cpus": self.reserved.cpus, "memory": self.reserved.memory,
                             "disk": self.reserved.disk},
                "used": {"memory": self.facts.memory_used, "disk": self.facts.disk_used},
                "last_seen": self.last_seen, "version": self.facts.version,
                "address": self.address, "epoch": self.epoch, "lease_until": self.lease_until,
                "observed_at": self.observed_at, "lease_age": self.lease_age,
                "lease": self.lease}


def host_views(local_name: str, local_facts: HostFacts, joined: Iterable[HostRecord],
               stacks: Iterable[StackSpec], placed: Mapping[InstanceKey, str], now: float,
               *, local_pool: bool = True,
               observed_at: Mapping[str, float | None] | None = None,
               liveness: Liveness = DEFAULT_LIVENESS) -> list[HostView]:
    """The server's own host (when it runs instances) and the joined ones, each with what
    the instances placed on it reserve (one not placed yet counts on the server's own)."""
    reserved: dict[str, Reservation] = {}
    for key, ask in asks_of(stacks).items():
        host = placed.get(key, local_name)
        reserved[host] = reserved.get(host, Reservation()) + ask.need
    seen = observed_at or {}
    views = [HostView(local_name, "ready", True, (), local_facts,
                      reserved.get(local_name, Reservation()), None,
                      observed_at=seen.get(local_name))] if local_pool else []
    for h in joined:
        views.append(HostView(h.name, liveness.state(h, now), False, h.labels, h.facts,
                              reserved.get(h.name, Reservation()), h.last_seen, h.address,
                              h.epoch, h.last_seen + liveness.lease(h.facts.interval),
                              seen.get(h.name), round(max(0.0, now - h.last_seen), 3),
                              liveness.lease(h.facts.interval)))
    return views


def asks_of(stacks: Iterable[StackSpec]) -> dict[InstanceKey, Ask]:
    asks: dict[InstanceKey, Ask] = {}
    for spec in stacks:
        asks.update(wanted_for(spec))
    return asks


def pool(views: Iterable[HostView]) -> list[Host]:
    """The hosts as the scheduler sees them: a lost or fenced one is down (a suspect one
    is as it was)."""
    return [Host(v.name, v.facts.capacity,
                 HostState.DOWN if v.state in ("lost", "fenced")
                 else HostState.READY if v.state == "suspect" else HostState(v.state),
                 v.labels, v.facts.runtimes) for v in views]


def capacity_report(views: list[HostView], stacks: Iterable[StackSpec],
                    placed: Mapping[InstanceKey, str]) -> dict[str, Any]:
    """`rackfire capacity`: per host reserved and free, whether every instance could run
    again after losing any one host (N+1), any two (N+2), any rack or any site, per stack
    whether it would still serve, and how many more of each role fit. The answers come
    from the scheduler itself. The verdicts are the scheduler's; an instance with a data disk
    is also listed as pinned to its host (failover holds it there, control/failover.py)."""
    stacks = list(stacks)
    hosts = pool(views)
    asks = asks_of(stacks)
    default = hosts[0].name if hosts else ""
    where = {k: placed.get(k, default) for k in asks}
    red = redundancy(hosts, where, asks)
    roles = sorted({role_of(k) for k in asks})
    stacks_fate = survival(red, where, asks)
    # Its data disk is on that host only (no replicas yet): its host lost, it is held.
    data = {(s.name, r.name) for s in stacks for r in s.roles if r.data is not None}
    pinned: dict[str, dict[str, str]] = {}
    for k in sorted(asks):
        if (k.stack, k.role) in data:
            pinned.setdefault(k.stack, {})[str(k)] = where[k]
    return {
        "hosts": [{"name": u.host, "state": u.state.value, "labels": dict(u.labels),
                   "capacity": _res(u.capacity), "reserved": _res(u.reserved),
                   "free": _res(u.free), "instances": len(u.instances)}
                  for u in usage(hosts, where, asks)],
        "n_plus_1": {"ok": red.n_plus_1, "losses": [_loss(x) for x in red.hosts]},
        "racks": {"ok": red.rack_safe, "losses": [_loss(x) for x in red.racks],
                  "unracked": list(red.unracked)},
        # Only the pairs that strand something: every other pair strands nothing.
        "n_plus_2": {"ok": red.n_plus_2, "losses": [_loss(x) for x in red.pairs if not x.ok],
                     "pairs": len(red.pairs), "hosts": list(red.paired),
                     "capped": red.pairs_capped},
        "sites": {"ok": red.site_safe, "losses": [_loss(x) for x in red.sites],
                  "unsited": list(red.unsited)},
        "stacks": [{"stack": s.stack, "host": _fate(s.host), "hosts_2": _fate(s.pair),
                    "rack": _fate(s.rack), "site": _fate(s.site),
                    "pinned": pinned.get(s.stack, {})} for s in stacks_fate],
        "headroom": [_headroom(headroom(hosts, where, asks, role)) for role in roles],
    }


def _fate(s: Survival) -> dict[str, Any]:
    return {"verdict": s.verdict.value, "loss": s.loss, "stranded": [str(k) for k in s.stranded]}


def _res(r: Reservation) -> dict[str, float]:
    return {"cpus": round(r.cpus, 6), "memory": r.memory, "disk": r.disk}


def _loss(loss: Loss) -> dict[str, Any]:
    return {"lost": loss.lost, "hosts": list(loss.hosts), "displaced": len(loss.displaced),
            "stranded": [{"instance": str(d.key),
                          "why": {r.host: str(r) for r in d.rejected}} for d in loss.stranded]}


def _headroom(h: Headroom) -> dict[str, Any]:
    return {"role": f"{h.role[0]}/{h.role[1]}", "more": h.total,
            "hosts": {r.host: r.fits for r in h.hosts},
            "then": {r.host: [str(x) for x in r.then] for r in h.hosts if r.then}}
