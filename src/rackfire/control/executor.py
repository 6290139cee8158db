"""The executor: runs a Plan's actions, recording each one's intent before its side effect,
and an event for each one's outcome.

Destroys, stops, creates, restarts, resizes, reloads and reconfigures run first, a few side
by side; rolling actions (replaces, surge creates, an operator's restarts) go a batch at a
time (the role's `max_unavailable`, plus its ready surge instances), each waiting for its
instances to pass their check within the role's `health_timeout`, and the rollout stops at
the first that does not (a bad release takes down one batch, or only its surge instance).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby

from rackfire.control.health import HealthMonitor
from rackfire.errors import RackfireError
from rackfire.model.agent import Agent
from rackfire.model.instance import InstanceKey
from rackfire.plan import Action, ActionKind, Plan
from rackfire.store import ActionRecord, Store

log = logging.getLogger("rackfire.executor")
PARALLEL = 4
CONTROLLER = "controller"  # the actor of what the controller does on its own
# Actions that start a run: health starts over, and the restart policy counts them.
STARTS = (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.RECONFIGURE, ActionKind.RESTART)


@dataclass(slots=True)
class Outcome:
    failed: str = ""  # why the plan stopped, for the operator
    held: bool = False  # a rollout waits for an operator: no point retrying soon
    deferred: float | None = None  # a backed-off restart is due then
    released: list[InstanceKey] = field(default_factory=list)  # destroyed for good
    rollout_failed: dict[str, str] = field(default_factory=dict)  # role -> why it stopped


class Executor:
    def __init__(self, store: Store, agent: Agent, health: HealthMonitor) -> None:
        self.store = store
        self.agent = agent
        self.health = health

    def run(self, plan: Plan, clock: Callable[[], float],
            publish: Callable[[set[InstanceKey]], None] | None = None) -> Outcome:
        """`publish(down)` re-points the published ports, leaving out `down`: instances are
        drained before they go down, and a replaced one is back in as soon as it is healthy
        (not when the whole rollout ends)."""
        drain = publish or (lambda _: None)
        out = Outcome()
        due = []
        held = [a.held for a in plan.actions if a.held]
        for action in plan.actions:
            if action.held:
                continue
            if action.not_before is not None and action.not_before > clock():
                out.deferred = min(out.deferred or action.not_before, action.not_before)
            else:
                due.append(action)
        # Independent instances of one kind run side by side; rolling ones go one by one.
        for (kind, rolling), batch in groupby(due, key=_rolls):
            actions = list(batch)
            if rolling:
                for chunk in _batches(actions):
                    drain({a.key for a in chunk})
                    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="action") as pool:
                        errors = list(pool.map(lambda a: self._run_one(plan, a), chunk))
                        if not any(errors):
                            errors = list(pool.map(
                                lambda a: self.health.wait_ready(a.key, a.health_timeout),
                                chunk))
                    for a, error in zip(chunk, errors, strict=True):
                        if error:
                            out.failed = f"{kind} {a.key.name}: {error}; rollout stopped"
                            if kind is ActionKind.REPLACE or kind is ActionKind.CREATE:
                                out.rollout_failed[a.key.role] = out.failed  # a new spec's
                            drain(set())
                            return out
                    drain(set())
                continue
            if kind not in (ActionKind.CREATE, ActionKind.RESIZE, ActionKind.RELOAD):
                drain({a.key for a in actions})
            with ThreadPoolExecutor(PARALLEL, thread_name_prefix="action") as pool:
                errors = list(pool.map(lambda a: self._run_one(plan, a), actions))
            out.released += [a.key for a, e in zip(actions, errors, strict=True)
                             if kind is ActionKind.DESTROY and not e]
            failed = [(a, e) for a, e in zip(actions, errors, strict=True) if e]
            if failed:
                a, e = failed[0]
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                out.failed = f"{a.kind} {a.key.name} failed: {e}{more}"
                return out
        if held:
            out.failed, out.held = f"rollout held: {held[0]}", True
        return out

    def _run_one(self, plan: Plan, action: Action) -> str:
        action_id = uuid.uuid4().hex[:12]
        self.store.record_action(ActionRecord(
            id=action_id, stack=plan.stack, generation=plan.generation, kind=action.kind.value,
            instance=str(action.key), reason=action.reason, state="running",
            created=time.time(), finished=None, error=""))
        log.info("%s %s (%s) [%s]", action.kind, action.key, action.reason, action_id)
        req = replace(action.request, action_id=action_id) if action.request else None
        starts = action.kind in STARTS
        fresh = starts and not action.after_failure
        try:
            if starts:
                self.store.note_restart(action.key, fresh=fresh, new=action.kind in (
                    ActionKind.CREATE, ActionKind.REPLACE))
            if action.kind is ActionKind.DESTROY:
                self.agent.destroy(action.key, action.stop_timeout)
            elif action.kind is ActionKind.STOP:
                self.agent.stop(action.key, action.stop_timeout)
            elif action.kind is ActionKind.FAIL:
                self.store.set_failed(action.key, action.reason)
                self.agent.stop(action.key, action.stop_timeout)
            elif req is None:
                raise RackfireError(f"{action.kind} without a request")
            elif action.kind is ActionKind.CREATE:
                self.agent.create(req)
            elif action.kind is ActionKind.REPLACE:
                self.agent.destroy(action.key, action.stop_timeout)
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
                self.store.note_started(action.key, ok=False)  # the next try backs off
            self.store.finish_action(action_id, "failed", message)
            self.store.add_event(CONTROLLER, plan.stack, str(action.key), action.kind.value,
                                 "failed", f"{action.reason}: {message}")
            return message
        if fresh:
            self.store.note_started(action.key, ok=True)
        self.store.finish_action(action_id, "done")
        self.store.add_event(CONTROLLER, plan.stack, str(action.key), action.kind.value, "ok",
                             action.reason)
        return ""


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
