"""Jobs and tasks: runs, each a fresh instance of a role (its image, release, config) that
ends. A job role (`schedule:`) has no instances of its own: each slot of its cron claims a
run, exactly once across the hosts, since the claim is an insert the store lets happen
once (store/runs.py); a task is a one-off command (`rackfire run`, like `cf run-task`).

A run under way is a desired instance (index RUN_BASE + its number, plan/render.py), made
by the planner as any other and never restarted; this module is the only one that moves a
run's state: `tick`, once a second, claims the slots that are due, sees runs start and end
(the exit code its host's log writer recorded), stops those past their timeout, marks
those on a lost host, keeps the last lines of each one's log, and prunes the history. An
ended run is no longer desired: the next pass destroys its instance. A run whose instance
was left half-made by a crash, or whose host was lost, is recorded as failed or lost and
never run again: at most once, as a cron job must be (a migration run twice is worse
than one run not at all).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace

from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.errors import NotFound, PrereqError, RackfireError
from rackfire.model import cron
from rackfire.model.instance import (
    InstanceFacts,
    InstanceRequest,
    InstanceState,
    describe_exit,
)
from rackfire.model.records import Release, ReleaseStatus, Run, RunKind, RunState
from rackfire.model.stack import MAX_CATCH_UP, CatchUp, Concurrency, RoleSpec
from rackfire.model.units import format_duration
from rackfire.store import StackRecord, StateStore

log = logging.getLogger("rackfire.jobs")

TICK = 1.0  # how often slots and runs are looked at
LATE = 30.0  # a slot claimed later than this was missed (the controller was down)
START_TIMEOUT = 300.0  # a run whose instance is not seen by then failed to start
LOG_LINES = 50  # of a run's log kept in its history
TASK_HISTORY = 20  # runs kept of a role's tasks (a job keeps its own `history`)
DEFAULT_TASK_TIMEOUT = 3600.0


class Jobs:
    def __init__(self, store: StateStore, fleet: Fleet, clock: Callable[[], float],
                 enqueue: Callable[[str], None]) -> None:
        self.store, self.fleet, self.clock, self.enqueue = store, fleet, clock, enqueue
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(TICK):
            try:
                self.tick()
            except Exception:  # one bad look must not end the schedule
                log.exception("the job schedule failed; looking again")

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            for rec in self.store.stacks():
                if rec.deleting:
                    continue
                changed = False
                for role in rec.spec.roles:
                    if role.job is not None:
                        changed |= self._schedule(rec, role, now)
                changed |= self._watch(rec, now)
                if changed:
                    self.enqueue(rec.name)

    # a task -------------------------------------------------------------------------------

    def start_task(self, stack: str, role: str, command: tuple[str, ...],
                   timeout: float | None, actor: str) -> Run:
        """`rackfire run STACK/ROLE -- CMD`: refused before any change if there is no such
        stack or role."""
        rec = self.store.get_stack(stack)
        if rec is None or rec.deleting:
            raise NotFound(f"no stack {stack}", hint="`rackfire ps` lists the stacks' instances")
        spec = next((r for r in rec.spec.roles if r.name == role), None)
        if spec is None:
            roles = ", ".join(r.name for r in rec.spec.roles)
            raise NotFound(f"stack {stack} has no role {role}; its roles: {roles}")
        if not command and not spec.command:
            raise PrereqError(f"role {role} has no command: give one after --")
        run = Run(stack, 0, role, RunKind.TASK, RunState.PENDING, self.clock(), command,
                  timeout=timeout or (spec.job.timeout if spec.job else DEFAULT_TASK_TIMEOUT),
                  actor=actor)
        made = self.store.runs.add(run)
        assert made is not None  # a task claims no slot
        self._event(made, "run", "started", _what(made))
        self.enqueue(stack)
        return made

    def cancel(self, stack: str, number: int, actor: str) -> Run:
        with self._lock:
            run = self.store.runs.get(stack, number)
            if run is None:
                raise NotFound(f"stack {stack} has no run #{number}",
                               hint=f"`rackfire jobs {stack}` lists its runs")
            if not run.active:
                return run
            ended = self._end(run, RunState.CANCELLED, f"cancelled by {actor or 'an operator'}")
        self.enqueue(stack)
        return ended

    # a release's `before` task ------------------------------------------------------------

    def gates(self, rec: StackRecord, current: Mapping[str, Release],
              requests: list[InstanceRequest], observed: list[InstanceFacts],
              ) -> tuple[dict[str, str], dict[str, str]]:
        """For each role with `before:` whose new release would replace instances on an
        older one: why its rollout waits (its task is claimed now, or runs), or why it
        failed (the task did). Role -> reason, in each."""
        wait: dict[str, str] = {}
        failed: dict[str, str] = {}
        want = {r.key: r.spec_hash for r in requests if not r.surge and r.key.run is None}
        for role in rec.spec.roles:
            release = current.get(role.name)
            if not role.before or release is None \
                    or release.status is not ReleaseStatus.DEPLOYING:
                continue
            task = next((r for r in self.store.runs.of_stack(rec.name, role.name, 1000)
                         if r.kind is RunKind.BEFORE and r.release == release.version), None)
            if task is None:
                if not any(f.key in want and f.spec_hash != want[f.key] for f in observed):
                    continue  # nothing older runs: its first release, or one already out
                task = self.store.runs.add(Run(
                    rec.name, 0, role.name, RunKind.BEFORE, RunState.PENDING, self.clock(),
                    role.before, timeout=DEFAULT_TASK_TIMEOUT, release=release.version,
                    actor=CONTROLLER))
                assert task is not None
                self._event(task, "before", "started",
                            f"v{release.version}'s before task: {' '.join(role.before)}")
            if task.active:
                wait[role.name] = f"v{release.version}'s before task (run #{task.number})"
            elif task.state is not RunState.SUCCEEDED:
                failed[role.name] = (f"its before task (run #{task.number}) "
                                     f"{task.state.value}: {task.reason}")
        return wait, failed

    # slots --------------------------------------------------------------------------------

    def _schedule(self, rec: StackRecord, role: RoleSpec, now: float) -> bool:
        assert role.job is not None
        job = role.job
        expr = cron.parse(job.schedule)
        last = self.store.runs.clock(rec.name, role.name)
        if last is None:  # a new job: from now on (not the slots before it existed)
            self.store.runs.set_clock(rec.name, role.name, now)
            return False
        due = expr.slots(int(last), int(now), MAX_CATCH_UP + 1)
        if not due:
            return False
        late = [s for s in due if now - s > LATE]
        on_time = [s for s in due if now - s <= LATE]
        if late:
            keep = {CatchUp.SKIP: [], CatchUp.LAST: [] if on_time else late[-1:],
                    CatchUp.ALL: late[:MAX_CATCH_UP]}[job.catch_up]
            missed = len(late) - len(keep)
            if missed:
                self.store.add_event(CONTROLLER, rec.name, f"{rec.name}/{role.name}", "job",
                                     "missed", f"{missed} slot(s) passed while the "
                                     f"controller was down (catch_up: {job.catch_up})")
            late = keep
        changed = False
        for slot in [*late, *on_time]:
            changed |= self._claim(rec, role, float(slot), now)
        self.store.runs.set_clock(rec.name, role.name, float(due[-1]))
        return changed

    def _claim(self, rec: StackRecord, role: RoleSpec, slot: float, now: float) -> bool:
        assert role.job is not None
        running = [r for r in self.store.runs.active(rec.name) if r.role == role.name
                   and r.kind is RunKind.JOB]
        run = Run(rec.name, 0, role.name, RunKind.JOB, RunState.PENDING, now, slot=slot,
                  timeout=role.job.timeout, actor=CONTROLLER)
        if running and role.job.concurrency is Concurrency.FORBID:
            why = f"run #{running[0].number} of the slot before still runs (concurrency: forbid)"
            run = replace(run, state=RunState.SKIPPED, ended=now, reason=why)
        made = self.store.runs.add(run, clock=slot)
        if made is None:
            return False  # claimed already (by an earlier pass)
        if made.state is RunState.SKIPPED:
            self._event(made, "job", "skipped", made.reason)
            return False
        if role.job.concurrency is Concurrency.REPLACE:
            for other in running:
                self._end(other, RunState.CANCELLED, f"replaced by run #{made.number}")
        self._event(made, "job", "started", _what(made))
        return True

    # runs ---------------------------------------------------------------------------------

    def _watch(self, rec: StackRecord, now: float) -> bool:
        """Move each run under way on by what its host says."""
        active = self.store.runs.active(rec.name)
        changed = False
        if active:
            facts = {f.key: f for f in self.fleet.observe(rec.name)}
            lost = self.fleet.lost(rec.name)
            roles = {r.name for r in rec.spec.roles}
            for run in active:
                changed |= self._look(run, facts.get(run.key), lost.get(run.key), now,
                                      run.role in roles)
        self._release(rec)
        for role in rec.spec.roles:
            keep = role.job.history if role.job else TASK_HISTORY
            self.store.runs.prune(rec.name, role.name, keep)
        return changed

    def _look(self, run: Run, f: InstanceFacts | None, lost_on: str | None, now: float,
              role_exists: bool) -> bool:
        if not role_exists:
            self._end(run, RunState.CANCELLED, f"role {run.role} was removed")
            return True
        if lost_on is not None:
            self._end(run, RunState.LOST, f"its host {lost_on} was lost while it ran; "
                      "not run again")
            return True
        if f is None:
            if run.state is RunState.RUNNING:
                self._end(run, RunState.FAILED, "its instance disappeared")
                return True
            if now - run.created > START_TIMEOUT:
                self._end(run, RunState.FAILED, "it did not start within "
                          f"{format_duration(START_TIMEOUT)} (see `rackfire events`)")
                return True
            return False
        if f.state is InstanceState.PARTIAL:  # being made (or left so by a crash)
            if now - run.created <= START_TIMEOUT:
                return False
            self._end(run, RunState.FAILED, "its instance was left half-made (interrupted); "
                      "not run again", f)
            return True
        if run.state is RunState.PENDING:
            run = replace(run, state=RunState.RUNNING, host=f.host,
                          started=f.started_at or now)
            self.store.runs.put(run)
        if f.state is InstanceState.STOPPED:
            ok = f.exit_code == 0 and f.exit_signal is None
            self._end(run, RunState.SUCCEEDED if ok else RunState.FAILED, f.ended, f)
            return True
        if now - (run.started or now) > run.timeout:
            self._end(run, RunState.TIMED_OUT,
                      f"timed out after {format_duration(run.timeout)}; stopped", f)
            return True
        return False

    def _end(self, run: Run, state: RunState, reason: str,
             f: InstanceFacts | None = None) -> Run:
        tail = ""
        if f is not None:
            try:
                tail = self.fleet.log_tail(run.key, LOG_LINES)
            except RackfireError as e:
                tail = f"(its log could not be read: {e.message})"
        ended = replace(run, state=state, reason=reason, ended=self.clock(), log=tail,
                        exit_code=f.exit_code if f else None,
                        signal=f.exit_signal if f else None, host=f.host if f else run.host)
        self.store.runs.put(ended)
        result = {RunState.SUCCEEDED: "ok"}.get(state, state.value)
        self._event(ended, run.kind.value, result, reason)
        return ended

    def _release(self, rec: StackRecord) -> None:
        """The addresses of runs whose instance is gone go back to the stack's pool."""
        active = {r.key for r in self.store.runs.active(rec.name)}
        ips = self.store.ips(rec.name)
        if not any(k.run is not None and k not in active for k in ips):
            return
        seen = {f.key for f in self.fleet.observe(rec.name)}
        for key in ips:
            if key.run is not None and key not in active and key not in seen:
                self.store.release_ip(key)

    def _event(self, run: Run, action: str, result: str, reason: str) -> None:
        self.store.add_event(run.actor if result == "started" else CONTROLLER, run.stack,
                             f"{run.stack}/{run.role}#{run.number}", action, result, reason)


def _what(run: Run) -> str:
    what = " ".join(run.command) if run.command else "the role's command"
    if run.slot is not None:
        return f"slot {cron.format_slot(int(run.slot))}: {what}"
    return what


def exit_status(run: Run) -> int:
    """What `rackfire run` exits with, as a shell would: the code, 128 + a signal, 124 for a
    timeout (as timeout(1)), 1 for the rest."""
    if run.state is RunState.SUCCEEDED:
        return 0
    if run.state is RunState.TIMED_OUT:
        return 124
    if run.signal is not None:
        return 128 + run.signal
    return run.exit_code if run.exit_code else 1


def describe(run: Run) -> str:
    """How it ended, or that it has not."""
    if run.active:
        return run.state.value
    if run.exit_code is not None or run.signal is not None:
        return describe_exit(run.exit_code, run.signal)
    return run.reason or run.state.value
