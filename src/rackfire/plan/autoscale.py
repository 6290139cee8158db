"""Per-role autoscaling: how many instances a role wants, from one sample of its metric.

Pure: the controller gathers the metric, tells which schedule windows are active, keeps the
History between calls and acts on the Decision. The rule is the Kubernetes HPA's:

- recommendation = ceil(base * metric / target), base = the ready instances (the current
  count when none is ready yet; from zero instances any load asks for ceil(metric / target));
- within the tolerance band (|metric / target - 1| <= tolerance) it is the current count, and
  it never points against the metric (above target never asks fewer than current, below
  target never more), as instances still starting or draining can make `ready` differ;
- the proposal is the recommendation clamped to [min_now, max], min_now being min raised by
  the active schedule windows; History keeps the proposals of the last `cooldown` seconds;
- scale out at once, to the proposal; scale in only to the highest proposal of the window
  (HPA's downscale stabilisation), so a dip shorter than the cooldown never scales in, and
  the end of a schedule window lowers the count only a cooldown later; an empty History
  (the controller started) counts the current count as a proposal, so a restart never
  scales in at once;
- an unknown metric holds the current count (clamped to bounds) and is recorded as such, so
  a gap in the metrics never shortens the wait before a scale in.

Metric units, the same as the Target's: cpu and memory in percent (cpu of one core unless the
role has a cpu limit, then of its limit; memory of the role's memory limit), the average over
the ready instances; requests_per_instance in requests per second per ready instance;
latency_p95 in seconds for the role as a whole (scaled on proportionally, as the HPA does an
object metric: a rough model, latency is not linear in instances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rackfire.model.stack import ScalePolicy, ScaleTarget, TargetKind, scale_problems

DEFAULT_COOLDOWN = 120.0  # seconds
DEFAULT_TOLERANCE = 0.1

Value = float | int | str
Values = tuple[tuple[str, Value], ...]


# The policy is the stack file's (model/stack.py), under the names decide() speaks of.
Policy = ScalePolicy
Target = ScaleTarget


@dataclass(frozen=True, slots=True)
class Sample:
    """One gathering: `at` epoch seconds, `ready` instances serving, `metric` in the target's
    unit (None: unknown), `detail` more values for the event (e.g. per-instance cpu)."""

    at: float
    ready: int
    metric: float | None
    detail: Values = ()


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    current: int
    wanted: int
    recommendation: int  # what the metric alone asks (current when unknown or in tolerance)
    min_now: int  # min raised by the active schedule windows
    reason: str
    metric: float | None
    target: float | None
    values: Values  # what caused it, for the event
    changed: bool


@dataclass(frozen=True, slots=True)
class History:
    """The proposals (at, count) of the last cooldown window, oldest first. The caller keeps
    it between calls, one per role; decide() returns the next."""

    entries: tuple[tuple[float, int], ...] = ()

    def add(self, at: float, count: int, window: float) -> History:
        """With (at, count), without what is `window` seconds old or older. An entry later
        than `at` (the clock stepped back) is restamped `at`: kept one more window, so a
        clock step can delay a scale in but never hasten one."""
        kept = tuple((min(t, at), c) for t, c in self.entries if t > at - window)
        return History((*kept, (at, count)))


def _num(x: float) -> str:
    """94.0 -> "94", 93.75 -> "93.8", 0.25 -> "0.25": what a reason needs, no more."""
    if abs(x) >= 10:
        return f"{x:.1f}".removesuffix(".0")
    return f"{x:.2f}".rstrip("0").removesuffix(".")


def _duration(seconds: float) -> str:
    """120 -> "2m", 90 -> "1m30s", 47 -> "47s", 3600 -> "1h"; rounded up to the second."""
    s = math.ceil(seconds - 1e-9)
    if s < 60:
        return f"{s}s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n)


def amount(kind: TargetKind, x: float) -> str:
    if kind in (TargetKind.CPU, TargetKind.MEMORY):
        return f"{_num(x)}%"
    if kind is TargetKind.REQUESTS_PER_INSTANCE:
        return f"{_num(x)}/s"
    return f"{_num(x * 1000)}ms" if x < 1 else f"{_num(x)}s"


def _label(kind: TargetKind) -> str:
    return {TargetKind.CPU: "cpu", TargetKind.MEMORY: "memory",
            TargetKind.REQUESTS_PER_INSTANCE: "requests",
            TargetKind.LATENCY_P95: "latency p95"}[kind]


def _recommend(policy: Policy, current: int, sample: Sample) -> tuple[int, str]:
    """What the metric alone asks, and the reason's first half."""
    target = policy.target
    if target is None:
        return policy.min, "schedule only"
    if sample.metric is None or not math.isfinite(sample.metric):
        return current, f"no metric ({_label(target.kind)} unknown)"
    if not target.value > 0:  # validate() refuses it; never divide by it
        return current, f"target {target.value:g} is not above 0"
    kind, metric = target.kind, sample.metric
    per = " per instance" if kind is TargetKind.REQUESTS_PER_INSTANCE else ""
    said = f"{_label(kind)} {amount(kind, metric)}{per}"
    aim = amount(kind, target.value)
    ratio = metric / target.value
    if abs(ratio - 1) <= policy.tolerance:
        return current, f"{said} within {_num(policy.tolerance * 100)}% of target {aim}"
    base = sample.ready if sample.ready > 0 else current
    on = f"on {sample.ready} ready" if sample.ready > 0 else f"none ready, on {current}"
    if base == 0:
        return math.ceil(round(ratio, 9)), f"{said} for target {aim} on none"
    # round(): 3 * 0.7 / 0.35 must be 6, not 7
    rec = math.ceil(round(base * ratio, 9))
    if ratio > 1:
        return max(rec, current), f"{said} of target {aim} {on}"
    return min(rec, current), f"{said} below target {aim} {on}"


def decide(policy: Policy, current: int, sample: Sample, history: History,
           active_min: int | None) -> tuple[Decision, History]:
    """The count the role wants now, and the History to pass next time. `current`: the
    count the role has now (its instances, ready or not); `active_min`: the highest min of
    the schedule windows active at `sample.at` (None: none)."""
    hi = policy.max
    min_now = min(max(policy.min, active_min or 0), hi)
    rec, said = _recommend(policy, current, sample)
    proposal = min(max(rec, min_now), hi)
    if not history.entries:  # a controller (re)started: as HPA, count the current as one
        history = History(((sample.at, min(current, hi)),))
    history = history.add(sample.at, proposal, policy.cooldown)
    # HPA's stabilisation: up to the proposal at once, down only to the window's highest
    top = max(c for _, c in history.entries)  # the proposal is one of them
    wanted = min(max(min(current, top), proposal), hi)

    bounds = ""
    if wanted == hi and rec > hi and rec != current:
        bounds = f" (max {hi}; the metric asks {rec})"
    elif wanted == hi and (current > hi or rec > hi):
        bounds = f" (max {hi})"
    elif wanted == min_now and rec < min_now:
        bounds = f" (schedule min {min_now})" if min_now > policy.min else f" (min {min_now})"
    if wanted > current:
        action = f"{current} → {wanted}{bounds}"
    elif wanted < current:
        if wanted > proposal:
            left = _until_below(history, proposal + 1, sample.at, policy.cooldown)
            action = (f"{current} → {wanted}, the highest recommendation of the last "
                      f"{_duration(policy.cooldown)}; {proposal} in another {_duration(left)}")
        elif bounds:
            action = f"{current} → {wanted}{bounds}"
        else:
            action = (f"{current} → {wanted} (no higher recommendation in the last "
                      f"{_duration(policy.cooldown)})")
    elif proposal < current:
        left = _until_below(history, current, sample.at, policy.cooldown)
        action = (f"wants {proposal}, holding {current} for another {_duration(left)} "
                  f"(cooldown {_duration(policy.cooldown)} after a recommendation of "
                  f"{current} or more)")
    else:
        action = f"holding {current}{bounds}"

    target = policy.target.value if policy.target else None
    values: Values = (
        ("current", current), ("ready", sample.ready), ("recommendation", rec),
        ("min_now", min_now), ("max", hi), ("wanted", wanted),
        *((("metric", sample.metric),) if sample.metric is not None else ()),
        *((("target", target),) if target is not None else ()),
        *sample.detail)
    decision = Decision(at=sample.at, current=current, wanted=wanted, recommendation=rec,
                        min_now=min_now, reason=f"{said}: {action}", metric=sample.metric,
                        target=target, values=values, changed=wanted != current)
    return decision, history


def _until_below(history: History, level: int, now: float, window: float) -> float:
    """Seconds until no proposal of `level` or more is left in the window."""
    last = max((t for t, c in history.entries if c >= level), default=now - window)
    return max(last + window - now, 0.0)


validate = scale_problems  # the stack file's rules (spec/schema.py asks them too)
