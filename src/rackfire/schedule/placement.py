"""What the scheduler decided, per instance, with everything needed to explain it."""

from __future__ import annotations

from dataclasses import dataclass

from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask
from rackfire.schedule.feasibility import Rejection
from rackfire.schedule.ranking import Candidate


@dataclass(frozen=True, slots=True)
class Decision:
    key: InstanceKey
    ask: Ask
    host: str | None  # None: no host can take it
    kept: bool = False  # it stays where it was placed before (not re-ranked)
    previous: str | None = None  # where it was, when it had to leave
    left: tuple[Rejection, ...] = ()  # why it could not stay there
    ranked: tuple[Candidate, ...] = ()  # hosts that could take it, best first: [0] is `host`
    rejected: tuple[Rejection, ...] = ()  # every failed check of every other host, by host

    @property
    def moved(self) -> bool:
        return self.previous is not None and self.host is not None


@dataclass(frozen=True, slots=True)
class Placement:
    decisions: tuple[Decision, ...]  # in placement order: role order, then index

    def assignments(self) -> dict[InstanceKey, str]:
        return {d.key: d.host for d in self.decisions if d.host is not None}

    @property
    def unplaced(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.host is None)

    @property
    def moved(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.moved)

    @property
    def ok(self) -> bool:
        return not self.unplaced

    def decision(self, key: InstanceKey) -> Decision:
        for d in self.decisions:
            if d.key == key:
                return d
        raise KeyError(key)
