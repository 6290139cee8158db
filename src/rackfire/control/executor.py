"""The executor: runs a Plan's actions, recording each one's intent before its side effect,
and an event for each one's outcome. It never waits for an instance.

Destroys, stops, creates, restarts, resizes, reloads and reconfigures run first, a few side
by side; rolling actions (replaces, surge creates, an operator's restarts) go a batch at a
time (the role's `max_unavailable`; with 0, one per ready surge instance): one batch a pass. What
the batch made is written down as a *rollout wait* (store/rollouts.py) and the pass ends;
the stack's next reconcile (on the health change, or soon) finds whether it passed its
check within the role's `health_timeout` (control/rollouts.py) and, if so, plans the next
batch. Instances are drained from the published ports before they go down; a drain that
needs a moment to take (a load balancer reloaded) ends the pass too, and the next one runs
the actions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Protocol

from rackfire.control.fleet import Fleet
from rackfire.errors import ExecError, RackfireError
from rackfire.model.agent import ACTION
from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.model.records import REPLICA, ActionState, RolloutWait
from rackfire.model.stack import StackSpec
from rackfire.plan import Action, ActionKind, Plan, StackAction
from rackfire.store import ActionRecord, StateStore

log = logging.getLogger("rackfire.executor")
PARALLEL = 4
CONTROLLER = "controller"  # the actor of what the controller does on its own
# Actions that start a run: health starts over, and the restart policy counts them.
STARTS = (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.RECONFIGURE, ActionKind.RESTART)
# Actions that take an instance out of service: drained from the ports first.
TAKE_DOWN = frozenset({ActionKind.DESTROY, ActionKind.STOP, ActionKind.FAIL, ActionKind.RESTART,
                       ActionKind.RECONFIGURE, ActionKind.REPLACE})
LOOK_AGAIN = 0.5  # a pass that made a batch (or began a drain) looks again this soon


class Ports(Protocol):
    """Where the executor drains instances from before they go down."""

    def drain(self, keys: set[InstanceKey]) -> bool:
        """Leave `keys` out of the ports and names; True once that has taken effect."""
        ...

    def restore(self, keys: set[InstanceKey], *, repoint: bool = True) -> None:
        """`keys` went down (or came back): forget their drain, and with `repoint` point
        the ports at who is ready now."""
        ...


class _NoPorts:
    def drain(self, keys: set[InstanceKey]) -> bool:
        return True

    def restore(self, keys: set[InstanceKey], *, repoint: bool = True) -> None:
        pass


@dataclass(slots=True)
class Outcome:
    failed: str = ""  # why the plan stopped, for the operator
    held: bool = False  # a rollout waits for an operator: no point retrying soon
    deferred: float | None = None  # something is due then: a backed-off restart, a batch
    released: list[InstanceKey] = field(default_factory=list)  # destroyed for good
    rollout_failed: dict[str, str] = field(default_factory=dict)  # role -> why it stopped

    def defer(self, when: float) -> None:
        self.deferred = when if self.deferred is None else min(self.deferred, when)


class Executor:
    def __init__(self, store: StateStore, agent: Fleet, parallel: int = PARALLEL) -> None:
        self.store = store
        self.agent = agent
        self.parallel = parallel  # 1: in plan order (the tests' harness, for determinism)
        self.waits = store.waits

    def run(self, plan: Plan, clock: Callable[[], float], ports: Ports | None = None) -> Outcome:
        ports = ports or _NoPorts()
        out = Outcome()
        due = []
        held = [a.held for a in plan.actions if a.held]
        for action in plan.actions:
            if action.held:
                continue
            if action.not_before is not None and action.not_before > clock():
                out.defer(action.not_before)
            else:
                due.append(action)
        rolled = False
        # Independent instances of one kind run side by side; rolling ones a batch a pass.
        for (kind, rolling), batch in groupby(due, key=_rolls):
            actions = list(batch)
            if rolling and rolled:
                continue  # the next batch, once this one passes its checks
            if rolling:
                actions = _batches(actions)[0]
            down = {a.key for a in actions} if kind in TAKE_DOWN else set()
            if down and not ports.drain(down):
                out.defer(clock() + LOOK_AGAIN)
                return out  # the drain takes a moment: the next pass runs them
            ids = [uuid.uuid4().hex[:12] for _ in actions]
            with ThreadPoolExecutor(self.parallel, thread_name_prefix="action") as pool:
                errors = list(pool.map(lambda a, i: self._run_one(plan, a, i, clock),
                                       actions, ids))
            out.released += [a.key for a, e in zip(actions, errors, strict=True)
                             if kind is ActionKind.DESTROY and not e]
            failed = [(a, e) for a, e in zip(actions, errors, strict=True) if e]
            if rolling:
                rolled = True
                for a, action_id, error in zip(actions, ids, errors, strict=True):
                    if not error:
                        self.waits.put(RolloutWait(a.key, kind.value, action_id, clock(),
                                                   a.health_timeout or 0.0))
                ports.restore(down)
                out.defer(clock() + LOOK_AGAIN)
                if failed:
                    a, e = failed[0]
                    out.failed = f"{kind} {a.key.name}: {e}; rollout stopped"
                    if kind is ActionKind.REPLACE or kind is ActionKind.CREATE:
                        out.rollout_failed[a.key.role] = out.failed  # a new spec's
                    return out
                continue
            ports.restore(down, repoint=False)  # the pass re-points the ports at its end
            if failed:
                a, e = failed[0]
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                out.failed = f"{a.kind} {a.key.name} failed: {e}{more}"
                return out
        if held:
            out.failed, out.held = f"rollout held: {held[0]}", True
        return out

    def _run_one(self, plan: Plan, action: Action, action_id: str,
                 clock: Callable[[], float]) -> str:
        self.store.record_action(ActionRecord(
            id=action_id, stack=plan.stack, generation=plan.generation, kind=action.kind.value,
            instance=str(action.key), reason=action.reason, state=ActionState.RUNNING,
            created=time.time(), finished=None, error=""))
        log.info("%s %s (%s) [%s]", action.kind, action.key, action.reason, action_id)
        req = replace(action.request, action_id=action_id) if action.request else None
        token = ACTION.set(action_id)  # each call to a host is stamped with it
        try:
            return self._carry_out(plan, action, action_id, req, clock)
        finally:
            ACTION.reset(token)

    def _carry_out(self, plan: Plan, action: Action, action_id: str,
                   req: InstanceRequest | None, clock: Callable[[], float]) -> str:
        starts = action.kind in STARTS
        fresh = starts and not action.after_failure
        try:
            if starts:
                # The planner's clock: the restart policy's backoff and window compare
                # these times with its `now`.
                self.store.note_restart(action.key, fresh=fresh, now=clock(),
                                        new=action.kind in (ActionKind.CREATE,
                                                            ActionKind.REPLACE))
            if action.kind is ActionKind.DESTROY:
                self.agent.destroy(action.key, action.stop_timeout)
            elif action.kind is ActionKind.STOP:
                self.agent.stop(action.key, action.stop_timeout)
            elif action.kind is ActionKind.FAIL:
                self.store.set_failed(action.key, action.reason)
                self.agent.stop(action.key, action.stop_timeout)
            elif req is None:
                raise RackfireError(f"{action.kind} without a request")
            elif action.kind is ActionKind.CREATE or action.kind is ActionKind.REPLACE:
                if action.kind is ActionKind.REPLACE:
                    self.agent.destroy(action.key, action.stop_timeout)
                if req.seed is not None:  # a restore or a failover: from copied disks, once
                    stack, snapshot, source = req.seed
                    if snapshot == REPLICA:  # the standby copy of its data disk, here
                        self.agent.stage_replica(action.key, req.resources.disk)
                    else:
                        self.agent.stage_snapshot(action.key, stack, snapshot, source)
                    self.agent.create(replace(req, adopt_disks=True, seed=None))
                    self.store.snapshots.reap(action.key)
                    if snapshot == REPLICA:  # its standby copy is its data disk now
                        self.agent.drop_replica(action.key)
                else:
                    self.agent.create(req)
            elif action.kind is ActionKind.RECONFIGURE:
                self.agent.reconfigure(req)
            elif action.kind is ActionKind.RESTART:
                self.agent.restart(req)
            elif action.kind is ActionKind.RESIZE:
                self.agent.resize(req)
            elif action.kind is ActionKind.RELOAD:
                self.agent.reload(req)
        except Exception as e:  # any failure is the action's, recorded; the loop goes on
            message = e.message if isinstance(e, RackfireError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, RackfireError):
                log.exception("%s %s crashed", action.kind, action.key)
            if fresh:
                self.store.note_started(action.key, ok=False, now=clock())  # next: backs off
            self.store.finish_action(action_id, ActionState.FAILED, message)
            self.store.add_event(CONTROLLER, plan.stack, str(action.key), action.kind.value,
                                 "failed", f"{action.reason}: {message}")
            return message
        if fresh:
            self.store.note_started(action.key, ok=True, now=clock())
        self.store.finish_action(action_id, ActionState.DONE)
        self.store.add_event(CONTROLLER, plan.stack, str(action.key), action.kind.value, "ok",
                             action.reason)
        return ""


    def build(self, plan: Plan, spec: StackSpec, step: StackAction) -> str:
        """Run one of the plan's builds (BUILD_IMAGE, BUILD_RELEASE), journalled and an
        event as any action (target: `image/<name>`, `<stack>/<role>`): the digest it made.
        A failure is journalled, then raised (as a RackfireError). Builds go one at a time:
        they share the image store, and a release needs its image's digest."""
        action_id = uuid.uuid4().hex[:12]
        self.store.record_action(ActionRecord(
            id=action_id, stack=plan.stack, generation=plan.generation, kind=step.kind.value,
            instance=step.subject, reason=step.reason, state=ActionState.RUNNING,
            created=time.time(), finished=None, error=""))
        log.info("%s %s (%s) [%s]", step.kind, step.subject, step.reason, action_id)
        token = ACTION.set(action_id)
        try:
            if step.kind is ActionKind.BUILD_IMAGE:
                digest = self.agent.images.ensure_image(spec.image(step.image)).digest
            elif step.kind is ActionKind.BUILD_RELEASE:
                digest = self.agent.images.ensure_release(step.source, step.image).digest
            else:
                raise RackfireError(f"{step.kind} is not a build")
        except Exception as e:  # the build's failure, recorded; the reconcile decides
            message = e.message if isinstance(e, RackfireError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, RackfireError):
                log.exception("%s %s crashed", step.kind, step.subject)
            self.store.finish_action(action_id, ActionState.FAILED, message)
            self.store.add_event(CONTROLLER, plan.stack, step.subject, step.kind.value,
                                 "failed", f"{step.reason}: {message}")
            if isinstance(e, RackfireError):
                raise
            raise ExecError(message) from e
        finally:
            ACTION.reset(token)
        self.store.finish_action(action_id, ActionState.DONE)
        self.store.add_event(CONTROLLER, plan.stack, step.subject, step.kind.value, "ok",
                             step.reason)
        return digest


def _batches(actions: list[Action]) -> list[list[Action]]:
    """Consecutive rolling actions of one role, `batch` at a time."""
    out: list[list[Action]] = []
    for _, group in groupby(actions, key=lambda a: a.key.role):
        items = list(group)
        size = max(1, items[0].batch)
        out += [items[i:i + size] for i in range(0, len(items), size)]
    return out


def _rolls(action: Action) -> tuple[ActionKind, bool]:
    return action.kind, action.rolling or action.kind is ActionKind.REPLACE
