"""What an instance asks of its host: resources, runtime, labels, and how its role spreads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rackfire.model.host import Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import RoleSpec, RuntimeKind, Spread, StackSpec


class Strategy(StrEnum):
    SPREAD = "spread"  # fewest of the role on the host, then on its rack, then most free
    BINPACK = "binpack"  # the tightest fit: fill a host before starting the next


@dataclass(frozen=True, slots=True)
class Ask:
    """What each instance of a role asks of the host it lands on."""

    need: Reservation
    runtime: RuntimeKind | None = None  # None: any runtime the host has
    labels: tuple[tuple[str, str], ...] = ()  # the host must carry every (key, value)
    distinct_hosts: bool = False  # never two instances of the role on one host
    strategy: Strategy = Strategy.SPREAD
    # A hard failure domain: never two instances of the role on hosts with the same `rack`
    # (or `site`) label, and none on a host without it. None: spread by host, a preference.
    spread: Spread | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(sorted(dict(self.labels).items())))
        if self.spread is Spread.HOST:  # today's preference: the same ask as none
            object.__setattr__(self, "spread", None)

    @staticmethod
    def of_role(role: RoleSpec, *, labels: Mapping[str, str] | None = None,
                distinct_hosts: bool = False,
                strategy: Strategy = Strategy.SPREAD) -> Ask:
        data = role.data.size if role.data else 0
        return Ask(Reservation.of(role.resources, data), role.runtime,
                   tuple((labels or {}).items()), distinct_hosts, strategy,
                   role.placement.spread)


RoleRef = tuple[str, str]
"""(stack, role): the instances that spread against each other."""


def role_of(key: InstanceKey) -> RoleRef:
    return key.stack, key.role


def wanted_for(spec: StackSpec, asks: Mapping[str, Ask] | None = None) -> dict[InstanceKey, Ask]:
    """Every instance of the stack in role order, then index: `asks` gives a role's own
    placement (strategy, labels, distinct hosts); by default it is what its resources ask."""
    wanted: dict[InstanceKey, Ask] = {}
    for role in spec.roles:
        ask = (asks or {}).get(role.name) or Ask.of_role(role)
        for i in range(role.count):
            wanted[InstanceKey(spec.name, role.name, i)] = ask
    return wanted
