"""What became of the instances a rollout waits on (store/rollouts.py): each reconcile looks,
from what it observed and the health the monitor recorded, whether each one passed its
check, failed, or is still within its time. Nothing here calls a host or sleeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rackfire.control.health import health_of, ready_timeout
from rackfire.model.instance import Health, InstanceFacts, InstanceKey, InstanceState
from rackfire.model.records import RolloutWait
from rackfire.model.stack import StackSpec
from rackfire.store import InstanceStatus


@dataclass(slots=True)
class Verdict:
    over: list[InstanceKey] = field(default_factory=list)  # passed, failed or gone: forget
    failed: dict[InstanceKey, str] = field(default_factory=dict)  # "replace web-1: why; ..."
    rollout_failed: dict[str, str] = field(default_factory=dict)  # role -> why (a new spec's)
    timed_out: dict[InstanceKey, str] = field(default_factory=dict)  # failing, for the planner
    due: float | None = None  # when the first one still waiting runs out of time


def judge(waits: list[RolloutWait], spec: StackSpec, observed: Mapping[InstanceKey,
          InstanceFacts], statuses: Mapping[InstanceKey, InstanceStatus],
          now: float) -> Verdict:
    roles = {r.name: r for r in spec.roles}
    out = Verdict()
    for w in waits:
        role = roles.get(w.key.role)
        if role is None or w.key.index >= role.count + role.update.max_surge:
            out.over.append(w.key)  # no longer wanted
            continue
        check = role.health
        timeout = ready_timeout(check, w.timeout)
        f = observed.get(w.key)
        why = _why_not(f, statuses.get(w.key), check is not None)
        if why is None:
            out.over.append(w.key)  # passed
            continue
        if not why and now < w.since + timeout:
            out.due = min(out.due or w.since + timeout, w.since + timeout)
            continue  # still starting, in time
        if not why:
            st = statuses.get(w.key)
            why = f"not healthy after {timeout:.0f}s" + (
                f" ({st.message})" if st and st.message else "")
            out.timed_out[w.key] = why
        out.over.append(w.key)
        out.failed[w.key] = f"{w.kind} {w.key.name}: {why}; rollout stopped"
        if w.kind in ("replace", "create"):
            out.rollout_failed.setdefault(w.key.role, out.failed[w.key])
    return out


def _why_not(f: InstanceFacts | None, st: InstanceStatus | None, checked: bool) -> str | None:
    """None if it runs and passes; '' if it may still; else why it failed."""
    if f is None:
        return "it disappeared"
    if f.state is InstanceState.STOPPED:
        return f"it stopped ({f.ended})"
    if f.state is not InstanceState.RUNNING:
        return "it did not start"
    if not checked:
        return None
    health, why = health_of(f, st)
    if health is Health.HEALTHY:
        return None
    if health is Health.UNHEALTHY:  # failing past its grace: no need to wait more
        return f"unhealthy ({why})" if why else "unhealthy"
    return ""
