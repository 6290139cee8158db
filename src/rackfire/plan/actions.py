"""Actions and plans: data, printed before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rackfire.model.instance import InstanceKey, InstanceRequest


class ActionKind(StrEnum):
    DESTROY = "destroy"
    CREATE = "create"
    RESTART = "restart"  # it stopped; start it again on its own disk
    RECONFIGURE = "reconfigure"  # new config layer, same disk, same IP
    REPLACE = "replace"  # a fresh instance in its place, one at a time


# The order a plan runs in: free capacity first, rolling replaces last.
EXECUTION_ORDER = {k: i for i, k in enumerate(ActionKind)}


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    key: InstanceKey
    reason: str
    request: InstanceRequest | None = None  # None for destroy
    not_before: float | None = None  # restart backoff: the executor waits until then
    held: str = ""  # why a rolling replace may not go on yet (an earlier one is not healthy)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "instance": str(self.key),
            "role": self.key.role,
            "index": self.key.index,
            "reason": self.reason,
            "not_before": self.not_before,
            "held": self.held,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    stack: str
    generation: int
    actions: tuple[Action, ...]

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "generation": self.generation,
            "changes": len(self.actions),
            "actions": [a.to_json() for a in self.actions],
        }
