"""Actions and plans: data, printed before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT


class ActionKind(StrEnum):
    DESTROY = "destroy"
    STOP = "stop"  # stopped by an operator: keeps its disk and IP
    FAIL = "fail"  # the restart policy gives up: stop it and mark it failed
    CREATE = "create"
    RESTART = "restart"  # start it again on its own disk (stopped, unhealthy, or asked)
    RESIZE = "resize"  # new cpu/memory/pids limits live, a disk grown online
    RELOAD = "reload"  # new file contents in place, then the appliance's reload: no restart
    RECONFIGURE = "reconfigure"  # new config layer, same disk, same IP
    REPLACE = "replace"  # a fresh instance in its place, rolling (a batch at a time)


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
    rolling: bool = False  # a batch at a time, each healthy before the next (as replaces)
    after_failure: bool = False  # a restart that counts towards the restart policy
    stop_timeout: float = DEFAULT_STOP_TIMEOUT  # SIGTERM, then SIGKILL after this long
    batch: int = 1  # rolling actions of one role that may be out of service together
    health_timeout: float | None = None  # a rolling one must pass its check this soon

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "instance": str(self.key),
            "role": self.key.role,
            "index": self.key.index,
            "reason": self.reason,
            "not_before": self.not_before,
            "held": self.held,
            "rolling": self.rolling or self.kind is ActionKind.REPLACE,
            "batch": self.batch,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    stack: str
    generation: int
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()  # what the operator should know before applying
    placement: tuple[str, ...] = ()  # where each instance goes and why (`plan --explain`)

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "generation": self.generation,
            "changes": len(self.actions),
            "actions": [a.to_json() for a in self.actions],
            "notes": list(self.notes),
            "placement": list(self.placement),
        }
