"""plan_stack: desired instances + observed facts -> the actions that converge them. Pure.

Buckets, as Nomad's reconciler sorts allocations: observed-but-not-desired is destroyed
(highest index first), desired-but-missing is created, half-made is replaced, stopped or
unhealthy is restarted (with backoff, until the role's restart policy gives up and fails
it), a changed image/command/env/app/runtime is replaced by the role's update policy (surge
instances first, then batches of `max_unavailable`; roles in `uses` order), changed resources
are resized live, and changed rendered files are reloaded or reconfigured in place. What the
operator asked for (`stop`, `restart`) is honoured per instance.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from rackfire.model.instance import (
    Control,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
)
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RestartPolicy, RoleSpec, StackSpec
from rackfire.model.units import format_duration, format_size
from rackfire.model.units import show_value as _show
from rackfire.plan.actions import EXECUTION_ORDER, Action, ActionKind, Plan
from rackfire.plan.render import max_unavailable

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
WAIT_FOR_STARTING = 1.0  # a rollout behind a starting instance looks again this soon
_LIVE_FIELDS = {"resources", "logs"}  # spec fields a resize applies to a running instance


def restart_backoff(count: int) -> float:
    """Wait before the next restart, after `count` recent failures: 0, 1, 2, 4 ... 60 s."""
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, count - 1)) if count else 0.0


def plan_stack(
    stack: str,
    generation: int,
    spec: StackSpec | None,
    desired: Sequence[InstanceRequest],
    observed: Iterable[InstanceFacts],
    controls: Mapping[InstanceKey, Control],
    now: float,
    unhealthy: Mapping[InstanceKey, str] | None = None,
    starting: Collection[InstanceKey] = (),
    lost: Mapping[InstanceKey, str] | None = None,
    gated: Mapping[str, str] | None = None,
) -> Plan:
    """`spec` is None when the stack is being destroyed. `unhealthy` are the running
    instances that fail their check (past the grace period), and why; `starting` those that
    have not passed it yet. A rollout does not go past an instance already on the new spec
    that fails (held: a bad release stops at its first instance and stays stopped), and
    waits for one that is still starting. `gated`: roles whose rollout waits for
    something else (a release's `before` task), and for what."""
    unhealthy = unhealthy or {}
    # Lost: on a host whose lease lapsed. Nothing is known of them, so nothing is done to
    # them here; they are reported (restarting them elsewhere needs fencing: issue 15).
    lost = {k: h for k, h in (lost or {}).items() if k.stack == stack}
    want = {d.key: d for d in desired if not d.surge and not d.warm and d.key not in lost}
    have = {f.key: f for f in observed if f.key.stack == stack and f.key not in lost}
    roles = {r.name: r for r in spec.roles} if spec else {}
    actions: list[Action] = []

    for key in sorted(want.keys() & have.keys()):
        action = _compare(want[key], have[key], roles[key.role], controls.get(key, Control()),
                          unhealthy.get(key), now)
        if action is not None:
            actions.append(action)
    # While a role rolls to a new spec, its surge instances run that spec beside the old.
    rolling_roles = {a.key.role for a in actions
                     if a.kind is ActionKind.REPLACE and have[a.key].state
                     is not InstanceState.PARTIAL}
    # (An index an operator stopped, left from a scale-down, is not taken for a surge.)
    surge = {d.key: d for d in desired if d.surge and d.key.role in rolling_roles
             and not controls.get(d.key, Control()).stopped}
    want |= surge
    for key in sorted(surge.keys() & have.keys()):
        action = _compare(surge[key], have[key], roles[key.role],
                          controls.get(key, Control()), unhealthy.get(key), now)
        if action is not None:
            actions.append(replace(action, reason=f"surge instance: {action.reason}"))
    # A scaled role's warm instances (those a rollout does not take for its surge).
    warm = {d.key: d for d in desired if d.warm and d.key not in surge and d.key not in lost}
    want |= warm
    for key in sorted(warm.keys() & have.keys()):
        action = _keep_warm(warm[key], have[key], roles[key.role])
        if action is not None:
            actions.append(action)

    # A rollout's surge instances serve until the instances that replaced the old ones are
    # ready: destroyed while one still starts, the role would be short of them meanwhile.
    still_starting = {k.role for k in starting if k in want}
    for key in sorted(have.keys() - want.keys(), key=lambda k: (k.role, -k.index)):
        role = roles.get(key.role)
        action = Action(ActionKind.DESTROY, key, _destroy_reason(key, spec),
                        stop_timeout=role.stop_timeout if role else DEFAULT_STOP_TIMEOUT)
        if role is not None and key.role in still_starting \
                and key.index < role.count + role.update.max_surge:
            action = replace(action, not_before=now + WAIT_FOR_STARTING)
        actions.append(action)

    for key in sorted(want.keys() - have.keys()):
        if key in surge:
            actions.append(Action(ActionKind.CREATE, key, "surge instance for the rollout",
                                  surge[key], rolling=True))
        elif key.run is not None:
            actions.append(Action(ActionKind.CREATE, key, f"run #{key.run}", want[key]))
        elif key in warm:
            actions.append(Action(ActionKind.CREATE, key, "warm instance: made, not started",
                                  want[key]))
        elif not controls.get(key, Control()).stopped:  # stopped by an operator: on start
            actions.append(Action(ActionKind.CREATE, key, "new instance", want[key]))

    # A rollout (replaces, an operator's restart) goes a batch at a time: behind one that is
    # done but failing it is held, behind one done but still starting it waits.
    def done(k: InstanceKey) -> str:
        """How `k` is already through the rollout ('' if it is not)."""
        f, c = have.get(k), controls.get(k, Control())
        if f is None or k not in want or f.state is InstanceState.PARTIAL or c.stopped \
                or k.run is not None or k in warm:  # (not a failed rollout: they stop)
            return ""
        if c.restart_requested is not None and (f.started_at or 0.0) >= c.restart_requested:
            return "restarted"
        return ("on the new spec" if f.spec_hash == want[k].spec_hash and not want[k].seed
                else "")

    def first_done(keys: Iterable[InstanceKey]) -> dict[str, str]:
        return {k.role: f"{k.name}, already {done(k)}" for k in sorted(keys, reverse=True)
                if done(k)}

    stuck = first_done([k for k, f in have.items() if f.state is not InstanceState.RUNNING]
                       + list(unhealthy))
    waiting = first_done(starting) | {r: why for r, why in (gated or {}).items() if r in roles}
    # Roles roll in dependency order: one waits while a role it uses is still rolling (has
    # rolling actions, or instances past its count: surge ones, or ones on their way out).
    extra = {k.role for k in have if k.role in roles and k.index >= roles[k.role].count
             and k.run is None and k not in warm}
    unsettled = rolling_roles | extra | {a.key.role for a in actions if a.rolling}
    for name, role in roles.items():
        behind = sorted(role.uses_closure(roles) & unsettled)
        if behind and name not in waiting:
            waiting[name] = f"role {behind[0]}, still rolling"
    ready_surge = {r: sum(1 for k in surge if k.role == r and done(k) and k in have
                          and have[k].state is InstanceState.RUNNING
                          and k not in unhealthy and k not in starting) for r in roles}
    actions = [_hold(a, stuck, waiting, now, roles.get(a.key.role), ready_surge)
               if a.rolling or (a.kind is ActionKind.REPLACE
                                and have[a.key].state is not InstanceState.PARTIAL)
               else a for a in actions]
    # A spike's warm starts go before the creates it also asks for (the executor runs one
    # kind at a time): they are its fast path.
    actions.sort(key=lambda a: (not a.warm, EXECUTION_ORDER[a.kind], _role_order(a, roles)))
    return Plan(stack, generation, tuple(actions),
                lost=tuple((str(k), h) for k, h in sorted(lost.items())))


def _role_order(a: Action, roles: Mapping[str, RoleSpec]) -> int:
    """Rolling actions go in dependency order: a role after the roles it uses."""
    role = roles.get(a.key.role)
    return len(role.uses_closure(dict(roles))) if role and (
        a.rolling or a.kind is ActionKind.REPLACE) else 0


def _hold(a: Action, stuck: Mapping[str, str], waiting: Mapping[str, str], now: float,
          role: RoleSpec | None, ready_surge: Mapping[str, int]) -> Action:
    """A rolling action behind an instance that is done but fails is held; behind one that
    is still starting (or a role it uses that is still rolling), it waits a moment (and is
    not a failure). Replaces go `max_unavailable` at a time, plus one per surge instance
    that is ready; with max_unavailable 0 they wait for a ready surge instance."""
    if a.key.role in stuck:
        return replace(a, held=f"{stuck[a.key.role]}, is failing")
    if role is not None:
        a = replace(a, health_timeout=role.update.health_timeout)
    if a.key.role in waiting:
        return replace(a, not_before=max(a.not_before or 0.0, now + WAIT_FOR_STARTING))
    if role is None or a.kind is not ActionKind.REPLACE:
        return a
    # A ready surge instance lets a role with max_unavailable 0 go on; it does not widen a
    # batch past max_unavailable: a load balancer's old workers still send a while to what
    # a batch takes down, and with two of three down at once a request found none.
    batch = max_unavailable(role) or ready_surge.get(role.name, 0)
    if batch == 0:
        return replace(a, not_before=max(a.not_before or 0.0, now + WAIT_FOR_STARTING))
    return replace(a, batch=batch)


def _compare(d: InstanceRequest, f: InstanceFacts, role: RoleSpec, c: Control,
             unhealthy: str | None, now: float) -> Action | None:
    if d.key.run is not None:
        # A run is made once and never restarted, replaced or reloaded: however it ends
        # (half-made included: it may have started), control/jobs.py records it.
        return None
    timeout = role.stop_timeout
    if c.stopped:  # kept as it is, new spec included, until an operator starts it
        if f.state is InstanceState.RUNNING:
            return Action(ActionKind.STOP, d.key, "stopped by an operator",
                          stop_timeout=timeout)
        return None
    if f.state is InstanceState.PARTIAL:
        if c.failed:
            return None
        # A create that keeps failing backs off and is failed like a crashing instance.
        return _recover(ActionKind.REPLACE, d, "an interrupted or failed create left it "
                        "half-made", role.restart, c, now, timeout)
    if d.seed is not None:  # a restore: its disks go back to the snapshot's
        return Action(ActionKind.REPLACE, d.key, f"restore from {d.seed[0]}@{d.seed[1]}", d,
                      stop_timeout=timeout)
    changed = _changed_fields(d, f)
    if changed and not set(changed) <= _LIVE_FIELDS:
        return Action(ActionKind.REPLACE, d.key, f"{', '.join(changed)} changed", d,
                      stop_timeout=timeout)
    if f.config_hash != d.config_hash:
        if reloadable(d, f) and not c.failed:
            return Action(ActionKind.RELOAD, d.key, "rendered files changed", d)
        # A stopped (or failed) one starts afresh with the new config in the same step.
        return Action(ActionKind.RECONFIGURE, d.key, "rendered files changed", d,
                      stop_timeout=timeout)
    if c.failed:  # the policy gave up; a new spec or config, or an operator, starts it afresh
        if f.state is InstanceState.RUNNING:
            return Action(ActionKind.STOP, d.key, f"failed: {c.failed}", stop_timeout=timeout)
        return None
    if changed:
        return Action(ActionKind.RESIZE, d.key, _resize_reason(d, f), d)
    if c.restart_requested is not None and (f.started_at or 0.0) < c.restart_requested:
        running = f.state is InstanceState.RUNNING
        action = Action(ActionKind.RESTART, d.key, "restart requested", d, rolling=running,
                        stop_timeout=timeout)
        return replace(action, not_before=_backoff(c, role.restart, now))
    if f.state is InstanceState.STOPPED and f.warm and not c.failed:
        # Made warm (disk, network, config ready): a scale-out only starts it.
        return Action(ActionKind.RESTART, d.key, "a warm instance, started", d,
                      stop_timeout=timeout, warm=True)
    if f.state is InstanceState.STOPPED or unhealthy is not None:
        if f.state is InstanceState.STOPPED:
            why = f.ended
        else:
            why = f"unhealthy: {unhealthy}" if unhealthy else "unhealthy"
        return _recover(ActionKind.RESTART, d, why, role.restart, c, now, timeout)
    return None


def _keep_warm(d: InstanceRequest, f: InstanceFacts, role: RoleSpec) -> Action | None:
    """A warm instance stays made and stopped, on the role's current spec and config."""
    timeout = role.stop_timeout
    if f.state is InstanceState.PARTIAL:
        return Action(ActionKind.REPLACE, d.key, "warm instance: half-made", d,
                      stop_timeout=timeout)
    changed = _changed_fields(d, f)
    if changed and not set(changed) <= _LIVE_FIELDS:
        return Action(ActionKind.REPLACE, d.key, f"warm instance: {', '.join(changed)} "
                      "changed", d, stop_timeout=timeout)
    if f.config_hash != d.config_hash:
        return Action(ActionKind.RECONFIGURE, d.key, "warm instance: rendered files changed",
                      d, stop_timeout=timeout)
    if f.state is InstanceState.RUNNING or not f.warm:
        # (stopped and started again with a warm request, which it stays stopped for)
        return Action(ActionKind.RESTART, d.key, "kept warm: stopped, ready to start", d,
                      stop_timeout=timeout)
    return None


def reloadable(d: InstanceRequest, f: InstanceFacts) -> bool:
    """New file contents can reach `f` in place: its role reloads, it runs the same spec
    and has the same files (a new or removed path needs a reconfigure)."""
    return (d.reload is not None and f.state is InstanceState.RUNNING
            and f.spec_hash == d.spec_hash and f.config_hash != d.config_hash
            and bool(f.files_layout) and f.files_layout == d.files_layout)


def _recover(kind: ActionKind, d: InstanceRequest, why: str, policy: RestartPolicy,
             c: Control, now: float, stop_timeout: float) -> Action:
    """Start a failing instance again after a backoff, or give up on it."""
    recent = _recent(c, policy, now)
    if len(recent) >= policy.attempts:
        return Action(ActionKind.FAIL, d.key,
                      f"{why}; restarted {len(recent)} times in "
                      f"{format_duration(policy.window)}", stop_timeout=stop_timeout)
    return Action(kind, d.key, why, d, _backoff(c, policy, now), after_failure=True,
                  stop_timeout=stop_timeout)


def _recent(c: Control, policy: RestartPolicy, now: float) -> list[float]:
    return [t for t in c.failures if t > now - policy.window]


def _backoff(c: Control, policy: RestartPolicy, now: float) -> float | None:
    """When the next start may run: after `restart_backoff` since the last failure."""
    recent = _recent(c, policy, now)
    if not recent:
        return None
    due = recent[-1] + restart_backoff(len(recent))
    return due if due > now else None


def _changed_fields(d: InstanceRequest, f: InstanceFacts) -> list[str]:
    if f.spec_hash == d.spec_hash:
        return []
    was, now = dict(f.spec_fields), dict(d.spec_fields)
    changed = [name for name, h in d.spec_fields if was.get(name) != h]
    # A field set before and left out now (`logs` back to its default) changed too.
    return changed + [name for name in was if name not in now] or ["spec"]


def _resize_reason(d: InstanceRequest, f: InstanceFacts) -> str:
    if "resources" not in _changed_fields(d, f):
        limits = d.logs
        return (f"log limits changed: {format_size(limits.max_size)} x {limits.max_files} "
                "files")
    old, new = f.resources, d.resources
    if old is None:  # made before rackfire recorded resources: the agent applies them all
        return "resources changed"
    parts = [f"{name} {_show(name, getattr(old, name))} → {_show(name, getattr(new, name))}"
             for name in ("cpu", "memory", "disk", "pids")
             if getattr(old, name) != getattr(new, name)]
    return ", ".join(parts) or "data disk size changed"




def _destroy_reason(key: InstanceKey, spec: StackSpec | None) -> str:
    if spec is None:
        return "stack destroyed"
    counts = {r.name: r.count for r in spec.roles}
    if key.role not in counts:
        return f"role {key.role} removed"
    if key.run is not None:
        return f"run #{key.run} is over"
    return f"count is {counts[key.role]}"
