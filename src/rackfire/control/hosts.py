"""The hosts `rackfire hosts` shows: this server's own (its in-process agent) and those that
joined, with what they can reserve, what stacks reserve on them and what is in use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rackfire.control.capacity import reserved_by
from rackfire.model.host import HostFacts, Reservation
from rackfire.model.stack import StackSpec
from rackfire.store.hosts import HostRecord

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

    def to_json(self) -> dict[str, object]:
        cap = self.facts.capacity
        return {"name": self.name, "state": self.state, "local": self.local,
                "labels": dict(self.labels), "runtimes": [r.value for r in self.facts.runtimes],
                "capacity": {"cpus": cap.cpus, "memory": cap.memory, "disk": cap.disk},
                "reserved": {"cpus": self.reserved.cpus, "memory": self.reserved.memory,
                             "disk": self.reserved.disk},
                "used": {"memory": self.facts.memory_used, "disk": self.facts.disk_used},
                "last_seen": self.last_seen, "version": self.facts.version}


def host_views(local_name: str, local_facts: HostFacts, joined: Iterable[HostRecord],
               stacks: Iterable[StackSpec], now: float) -> list[HostView]:
    """Every stack runs on the local host for now (placement across hosts comes with the
    scheduler's wiring), so it holds every reservation."""
    reserved = Reservation()
    for spec in stacks:
        reserved += reserved_by(spec)
    views = [HostView(local_name, "ready", True, (), local_facts, reserved, None)]
    for h in joined:
        silent = now - h.last_seen > max(MIN_SILENCE, MISSED_BEATS * h.facts.interval)
        state = "unreachable" if silent and h.state.value == "ready" else h.state.value
        views.append(HostView(h.name, state, False, h.labels, h.facts, Reservation(),
                              h.last_seen))
    return views
