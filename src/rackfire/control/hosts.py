"""The hosts `rackfire hosts` shows: this server's own (its in-process agent) and those that
joined, with what they can reserve, what stacks reserve on them and what is in use."""

from __future__ import annotations

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
    headroom,
    redundancy,
    role_of,
    usage,
    wanted_for,
)

MISSED_BEATS = 3  # a host that missed this many heartbeats is unreachable
MIN_SILENCE = 5.0  # ... and never sooner than this (a loaded controller answers late)


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    state: str  # ready | unreachable | draining | down
    local: bool  # the server's own, in-process agent
    labels: tuple[tuple[str, str], ...]
    facts: HostFacts
    reserved: Reservation
    last_seen: float | None
    address: str = ""  # its agent's API (HOST:PORT); "" for the server's own
    epoch: int = 1  # its incarnation (store/hosts.py)
    lease_until: float | None = None  # it lapses then unless it heartbeats (None: the server)
    observed_at: float | None = None  # when it last told of all its instances

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
                "observed_at": self.observed_at}


def host_views(local_name: str, local_facts: HostFacts, joined: Iterable[HostRecord],
               stacks: Iterable[StackSpec], placed: Mapping[InstanceKey, str], now: float,
               *, local_pool: bool = True,
               observed_at: Mapping[str, float | None] | None = None) -> list[HostView]:
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
        state = "unreachable" if silent(h, now) and h.state.value == "ready" else h.state.value
        views.append(HostView(h.name, state, False, h.labels, h.facts,
                              reserved.get(h.name, Reservation()), h.last_seen, h.address,
                              h.epoch, h.last_seen + lease(h.facts.interval),
                              seen.get(h.name)))
    return views


def lease(interval: float) -> float:
    """How long a heartbeat holds a host's lease, for heartbeats every `interval` seconds."""
    return max(MIN_SILENCE, MISSED_BEATS * interval)


def silent(h: HostRecord, now: float) -> bool:
    """It missed its last heartbeats: its lease lapsed, it is taken for unreachable."""
    return now - h.last_seen > lease(h.facts.interval)


def asks_of(stacks: Iterable[StackSpec]) -> dict[InstanceKey, Ask]:
    asks: dict[InstanceKey, Ask] = {}
    for spec in stacks:
        asks.update(wanted_for(spec))
    return asks


def pool(views: Iterable[HostView]) -> list[Host]:
    """The hosts as the scheduler sees them: an unreachable one is down."""
    return [Host(v.name, v.facts.capacity,
                 HostState.DOWN if v.state == "unreachable" else HostState(v.state),
                 v.labels, v.facts.runtimes) for v in views]


def capacity_report(views: list[HostView], stacks: Iterable[StackSpec],
                    placed: Mapping[InstanceKey, str]) -> dict[str, Any]:
    """`rackfire capacity`: per host reserved and free, whether every instance could run
    again after losing any one host (N+1) or rack, and how many more of each role fit.
    The answers come from the scheduler itself."""
    hosts = pool(views)
    asks = asks_of(stacks)
    default = hosts[0].name if hosts else ""
    where = {k: placed.get(k, default) for k in asks}
    red = redundancy(hosts, where, asks)
    roles = sorted({role_of(k) for k in asks})
    return {
        "hosts": [{"name": u.host, "state": u.state.value, "labels": dict(u.labels),
                   "capacity": _res(u.capacity), "reserved": _res(u.reserved),
                   "free": _res(u.free), "instances": len(u.instances)}
                  for u in usage(hosts, where, asks)],
        "n_plus_1": {"ok": red.n_plus_1, "losses": [_loss(x) for x in red.hosts]},
        "racks": {"ok": red.rack_safe, "losses": [_loss(x) for x in red.racks],
                  "unracked": list(red.unracked)},
        "headroom": [_headroom(headroom(hosts, where, asks, role)) for role in roles],
    }


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
