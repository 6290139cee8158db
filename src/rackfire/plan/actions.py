"""Actions and plans: data, printed before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT


class ActionKind(StrEnum):
    # Stack actions (StackAction): not one instance's own.
    BUILD_IMAGE = "build-image"  # a declared image the roles run is not built yet
    BUILD_RELEASE = "build-release"  # a role's app source on its image, not built yet
    MIGRATE = "migrate"  # a cold migration under way: its next step (control/migrate.py)
    # Instance actions (Action), in the order a plan runs them.
    DESTROY = "destroy"
    STOP = "stop"  # stopped by an operator: keeps its disk and IP
    FAIL = "fail"  # the restart policy gives up: stop it and mark it failed
    CREATE = "create"
    RESTART = "restart"  # start it again on its own disk (stopped, unhealthy, or asked)
    RESIZE = "resize"  # new cpu/memory/pids limits live, a disk grown online
    RELOAD = "reload"  # new file contents in place, then the appliance's reload: no restart
    RECONFIGURE = "reconfigure"  # new config layer, same disk, same IP
    REPLACE = "replace"  # a fresh instance in its place, rolling (a batch at a time)
    # A stack action again: an appliance whose files list who is ready (a load balancer's
    # backends) gets them again, and reloads, as the actions above change who is ready.
    PUBLISH = "publish"


# The order a plan runs in: builds first (the instances wait for them), free capacity
# next, rolling replaces last.
EXECUTION_ORDER = {k: i for i, k in enumerate(ActionKind)}
BUILDS = frozenset({ActionKind.BUILD_IMAGE, ActionKind.BUILD_RELEASE})
# Who carries out a stack action that the executor does not: a migration's steps are the
# stack's moves (control/moves.py), publishing is the publisher's (control/publish.py).
CARRIED_OUT_BY = {ActionKind.MIGRATE: "migration", ActionKind.PUBLISH: "publisher"}


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
    warm: bool = False  # a warm instance's start: first of all (its capacity is its own)

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
            "subject": str(self.key),
            "by": "executor",
        }


@dataclass(frozen=True, slots=True)
class StackAction:
    """An action of a plan that is not one instance's own: a build its instances wait for
    (run by the executor, journalled as any action), a migration's next step, an appliance
    re-pointed at who is ready (carried out by the moves and the publisher: reported, so
    that the plan says everything a pass will do). `subject` names what it is about:
    `image/<name>`, `<stack>/<role>` (a release), or an instance."""

    kind: ActionKind
    subject: str
    reason: str
    role: str = ""  # the role it is for ('' for an image several roles may run)
    key: InstanceKey | None = None  # the instance, for a migration step or a reload
    image: str = ""  # BUILD_IMAGE: the image's name; BUILD_RELEASE: its image's digest
    source: str = ""  # BUILD_RELEASE: the app source's digest

    @property
    def by(self) -> str:
        return CARRIED_OUT_BY.get(self.kind, "executor")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "instance": str(self.key) if self.key else None,
            "role": self.role,
            "index": self.key.index if self.key else None,
            "reason": self.reason,
            "not_before": None,
            "held": "",
            "rolling": False,
            "batch": 1,
            "subject": self.subject,
            "by": self.by,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    stack: str
    generation: int
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()  # what the operator should know before applying
    placement: tuple[str, ...] = ()  # where each instance goes and why (`plan --explain`)
    lost: tuple[tuple[str, str], ...] = ()  # (instance, host): its host's lease lapsed
    steps: tuple[StackAction, ...] = ()  # builds and migration steps first, publishing last

    @property
    def empty(self) -> bool:
        return not self.actions and not self.steps

    @property
    def builds(self) -> tuple[StackAction, ...]:
        return tuple(s for s in self.steps if s.kind in BUILDS)

    def to_json(self) -> dict[str, Any]:
        # One list, in the order a pass goes: builds and migrations, the instances, then
        # what publishing reloads once they changed.
        steps = sorted(self.steps, key=lambda s: EXECUTION_ORDER[s.kind])
        first = [s for s in steps if s.kind is not ActionKind.PUBLISH]
        last = [s for s in steps if s.kind is ActionKind.PUBLISH]
        return {
            "stack": self.stack,
            "generation": self.generation,
            "changes": len(self.actions) + len(self.steps),
            "actions": [*(s.to_json() for s in first), *(a.to_json() for a in self.actions),
                        *(s.to_json() for s in last)],
            "notes": list(self.notes),
            "placement": list(self.placement),
            "lost": [{"instance": i, "host": h} for i, h in self.lost],
        }
