"""The health monitor: probes each running instance of a role with a check, on the role's
interval, and records healthy / starting / unhealthy. A change of health enqueues the stack,
so published ports follow health within one interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rackfire.control.fleet import Fleet
from rackfire.errors import AgentOffline
from rackfire.model.instance import Health, InstanceFacts, InstanceKey, InstanceState
from rackfire.model.stack import HealthSpec
from rackfire.store import InstanceStatus, StateStore

log = logging.getLogger("rackfire.health")
TICK = 0.5  # a starting instance (one not yet passing this run) is probed this often too,
# so a rollout's next batch goes as soon as this one is ready, not a check interval later


def health_of(f: InstanceFacts | None, st: InstanceStatus | None) -> tuple[Health, str]:
    """An instance's health and why, counting only checks of the run that is running now: a
    late probe of the instance it replaced must not vouch for it."""
    if f is None or st is None or st.run is None or st.run != f.started_at:
        return Health.STARTING, ""
    return st.health, st.message


def ready_timeout(check: HealthSpec | None, timeout: float) -> float:
    """How long a new instance may take to pass its check: a rollout's `timeout`, but never
    shorter than the check's own grace and retries."""
    least = check.grace + check.interval * check.retries + 5 if check else 10
    return max(timeout, least)


class HealthMonitor:
    def __init__(self, store: StateStore, agent: Fleet, on_change: Callable[[str], None]) -> None:
        self.store = store
        self.agent = agent
        self.on_change = on_change
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._lock = threading.Lock()
        self._inflight: set[InstanceKey] = set()
        self._key_locks: dict[InstanceKey, threading.Lock] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick(time.time())
            except Exception:
                log.exception("health tick failed")
            stop.wait(TICK)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self, now: float) -> None:
        due: list[tuple[InstanceFacts, HealthSpec]] = []
        gone = set(self.agent.gone())
        for rec in self.store.stacks():
            if rec.deleting:
                continue
            checks = {r.name: r.health for r in rec.spec.roles if r.health}
            statuses = self.store.statuses(rec.name)
            for f in self.agent.observe(rec.name):
                spec = checks.get(f.key.role)
                if spec is None or f.state is not InstanceState.RUNNING or f.host in gone \
                        or f.key.run is not None:  # a run's exit code is its result
                    continue  # (one on a lost host is not reached: it is `lost`)
                st = statuses.get(f.key)
                starting = health_of(f, st)[0] is Health.STARTING
                if (st is None or st.checked is None or st.run != f.started_at
                        or st.checked + (min(spec.interval, TICK) if starting
                                         else spec.interval) <= now):
                    due.append((f, spec))
        for f, spec in due:
            with self._lock:
                if f.key in self._inflight:
                    continue  # a slow probe is still out: do not pile up more of them
                self._inflight.add(f.key)
            self._pool.submit(self._check_in_background, f, spec)

    def _check_in_background(self, f: InstanceFacts, spec: HealthSpec) -> None:
        try:
            self._check(f, spec)
        except AgentOffline as e:  # its host went away: `lost` says so, not a probe
            log.warning("health check of %s: %s", f.key, e.message)
        except Exception:
            log.exception("health check of %s failed", f.key)
        finally:
            with self._lock:
                self._inflight.discard(f.key)

    def _check(self, f: InstanceFacts, spec: HealthSpec) -> Health:
        with self._lock:
            key_lock = self._key_locks.setdefault(f.key, threading.Lock())
        with key_lock:  # one check at a time per instance: `fails` is read-modify-write
            return self._check_locked(f, spec)

    def _check_locked(self, f: InstanceFacts, spec: HealthSpec) -> Health:
        ok, message = self.agent.probe(f.key, f.ip or "", spec)
        st = self.store.statuses(f.key.stack).get(f.key)
        same_run = st is not None and st.run == f.started_at
        before = health_of(f, st)[0]
        fails = 0 if ok else (st.fails if st and same_run else 0) + 1
        if ok:
            health = Health.HEALTHY
        elif before is Health.HEALTHY and fails < spec.retries:
            health = Health.HEALTHY  # a blip: not yet
        elif fails >= spec.retries and (
            before is Health.HEALTHY or time.time() - (f.started_at or 0) > spec.grace
        ):
            health = Health.UNHEALTHY
        else:
            health = Health.STARTING
        self.store.set_health(f.key, health, f.started_at, fails, "" if ok else message)
        if health is not before:
            log.info("%s is %s %s", f.key, health, message if not ok else "")
            if health is not Health.STARTING:
                self.store.add_event("health", f.key.stack, str(f.key), health.value, "ok",
                                     message)
            self.on_change(f.key.stack)
        return health
