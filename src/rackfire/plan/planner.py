"""plan_stack: desired instances + observed facts -> the actions that converge them. Pure.

Buckets, as Nomad's reconciler sorts allocations: observed-but-not-desired is destroyed
(highest index first), desired-but-missing is created, half-made is replaced, stopped is
restarted (with backoff), a changed image/command/resources/env is replaced one at a time,
and changed rendered files are reconfigured in place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, InstanceState
from rackfire.plan.actions import EXECUTION_ORDER, Action, ActionKind, Plan

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True, slots=True)
class RestartRecord:
    count: int  # restarts in a row without a healthy period in between
    last: float  # when the last restart ran


def restart_backoff(count: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, count - 1)) if count else 0.0


def plan_stack(
    stack: str,
    generation: int,
    role_counts: Mapping[str, int] | None,
    desired: Sequence[InstanceRequest],
    observed: Iterable[InstanceFacts],
    restarts: Mapping[InstanceKey, RestartRecord],
    now: float,
    failing: Collection[InstanceKey] = (),
) -> Plan:
    """`role_counts` is None when the stack is being destroyed. `failing` are the instances
    that stopped or fail their check: a rollout does not go past one already on the new spec
    that fails, so a bad release stops at its first instance and stays stopped."""
    want = {d.key: d for d in desired}
    have = {f.key: f for f in observed if f.key.stack == stack}
    actions: list[Action] = []

    for key in sorted(have.keys() - want.keys(), key=lambda k: (k.role, -k.index)):
        actions.append(Action(ActionKind.DESTROY, key, _destroy_reason(key, role_counts)))

    for key in sorted(want.keys() - have.keys()):
        actions.append(Action(ActionKind.CREATE, key, "new instance", want[key]))

    for key in sorted(want.keys() & have.keys()):
        action = _compare(want[key], have[key], restarts.get(key), now)
        if action is not None:
            actions.append(action)

    stuck = {k.role: k.name for k in sorted(failing, reverse=True)
             if k in want and k in have and have[k].spec_hash == want[k].spec_hash
             and have[k].state is not InstanceState.PARTIAL}
    actions = [
        replace(a, held=f"{stuck[a.key.role]}, already on the new spec, is failing")
        if a.kind is ActionKind.REPLACE and a.key.role in stuck else a
        for a in actions
    ]
    actions.sort(key=lambda a: EXECUTION_ORDER[a.kind])  # stable: keeps the per-kind order
    return Plan(stack, generation, tuple(actions))


def _compare(
    d: InstanceRequest, f: InstanceFacts, restart: RestartRecord | None, now: float
) -> Action | None:
    if f.state is InstanceState.PARTIAL:
        return Action(ActionKind.REPLACE, d.key, "an interrupted create left it half-made",
                      d)
    if f.spec_hash != d.spec_hash:
        was = dict(f.spec_fields)
        changed = [name for name, h in d.spec_fields if was.get(name) != h]
        return Action(ActionKind.REPLACE, d.key, f"{', '.join(changed) or 'spec'} changed",
                      d)
    if f.config_hash != d.config_hash:
        # A stopped one starts with the new config in the same step.
        return Action(ActionKind.RECONFIGURE, d.key, "rendered files changed", d)
    if f.state is InstanceState.STOPPED:
        why = "OOM-killed" if f.oom_killed else (
            f"exited with code {f.exit_code}" if f.exit_code is not None else "stopped")
        not_before = None
        if restart is not None:
            wait = restart_backoff(restart.count)
            if restart.last + wait > now:
                not_before = restart.last + wait
        return Action(ActionKind.RESTART, d.key, why, d, not_before)
    return None


def _destroy_reason(key: InstanceKey, counts: Mapping[str, int] | None) -> str:
    if counts is None:
        return "stack destroyed"
    if key.role not in counts:
        return f"role {key.role} removed"
    return f"count is {counts[key.role]}"
