"""The controller harness: Store + Fleet + Controller over a FakeHost and a FakeClock, driven
without threads. `harness()` is the one place that knows their constructors.

`Harness.converge(stack)` does what the controller's threads would, in fake time: the server's
own host's heartbeat every `beat_every` seconds (Fleet.BEAT, or slower: the observed cache
then lags the host longer), the health monitor's tick every TICK seconds (its probes
inline), a reconcile pass when the last one asked for it (`Result.requeue_after`), when a
health change enqueued the stack, or at the resync; a failed pass backs off as the work
queue would. It never calls `Controller.start()`: nothing runs behind the test's back, and
a batch's actions run one by one in plan order, so a run is repeatable.

A crash (tests/harness/crash.py) is armed on the store's writes and the host's mutating
calls; `restart()` is the server coming back: a new Store on the same SQLite file, a new
Fleet, Controller and in-process host side on the same host (its instances still run),
unfinished actions abandoned as `Controller.start` abandons them.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from rackfire.agent.hostside import HostSide
from rackfire.agent.inprocess import InProcessLink
from rackfire.control.controller import RESYNC_SECONDS, Controller
from rackfire.control.desired import desired_keys
from rackfire.control.fleet import BEAT, Fleet
from rackfire.control.health import TICK, health_of
from rackfire.control.reconcile import TERMINAL_RETRY
from rackfire.control.workqueue import BACKOFF_BASE, BACKOFF_MAX
from rackfire.errors import AgentOffline, PrereqError, RackfireError, SpecError
from rackfire.model.agent import HostLink
from rackfire.model.instance import Health, InstanceState
from rackfire.model.records import StackStatus
from rackfire.store import Store

from .clock import FakeClock
from .crash import Crasher
from .fakehost import FakeHost

POOL = "10.77.0.0/16"  # never touched: the fake host makes no network
_P = ParamSpec("_P")
_T = TypeVar("_T")


class CrashingStore(Store):
    """A Store with a crash point after each transaction that wrote (committed: it stays;
    the server dies before what it would have done next). A dead server writes nothing."""

    def __init__(self, path: Path, crasher: Crasher) -> None:
        super().__init__(path)
        self.crasher = crasher

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.crasher.check()
        what = sys._getframe(2).f_code.co_name  # the Store method writing
        with super().tx() as db:
            before = db.total_changes
            yield db
            wrote = db.total_changes != before
        if wrote:
            self.crasher.point(f"after store.{what}")


class InlineExecutor(Executor):
    """Runs what is submitted at once, in the caller's thread: the health monitor's probes
    are done when `tick` returns (a crash in one goes up to the test)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _no_joined_hosts(host: str, address: str, key: str, epoch: Callable[[], int],
                     gone: Callable[[], bool]) -> HostLink:
    raise AgentOffline(f"the harness has no joined host {host}")


@dataclass(slots=True)
class Run:
    passes: int
    converged: bool
    status: str  # the stack's status and message when the run ended
    seconds: float  # of the fake clock
    # Passes that set the status converged while what runs was not the desired state yet
    # (a later pass, the resync, had to do more), and what was not.
    premature: list[str] = field(default_factory=list)


@dataclass
class Harness:
    dir: Path
    clock: FakeClock
    host: FakeHost
    crasher: Crasher
    home: InProcessLink  # the fake host as the server's own, in-process
    store: Store
    fleet: Fleet
    controller: Controller
    errors: list[str] = field(default_factory=list)  # passes that raised, and why
    changed: set[str] = field(default_factory=set)  # stacks a health change enqueued
    next_beat: float = 0.0  # the server's own host's next heartbeat (fake clock)
    beat_every: float = BEAT  # seconds of it between heartbeats (a test may slow them)

    def arm(self, at: int | None) -> None:
        """Crash at the `at`-th crash point from now (None: never)."""
        self.crasher.at, self.crasher.count = at, 0

    def restart(self, crash_at: int | None = None) -> Harness:
        """The server again, after it died: the same database and host, nothing else."""
        self.close()
        return harness(self.dir, clock=self.clock, host=self.host, crash_at=crash_at,
                       beat_every=self.beat_every)

    def close(self) -> None:
        self.controller.health._pool.shutdown(wait=False)
        self.store.close()

    def converge(self, stack: str, budget: int = 150, limit: float = 3600.0) -> Run:
        """Reconcile `stack` until it converged (the controller says so, and `problems` finds
        none), it is degraded (only an operator changes that), or `budget` passes or `limit`
        fake seconds have gone."""
        clock, start = self.clock, self.clock()
        due, failures, passes = start, 0, 0
        premature: list[str] = []
        while passes < budget and clock() - start < limit:
            now = clock()
            if now >= self.next_beat:  # not before every pass: the cache may lag
                self.beat()
                self.next_beat = now + self.beat_every
            self.controller.health.tick(now)
            if stack in self.changed:
                self.changed.discard(stack)
                due = now
            if now >= due:
                passes += 1
                delay: float | None
                try:
                    delay = self.controller.reconcile(stack).requeue_after
                    failures = 0
                except RackfireError as e:  # as reconcile_safely and the work queue back off
                    self.errors.append(f"{type(e).__name__}: {e.message}")
                    failures += 1
                    first = TERMINAL_RETRY if isinstance(e, SpecError | PrereqError) \
                        else BACKOFF_BASE
                    delay = min(BACKOFF_MAX, first * 2.0 ** (failures - 1))
                rec = self.store.get_stack(stack)
                if rec is None:
                    return Run(passes, True, "gone", clock() - start, premature)
                settled = rec.observed_generation == rec.generation and \
                    rec.status in (StackStatus.CONVERGED, StackStatus.DEGRADED)
                if settled and (rec.status is StackStatus.DEGRADED or not self.problems(stack)):
                    return Run(passes, rec.status is StackStatus.CONVERGED,
                               f"{rec.status}: {rec.message}", clock() - start, premature)
                if settled:  # said so, but it is not: the resync will look again
                    premature.append(f"pass {passes}: " + "; ".join(self.problems(stack)))
                due = now + (RESYNC_SECONDS if delay is None else delay)
            clock.to(min(due, now + TICK))
        rec = self.store.get_stack(stack)
        return Run(passes, False, f"{rec.status}: {rec.message}" if rec else "gone",
                   clock() - start, premature)

    def beat(self) -> None:
        """The server's own host's heartbeat (Fleet.beat_home's, once)."""
        self.fleet.heard(self.fleet.server_host, self.home.observed(), self.home.facts())

    def problems(self, stack: str) -> list[str]:
        """How what runs differs from the stored desired state (none when converged): every
        desired instance runs its desired spec and config and passes its check, and nothing
        else of the stack is on the host."""
        rec = self.store.get_stack(stack)
        if rec is None:
            return [f"{k} is left" for k in self.host.instances(stack)]
        desired = self.controller.desired.make(rec.spec, rec, build=False)
        want = {r.key: r for r in desired.requests if not r.surge and not r.warm}
        warm = {r.key for r in desired.requests if r.warm}
        have = self.host.instances(stack)
        statuses = self.store.statuses(stack)
        checked = {r.name for r in rec.spec.roles if r.health}
        out = [f"{k} is missing" for k in sorted(want.keys() - have.keys())]
        out += [f"{k} is extra ({have[k].state})" for k in sorted(have.keys() - want.keys())
                if k not in warm or have[k].state is not InstanceState.STOPPED]
        out += [f"{k} (warm) is missing" for k in sorted(warm - have.keys())]
        for key in sorted(want.keys() & have.keys()):
            f, d = have[key], want[key]
            if f.state is not InstanceState.RUNNING:
                out.append(f"{key} is {f.state}")
            if f.spec_hash != d.spec_hash:
                out.append(f"{key} runs spec {f.spec_hash}, not {d.spec_hash}")
            if f.config_hash != d.config_hash:
                out.append(f"{key} has config {f.config_hash}, not {d.config_hash}")
            if key.role in checked and (h := health_of(f, statuses.get(key))[0]) \
                    is not Health.HEALTHY:
                out.append(f"{key} is {h}")
        if set(want) != set(desired_keys(rec.spec)):
            out.append("the rendered requests are not the spec's instances")
        return out

    def instance_calls(self) -> list[str]:
        """The host's journal of calls that changed an instance, as text."""
        return [f"{c.verb} {c.target}" for c in self.host.calls()]


def harness(tmp_path: Path, *, clock: FakeClock | None = None, host: FakeHost | None = None,
            crash_at: int | None = None, beat_every: float = BEAT,
            **host_options: Any) -> Harness:
    """Store + Fleet + Controller on `tmp_path` (its database, and the host's dir when no
    `host` is given), unfinished actions abandoned as `Controller.start` does.
    `host_options` go to a new FakeHost."""
    clock = clock or FakeClock()
    host = host or FakeHost(tmp_path / "host", clock, **host_options)
    crasher = host.crasher = Crasher()
    store = CrashingStore(tmp_path / "rackfire.db", crasher)
    # The host side is the server's own (in-process): a restart makes it anew, with a new
    # boot; what runs on the host (the FakeRuntime's runs) lives on, as containers do.
    home = InProcessLink(HostSide(host))
    fleet = Fleet(home, host, store, _no_joined_hosts, local_pool=True)
    controller = Controller(store, fleet, clock=clock, subnet_pool=POOL)
    # Deterministic: a batch's actions in plan order, probes inline (the tests' only
    # reach into the parts; a HealthMonitor `executor` parameter would make it public).
    controller.reconciler.executor.parallel = 1
    controller.health._pool.shutdown(wait=False)
    controller.health._pool = InlineExecutor()  # type: ignore[assignment]
    h = Harness(tmp_path, clock, host, crasher, home, store, fleet, controller,
                beat_every=beat_every)
    health_changed = controller.health.on_change

    def on_change(stack: str) -> None:
        h.changed.add(stack)
        health_changed(stack)

    controller.health.on_change = on_change
    store.abandon_unfinished()
    h.arm(crash_at)  # from here: a restart's own abandon above does not count
    return h

