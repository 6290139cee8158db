"""Autoscaling: every EVERY seconds, for each role with `scale:`, gather its metric, ask the
pure decider (plan/autoscale.py) what count it wants, and set it as `scale` does (an
override, with actor `autoscaler`: `plan -f` notes it), the decision's reason and values in
the event. Scale out at once, in after the cooldown; the schedule's windows raise `min`.

Metrics: cpu and memory from the agents' stats of the role's ready instances (averaged);
requests per instance, queue and response time from the HAProxy in front of the role (its
stats page, read from inside each ready instance of the `via` role, two readings apart:
plan/haproxy_stats.py). A metric that cannot be read is unknown: the count holds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rackfire.control.commands import Commands
from rackfire.control.desired import ReadyKeys
from rackfire.control.fleet import Fleet
from rackfire.errors import RackfireError
from rackfire.model import cron
from rackfire.model.instance import InstanceFacts, InstanceKey
from rackfire.model.stack import RoleSpec, ScalePolicy, StackSpec, TargetKind
from rackfire.plan import haproxy_stats
from rackfire.plan.autoscale import Decision, History, Sample, decide
from rackfire.store import StateStore

log = logging.getLogger("rackfire.autoscale")

# Seconds between decisions (the HPA's is 15 s; `bench autoscale` sets 15 to compare). A
# request rate is the HAProxy counters' difference over this interval: a spike that starts
# within one is seen whole at the next, so the reaction takes one to two of them.
def _every() -> float:
    try:
        return max(0.5, float(os.environ.get("RACKFIRE_AUTOSCALE_EVERY", "1")))
    except ValueError:
        return 1.0


EVERY = _every()
AUTOSCALER = "autoscaler"
LOOKBACK = 8 * 86400  # how far back a schedule window's last slot is looked for
Detail = tuple[str, float | int | str]


@dataclass(slots=True)
class RoleState:
    history: History = field(default_factory=History)
    last: Decision | None = None
    stats: dict[InstanceKey, tuple[float, haproxy_stats.Snapshot]] = field(
        default_factory=dict)
    fired: dict[str, int] = field(default_factory=dict)  # window cron -> its last slot
    error: str = ""  # why the metric is unknown


class Autoscaler:
    def __init__(self, store: StateStore, fleet: Fleet, commands: Commands,
                 clock: Callable[[], float],
                 ready_keys: ReadyKeys) -> None:
        self.store, self.fleet, self.commands, self.clock = store, fleet, commands, clock
        self.ready_keys = ready_keys
        self.roles: dict[tuple[str, str], RoleState] = {}
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(EVERY):
            try:
                self.tick()
            except Exception:  # one bad look must not end autoscaling
                log.exception("autoscaling failed; looking again")

    def tick(self) -> None:
        with self._lock:
            for rec in self.store.stacks():
                if rec.deleting:
                    continue
                for role in rec.spec.roles:
                    if role.scale is not None:
                        self._decide(rec.spec, role, role.scale)

    def state(self, stack: str, role: str) -> RoleState:
        return self.roles.setdefault((stack, role), RoleState())

    def _decide(self, spec: StackSpec, role: RoleSpec, policy: ScalePolicy) -> None:
        st = self.state(spec.name, role.name)
        now = self.clock()
        sample = self._sample(spec, role, policy, st, now)
        decision, st.history = decide(policy, role.count, sample, st.history,
                                      self._window_min(policy, st, now))
        st.last = decision
        if not decision.changed:
            return
        try:
            self.commands.change(spec.name, role.name, {"count": decision.wanted}, AUTOSCALER,
                                 "autoscale", what=_what(decision))
        except RackfireError as e:  # refused (no room on the hosts): said, and tried again
            st.last = replace(decision, changed=False,
                              reason=f"{decision.reason}; refused: {e.message}")

    def _window_min(self, policy: ScalePolicy, st: RoleState, now: float) -> int | None:
        """The highest least count of the windows open now (None: none is)."""
        open_mins = []
        for text, low, span in policy.windows:
            expr = cron.parse(text)
            last = st.fired.get(text)
            if last is None:
                found = expr.slots(int(now) - LOOKBACK, int(now), 1_000_000)
                last = found[-1] if found else int(now) - LOOKBACK
            while (nxt := expr.next_after(last)) <= now:
                last = nxt
            st.fired[text] = last
            if now - last < span:
                open_mins.append(low)
        return max(open_mins, default=None)

    def _sample(self, spec: StackSpec, role: RoleSpec, policy: ScalePolicy, st: RoleState,
                now: float) -> Sample:
        observed = [f for f in self.fleet.observe(spec.name) if f.key.run is None]
        ready = sorted(k for k in self.ready_keys(spec, observed) if k.role == role.name
                       and k.index < role.count)
        target = policy.target
        metric: float | None = None
        detail: list[Detail] = []
        st.error = ""
        try:
            if target is None:
                pass
            elif target.kind in (TargetKind.CPU, TargetKind.MEMORY):
                metric = self._usage(spec, role, target.kind, set(ready))
            else:
                metric, detail = self._requests(spec, role, policy, target.kind, now, st,
                                                observed)
                if metric is not None and target.kind is TargetKind.REQUESTS_PER_INSTANCE:
                    metric /= max(1, len(ready))
        except RackfireError as e:
            st.error = e.message
        return Sample(now, len(ready), metric, tuple(detail))

    def _usage(self, spec: StackSpec, role: RoleSpec, kind: TargetKind,
               ready: set[InstanceKey]) -> float | None:
        values = []
        for s in self.fleet.stats(spec.name):
            if s.key not in ready:
                continue
            if kind is TargetKind.CPU and s.cpu_percent is not None:
                values.append(s.cpu_percent / role.resources.cpu if role.resources.cpu
                              else s.cpu_percent)
            elif kind is TargetKind.MEMORY and s.memory_used is not None and s.memory_limit:
                values.append(100.0 * s.memory_used / s.memory_limit)
        return sum(values) / len(values) if values else None

    def _requests(self, spec: StackSpec, role: RoleSpec, policy: ScalePolicy,
                  kind: TargetKind, now: float, st: RoleState,
                  observed: list[InstanceFacts]) -> tuple[float | None, list[Detail]]:
        via = policy.via or next((r.name for r in spec.roles if role.name in r.uses), "")
        backend = policy.backend or role.name
        fronts = sorted(k for k in self.ready_keys(spec, observed) if k.role == via)
        rps, queue, serving, times = 0.0, 0, 0, []
        measured = False
        for key in fronts:
            snap = haproxy_stats.parse_stat(self.fleet.http_get(key, policy.stats))
            before = st.stats.get(key)
            st.stats[key] = (now, snap)
            if before is None or now - before[0] <= 0:
                continue
            rates = haproxy_stats.backend_rates(before[1], snap, backend, now - before[0])
            measured = True
            rps += rates.requests_per_second
            queue += rates.queue
            serving = max(serving, rates.serving)
            if (lat := haproxy_stats.latency_estimate(rates)) is not None:
                times.append(lat)
        for key in [k for k in st.stats if k not in fronts]:
            del st.stats[key]
        if not measured:
            return None, []
        detail: list[Detail] = [
            ("requests_per_second", round(rps, 1)), ("queue", queue), ("serving", serving)]
        if times:
            detail.append(("response_ms", round(1000 * max(times), 1)))
        if kind is TargetKind.LATENCY_P95:
            return (max(times) if times else None), detail
        return rps, detail  # per instance: over the role's ready ones (the decider's base)


def _what(d: Decision) -> str:
    values = ", ".join(f"{k} {v}" for k, v in d.values)
    return f"{d.reason} ({values})" if values else d.reason
