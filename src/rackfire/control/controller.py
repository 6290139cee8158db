"""The controller: accepts desired stacks, and reconciles each stack to them.

Level-triggered: an API call or a health change only enqueues the stack's name; a worker's
reconcile pass (control/reconcile.py) reads everything fresh, plans (pure), acts and
returns. It is safe to run at any time, any number of times, after any crash. This module
wires the parts together and runs them:

    commands    the API's verbs: arguments, prerequisites, desired state (commands.py)
    reconcile   one pass of one stack: snapshot, plan, journal, dispatch (reconcile.py)
    desired     the snapshot: desired instances rendered beside what runs (desired.py)
    publish     ports, names, reloads and drains (publish.py)
    placement   the host pool and the placements kept (placement.py)
    moves       drains, migrations and strays between hosts (moves.py)
    health      the probes, recorded per run (health.py)
    jobs        job slots and tasks: runs, each an instance that ends (jobs.py)
    autoscale   each scaled role's count, from its metric (autoscale.py)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rackfire.control.autoscale import Autoscaler
from rackfire.control.backups import BackupCommands
from rackfire.control.clones import CloneCommands
from rackfire.control.commands import Commands
from rackfire.control.desired import DesiredState
from rackfire.control.detector import Detector
from rackfire.control.failover import Failover
from rackfire.control.fleet import Fleet
from rackfire.control.health import HealthMonitor, health_of
from rackfire.control.jobs import Jobs
from rackfire.control.loadtest import LoadTests
from rackfire.control.moves import Moves
from rackfire.control.placement import Placer
from rackfire.control.publish import Publisher
from rackfire.control.reconcile import Reconciler
from rackfire.control.replicas import Replicator
from rackfire.control.snapshots import SnapshotCommands
from rackfire.control.workqueue import WorkQueue
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import Health, InstanceFacts, InstanceKey, InstanceState, Target
from rackfire.plan.ipam import DEFAULT_POOL
from rackfire.store import InstanceStatus, StateStore

log = logging.getLogger("rackfire.controller")

RESYNC_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance as `ps` shows it: the agent's facts and the controller's verdicts."""

    facts: InstanceFacts
    health: Health
    message: str  # why it is unhealthy or failed
    status: InstanceStatus | None
    lost: bool = False  # on a host whose lease lapsed: these facts are its last word

    @property
    def state(self) -> str:
        """running | stopped | failed | partial | lost."""
        if self.lost:
            return "lost"
        if self.status is not None and self.status.failed \
                and self.facts.state is not InstanceState.RUNNING:
            return "failed"
        return self.facts.state.value


class Controller:
    def __init__(self, store: StateStore, fleet: Fleet, *, subnet_pool: str = DEFAULT_POOL,
                 workers: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.fleet = fleet
        self.agent: Fleet = fleet  # every host, as one agent: calls go where instances are
        self.clock = clock
        self.queue = WorkQueue()
        self.health = HealthMonitor(store, fleet, on_change=self.queue.add)
        self.started = clock()
        self.publisher = Publisher(store, fleet, clock)
        self.desired = DesiredState(store, fleet, clock, subnet_pool,
                                    self.publisher.ready_keys)
        self.placer = Placer(store, fleet)
        self.commands = Commands(store, fleet, clock, self.desired, self.placer,
                                 self.queue.add)
        self.moves = Moves(store, fleet, clock, self.placer, self.publisher)
        self.failover = Failover(store, fleet, self.placer)
        self.detector = Detector(store, fleet, self.queue.add)
        self.jobs = Jobs(store, fleet, clock, self.queue.add)
        self.loadtests = LoadTests(self)  # its parts are looked up when it runs
        self.reconciler = Reconciler(store, fleet, clock, self.queue, desired=self.desired,
                                     placer=self.placer, publisher=self.publisher,
                                     moves=self.moves, commands=self.commands,
                                     failover=self.failover, jobs=self.jobs)
        self.snapshots = SnapshotCommands(store, fleet, self.commands)
        self.clones = CloneCommands(store, fleet, self.commands, self.snapshots)
        self.backups = BackupCommands(store, fleet, self.commands, self.snapshots)
        self.replicator = Replicator(store, fleet)
        self.autoscaler = Autoscaler(store, fleet, self.commands, clock,
                                     self.publisher.ready_keys)
        c = self.commands
        self.plan, self.apply, self.destroy, self.push = c.plan, c.apply, c.destroy, c.push
        self.scale, self.resize, self.rollback = c.scale, c.resize, c.rollback
        self.releases, self.operate, self.migrate, self.drain = (
            c.releases, c.operate, c.migrate, c.drain)
        self.fence, self.ready = c.fence, c.ready
        self.reconcile, self.unready = self.reconciler.reconcile, self.reconciler.unready
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.snapshots.recover()
        self.backups.recover()
        interrupted = self.store.abandon_unfinished()
        if interrupted:
            log.warning("%d action(s) were interrupted by a crash; re-planning", interrupted)
        for i in range(self._workers):
            self._spawn(f"reconcile-{i}",
                        lambda: self.queue.run_worker(self.reconciler.reconcile_safely))
        self._spawn("resync", self._resync)
        self._spawn("health", lambda: self.health.run(self._stop))
        self._spawn("home-beat", lambda: self.fleet.beat_home(self._stop))
        self._spawn("detector", lambda: self.detector.run(self._stop))
        self._spawn("backups", lambda: self.backups.run_schedule(self._stop))
        self._spawn("replicas", lambda: self.replicator.run(self._stop))
        self._spawn("jobs", lambda: self.jobs.run(self._stop))
        self._spawn("autoscale", lambda: self.autoscaler.run(self._stop))

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for t in self._threads:
            t.join(timeout=15)

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _resync(self) -> None:
        while not self._stop.is_set():
            for rec in self.store.stacks():
                self.queue.add_periodic(rec.name)
            self._stop.wait(RESYNC_SECONDS)

    # reads ------------------------------------------------------------------------------

    def stats(self, target: Target) -> list[tuple[InstanceView, InstanceStats | None]]:
        self.commands.record(target.stack)
        views = [v for v in self.instances(target.stack) if target.matches(v.facts.key)]
        measured = {s.key: s for s in self.agent.stats(target.stack)}
        return [(v, measured.get(v.facts.key)) for v in views]

    def instances(self, stack: str | None = None) -> list[InstanceView]:
        facts = sorted(self.agent.observe(stack), key=lambda f: f.key)
        lost = self.fleet.lost(stack)
        stacks = {r.name: r for r in self.store.stacks()}
        statuses: dict[InstanceKey, InstanceStatus] = {}
        for name in {f.key.stack for f in facts}:
            statuses.update(self.store.statuses(name))
        out = []
        for f in facts:
            rec = stacks.get(f.key.stack)
            has_check = False
            if rec is not None:
                has_check = any(r.name == f.key.role and r.health for r in rec.spec.roles)
            st = statuses.get(f.key)
            health, message = health_of(f, st)
            if not has_check:
                health, message = Health.NONE, ""
            if f.state is not InstanceState.RUNNING:
                health = Health.NONE if not has_check else Health.UNKNOWN
            if st is not None and st.failed:
                message = st.failed
            if f.key in lost:
                message = self.failover.held(f.key) or f"its host {lost[f.key]} is lost"
            out.append(InstanceView(f, health, message, st, f.key in lost))
        return out
