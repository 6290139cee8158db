"""Hosts as the controller knows them: state, labels, runtimes, what they can hard-reserve
and what is reserved on them. Pure data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from rackfire.model.agent import HostCapacity
from rackfire.model.runtime import ASSUMED, Capabilities, Need, missing
from rackfire.model.stack import Resources, RuntimeKind

_RUNTIMES = frozenset(k.value for k in RuntimeKind)

CPU_SLACK = 1e-9
"""Cores. CPU quotas are floats: ten 0.1s must still fit exactly in one core."""


class HostState(StrEnum):
    READY = "ready"
    DRAINING = "draining"  # what runs there is moved away; it gets nothing new
    DOWN = "down"  # lost: what ran there has to run elsewhere
    FENCED = "fenced"  # declared dead by an operator (`rackfire host fence`): as down, at once


@dataclass(frozen=True, slots=True)
class Reservation:
    """Hard-reserved amounts: cores, bytes of memory, bytes of disk."""

    cpus: float = 0.0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Reservation) -> Reservation:
        return Reservation(self.cpus + other.cpus, self.memory + other.memory,
                           self.disk + other.disk)

    def __sub__(self, other: Reservation) -> Reservation:
        return Reservation(self.cpus - other.cpus, self.memory - other.memory,
                           self.disk - other.disk)

    def within(self, limit: Reservation) -> bool:
        return (self.cpus <= limit.cpus + CPU_SLACK and self.memory <= limit.memory
                and self.disk <= limit.disk)

    @staticmethod
    def of(resources: Resources, data: int = 0) -> Reservation:
        """What one instance reserves: no cpu or memory limit reserves none of it (there
        is nothing to hold back); the root disk and any data disk, whole."""
        return Reservation(resources.cpu or 0.0, resources.memory or 0, resources.disk + data)

    @staticmethod
    def of_capacity(capacity: HostCapacity) -> Reservation:
        return Reservation(capacity.cpus, capacity.memory, capacity.disk)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    capacity: HostCapacity  # what it can hard-reserve, never more
    state: HostState = HostState.READY
    labels: tuple[tuple[str, str], ...] = ()  # (key, value) sorted by key: rack, site, ...
    runtimes: tuple[RuntimeKind, ...] = (RuntimeKind.CONTAINER,)  # best first
    reserved: Reservation = Reservation()  # held by instances the scheduler is not given

    def __post_init__(self) -> None:
        # One value per key, in key order: equal hosts compare (and hash) equal.
        object.__setattr__(self, "labels", tuple(sorted(dict(self.labels).items())))

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    @property
    def rack(self) -> str | None:
        return self.label("rack")

    @property
    def site(self) -> str | None:
        return self.label("site")

    @property
    def total(self) -> Reservation:
        return Reservation.of_capacity(self.capacity)


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What an agent reports of its host at every heartbeat."""

    capacity: HostCapacity  # what it can hard-reserve
    runtimes: tuple[RuntimeKind, ...]
    memory_used: int  # bytes the host's memory is in use (MemTotal - MemAvailable)
    disk_used: int  # bytes used on the file system of its data dir
    version: str = ""
    interval: float = 5.0  # seconds between its heartbeats
    # Per runtime it offers, what that runtime can do; () from an agent that predates them.
    capabilities: tuple[tuple[RuntimeKind, Capabilities], ...] = ()
    # The network of its underlay address ("172.31.0.0/24"; "" unknown) and the floating
    # addresses it holds there now: (stack, its `vip`) (control/vip.py).
    underlay: str = ""
    vips: tuple[tuple[str, str], ...] = ()

    def caps_of(self, kind: RuntimeKind) -> Capabilities | None:
        """What the host's `kind` runtime can do; None if the host does not offer it. An
        agent that reported no capabilities is assumed to have its kind's `ASSUMED` ones."""
        if kind not in self.runtimes:
            return None
        reported = dict(self.capabilities)
        if kind in reported:
            return reported[kind]
        return ASSUMED.get(kind, Capabilities()) if not self.capabilities else Capabilities()

    def lacks(self, kind: RuntimeKind, needs: Iterable[Need]) -> tuple[Need, ...]:
        """The `needs` the host's `kind` runtime does not meet (all of them if the host does
        not offer `kind`): () when it can run what asks them."""
        caps = self.caps_of(kind)
        return missing(caps if caps is not None else Capabilities(), needs)

    def to_json(self) -> dict[str, object]:
        return {"cpus": self.capacity.cpus, "memory": self.capacity.memory,
                "disk": self.capacity.disk, "runtimes": [r.value for r in self.runtimes],
                "memory_used": self.memory_used, "disk_used": self.disk_used,
                "version": self.version, "interval": self.interval,
                "capabilities": {k.value: c.to_json() for k, c in self.capabilities},
                "underlay": self.underlay, "vips": dict(self.vips)}

    @staticmethod
    def from_json(d: dict[str, object]) -> HostFacts:
        def num(key: str) -> float:
            value = d.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"facts.{key}: expected a number >= 0")
            return float(value)

        runtimes = d.get("runtimes", [])
        if not isinstance(runtimes, list):
            raise ValueError("facts.runtimes: expected a list")
        caps = d.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ValueError("facts.capabilities: expected an object")
        vips = d.get("vips", {})
        if not isinstance(vips, dict) or not all(isinstance(v, str) for v in vips.values()):
            raise ValueError("facts.vips: expected an object of stack -> address")
        return HostFacts(HostCapacity(num("cpus"), int(num("memory")), int(num("disk"))),
                         # one this server does not know (a newer agent's) is not offered
                         tuple(RuntimeKind(r) for r in runtimes if r in _RUNTIMES),
                         int(num("memory_used")), int(num("disk_used")),
                         str(d.get("version", "")), num("interval") or 5.0,
                         tuple((RuntimeKind(k), Capabilities.from_json(c))
                               for k, c in caps.items() if k in _RUNTIMES),
                         str(d.get("underlay", "")), tuple(sorted(vips.items())))
