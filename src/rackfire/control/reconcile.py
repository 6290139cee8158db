"""The reconcile: `reconcile(stack) -> Result`. One pass takes one snapshot (desired and
observed), makes the pure plan, journals and dispatches its actions, and returns what it
asks of the queue. It never sleeps or waits inside: a rollout's batch waiting for its
check, a drain letting a reload take, a migration's target copy starting are state in the
store (or the pass's own memory) plus a requeue, so slow checks hold no worker. A spec or
prerequisite problem (only a change fixes it) and any other failure are apart, and each
stack backs off on its own (control/workqueue.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from rackfire.control import migrate, releases, rollouts
from rackfire.control.commands import Commands
from rackfire.control.desired import Desired, DesiredState, desired_keys
from rackfire.control.executor import CONTROLLER, LOOK_AGAIN, Executor
from rackfire.control.failover import Failover
from rackfire.control.fleet import Fleet
from rackfire.control.health import health_of
from rackfire.control.jobs import Jobs
from rackfire.control.moves import Moves
from rackfire.control.placement import Placer
from rackfire.control.primaries import Promoter
from rackfire.control.publish import Publisher
from rackfire.control.workqueue import WorkQueue
from rackfire.errors import Conflict, ExecError, PrereqError, RackfireError, SpecError
from rackfire.model.instance import Health, InstanceFacts, InstanceKey, InstanceState
from rackfire.model.records import StackStatus
from rackfire.plan import ActionKind, Plan, plan_stack
from rackfire.plan.render import warm_count
from rackfire.store import Release, ReleaseStatus, StackRecord, StateStore

log = logging.getLogger("rackfire.reconcile")

TERMINAL_RETRY = 5.0  # a spec or prerequisite problem: first look again after this long
RETRY_FAILED = 5.0  # a plan that stopped at a failed action is tried again this soon


@dataclass(frozen=True, slots=True)
class Result:
    """What a reconcile pass asks of the queue: look again after `requeue_after` seconds
    (None: only on the next event or resync)."""

    requeue_after: float | None = None

    @staticmethod
    def soonest(*delays: float | None) -> Result:
        given = [d for d in delays if d is not None]
        return Result(max(0.05, min(given)) if given else None)


class Reconciler:
    def __init__(self, store: StateStore, fleet: Fleet, clock: Callable[[], float],
                 queue: WorkQueue, *, desired: DesiredState, placer: Placer,
                 publisher: Publisher, moves: Moves, commands: Commands,
                 failover: Failover, jobs: Jobs) -> None:
        self.store, self.fleet, self.clock, self.queue = store, fleet, clock, queue
        self.agent: Fleet = fleet
        self.desired, self.placer, self.publisher = desired, placer, publisher
        self.moves, self.commands, self.failover = moves, commands, failover
        self.jobs = jobs
        self.executor = Executor(store, fleet)
        self.promoter = Promoter(store, fleet, publisher.ready_keys)
        self.waits = store.waits

    def reconcile_safely(self, name: str) -> None:
        """One pass for the queue: a spec or prerequisite problem (only a change fixes it)
        is looked at again after a long backoff, any other failure after a short one that
        grows; each stack backs off on its own."""
        rec = self.store.get_stack(name)
        generation = rec.generation if rec else 0
        try:
            result = self.reconcile(name)
        except (SpecError, PrereqError) as e:
            log.warning("reconcile %s: %s", name, e.message)
            self.store.set_stack_status(name, generation, StackStatus.FAILED, e.message)
            self.queue.retry(name, first=TERMINAL_RETRY)
            return
        except RackfireError as e:
            log.warning("reconcile %s: %s", name, e.message)
            self.store.set_stack_status(name, generation, StackStatus.FAILED, e.message)
            self.queue.retry(name)
            return
        except Exception as e:
            log.exception("reconcile %s crashed", name)
            self.store.set_stack_status(name, generation, StackStatus.FAILED,
                                        f"internal error: {e}")
            self.queue.retry(name)
            return
        self.queue.forget(name)
        if result.requeue_after is not None:
            self.queue.add(name, delay=result.requeue_after)

    def reconcile(self, name: str) -> Result:
        """One pass: look, plan, act, and return. It never waits for an instance: a
        rollout's batch, a drain or a migration step that needs time is state in the store,
        and the pass asks to be run again (or is, by the health change)."""
        rec = self.store.get_stack(name)
        if rec is None:
            self.publisher.forget_stack(name)
            return Result()
        if rec.deleting:
            return self._reconcile_deleted(rec)
        fence_due = self.failover.run(rec.spec)  # before the planner: where they are now
        promote_due = self.promoter.run(rec.spec)  # and who the primaries are
        self.publisher.vips.place(name, rec.spec.vip)  # at once, not after the starts below
        desired = self.desired.make(rec.spec, rec, build=True)
        if desired.builds:
            return self._build(rec, desired)
        current = releases.note(self.store, rec, desired.images, desired.layers)
        if self._unbuilt(rec, current, desired.unbuilt):
            return Result()
        migrating_again = self.moves.carry_on(rec, desired)
        if migrating_again is not None and migrating_again <= 0:
            desired = self.desired.make(rec.spec, rec, build=True)  # hosts changed: look again
            migrating_again = None
        moving = migrate.migrating(self.fleet.placements.migrations(name))
        moving |= self.fleet.unknown(name)
        desired = replace(desired, requests=[r for r in desired.requests if r.key not in moving],
                          observed=[f for f in desired.observed if f.key not in moving])
        verdict = rollouts.judge(self.waits.of_stack(name), rec.spec,
                                 {f.key: f for f in desired.observed},
                                 self.store.statuses(name), self.clock())
        for key in verdict.over:
            self.waits.drop(key)
        gated, before_failed = self.jobs.gates(rec, current, desired.requests,
                                               desired.observed)
        plan = self.desired.plan(name, rec.generation, rec.spec, desired, verdict.timed_out,
                                 gated)
        self.publisher.forget_drains(name, plan)
        self.placer.place_new(rec.spec, desired, {a.key for a in plan.actions
                                            if a.kind is ActionKind.CREATE})
        self.agent.ensure_network(desired.network)
        self.store.save_ips(desired.ips)
        if plan.actions:  # a migration under way says so itself (`_settle`)
            self.store.set_stack_status(name, rec.generation, StackStatus.PROGRESSING,
                                        f"{len(plan.actions)} action(s)")
        outcome = self.executor.run(plan, self.clock, self.publisher.ports(rec, desired))
        for key in outcome.released:
            self.store.release_ip(key)
            self.fleet.placements.drop(key)
        observed = self.agent.observe(name)
        self.publisher.publish(rec, desired, observed)
        failing = dict(verdict.rollout_failed) | outcome.rollout_failed | before_failed
        for a in plan.actions:
            if a.held and a.kind is ActionKind.REPLACE:
                failing.setdefault(a.key.role, f"rollout held: {a.held}")
        for role, why in failing.items():
            if current[role].status is ReleaseStatus.DEPLOYING and self._roll_back(
                    rec, current[role], why):
                return Result()
        unready = self._unready(rec, observed)
        failed = next(iter(verdict.failed.values()), "") or outcome.failed
        if not failed:  # a role whose every instance runs and passes: its release
            # (not one still rolling: what runs and passes may be the release before)
            rolling = {a.key.role for a in plan.actions
                       if a.rolling or a.kind is ActionKind.REPLACE} | gated.keys()
            settled = {r.name for r in rec.spec.roles} - {k.role for k in unready} - rolling
            releases.settle(self.store, [current[r] for r in settled])
        waiting = (None if verdict.due is None else verdict.due - self.clock(),
                   migrating_again, fence_due, promote_due)
        if failed:
            self.store.set_stack_status(name, rec.generation, StackStatus.FAILED, failed)
            if outcome.held and not verdict.failed:  # a health change or resync looks again
                return Result.soonest(*waiting)
            return Result.soonest(RETRY_FAILED, *waiting)
        if outcome.deferred is not None:
            return Result.soonest(outcome.deferred - self.clock(), *waiting)
        if plan.actions and not unready:  # (a migration step looks again itself)
            # What this pass did changes who is ready, and so what the others' files list
            # (one that cannot reload is reconfigured by a plan): only a pass that finds
            # nothing to do says converged (tests/unit/test_controller_properties.py).
            return Result.soonest(LOOK_AGAIN, *waiting)
        return Result.soonest(self._settle(rec, unready), *waiting)

    def _build(self, rec: StackRecord, desired: Desired) -> Result:
        """A pass that runs the plan's builds, each a journalled action: images first (a
        release is built on its image's digest), then releases, and looks again at once,
        to render with what they made. An image that fails fails the pass (as any error:
        retried with a backoff); a release that fails is rolled back (`_unbuilt`)."""
        plan = Plan(rec.name, rec.generation, (), steps=desired.builds)
        images = [s for s in plan.builds if s.kind is ActionKind.BUILD_IMAGE]
        layers, failed = dict(desired.layers), {}
        for step in images or plan.builds:
            what = f"image {step.image}" if step in images else f"the release of {step.role}"
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.PROGRESSING,
                                        f"building {what}")
            try:
                built = self.executor.build(plan, rec.spec, step)
            except RackfireError as e:
                if step in images:
                    raise
                failed[step.role] = e.message
                continue
            if step.role:
                layers[step.role] = built
        if not images:  # the releases as built (or not): what the next pass finds
            current = releases.note(self.store, rec, desired.images, layers)
            if self._unbuilt(rec, current, failed):
                return Result()
        return Result.soonest(0.0)

    def _unbuilt(self, rec: StackRecord, current: dict[str, Release],
                 unbuilt: dict[str, str]) -> bool:
        """Releases that could not be built: the old release runs on, untouched. True if
        one was rolled back (a new generation: the pass ends), else the pass fails."""
        for role, why in unbuilt.items():
            if current[role].status is not ReleaseStatus.FAILED and self._roll_back(
                    rec, current[role], f"its build failed: {why}"):
                return True
            raise ExecError(f"the release of {role} could not be built: {why}",
                            hint="fix the app (its requirements.txt) and push it again")
        return False

    def _roll_back(self, rec: StackRecord, bad: Release, why: str) -> bool:
        """A release failed its rollout: put the role back on the release that was live, as
        a new generation, and mark this one failed. False if there is none to go back to,
        or the stack moved on meanwhile (a newer push or apply wins; it is looked at anew)."""
        target = releases.fallback(self.store.releases(rec.name, bad.role), bad)
        try:
            if target is None:
                raise PrereqError("no earlier release to go back to")
            self.commands.change(rec.name, bad.role, releases.fields_of(target), CONTROLLER,
                                 "rollback", f"v{bad.version} failed ({why}); back to "
                                 f"v{target.version}", generation=rec.generation)
        except Conflict:
            return False
        except RackfireError as e:  # failed, and left so: no rollback attempt every pass
            self.store.set_release_status(rec.name, bad.role, bad.version,
                                          ReleaseStatus.FAILED, why)
            self.store.add_event(CONTROLLER, rec.name, f"{rec.name}/{bad.role}", "rollback",
                                 "failed", f"v{bad.version} failed ({why}): {e.message}")
            return False
        self.store.set_release_status(rec.name, bad.role, bad.version, ReleaseStatus.FAILED,
                                      why)
        return True

    def _reconcile_deleted(self, rec: StackRecord) -> Result:
        """Destroy on every host that can be reached; what a gone host holds is removed
        when it is back (its heartbeat wakes this), or given up when it is removed."""
        gone = set(self.fleet.gone())
        observed = [f for f in self.agent.observe(rec.name) if f.host not in gone]
        self.moves.remove_strays(rec.name, all_copies=True, keep_data=rec.keep_data)
        plan = plan_stack(rec.name, rec.generation, None, [], observed, {}, self.clock())
        outcome = self.executor.run(plan, self.clock)
        if outcome.failed:
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.FAILED,
                                        outcome.failed)
            return Result(RETRY_FAILED)
        self.agent.teardown_stack(rec.name, keep_data=rec.keep_data, skip=gone)
        away = self.fleet.holding(rec.name) & gone
        if away:
            why = (f"destroyed on every host but {', '.join(sorted(away))} (lost): finished "
                   "there when it is back, or given up with `rackfire host rm`")
            if rec.message != why:
                self.store.add_event(CONTROLLER, rec.name, rec.name, "destroy", "waiting", why)
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.PROGRESSING, why)
            return Result(RETRY_FAILED)
        self.store.forget_stack(rec.name)  # its placements, VNI and migrations too
        self.publisher.forget_stack(rec.name)
        return Result()

    def _settle(self, rec: StackRecord, unready: dict[InstanceKey, str]) -> float | None:
        """Converged when every desired instance runs and passes its check, or is stopped
        by an operator, and no other is left (`unready` is empty). Failed instances make it
        degraded, which only an operator (or a new spec) changes: no fast re-check for
        them. When to look again."""
        statuses = self.store.statuses(rec.name)
        failed = [why for k, why in unready.items()
                  if (st := statuses.get(k)) is not None and st.failed]
        waiting = [why for k, why in unready.items() if why not in failed]
        if waiting:
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.PROGRESSING,
                                        "waiting for " + waiting[0])
            return 1.0
        if failed:
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.DEGRADED,
                                        f"{len(failed)} failed: {failed[0]}", converged=True)
        else:
            self.store.set_stack_status(rec.name, rec.generation, StackStatus.CONVERGED, "",
                                        converged=True)
        return None

    def unready(self, name: str, facts: list[InstanceFacts] | None = None) -> list[str]:
        rec = self.store.get_stack(name)
        if rec is None:
            return []
        return list(self._unready(rec, facts).values())

    def _unready(self, rec: StackRecord,
                 facts: list[InstanceFacts] | None = None) -> dict[InstanceKey, str]:
        """Desired instances that are not running and passing their check, and why."""
        observed = {f.key: f for f in (self.agent.observe(rec.name) if facts is None else facts)}
        statuses = self.store.statuses(rec.name)
        out = {}
        for role in rec.spec.roles:
            for i in range(role.count):
                key = InstanceKey(rec.name, role.name, i)
                f = observed.get(key)
                st = statuses.get(key)
                if st is not None and st.stopped and (f is None or f.state is not
                                                      InstanceState.RUNNING):
                    continue  # stopped by an operator: as desired
                if st is not None and st.failed:
                    out[key] = f"{key.name} (failed: {st.failed})"
                elif f is None or f.state is not InstanceState.RUNNING:
                    out[key] = f"{key.name} ({f.state if f else 'missing'})"
                elif role.health is not None:
                    health, why = health_of(f, statuses.get(key))
                    if health is not Health.HEALTHY:
                        out[key] = f"{key.name} ({health}{': ' + why if why else ''})"
        wanted = set(desired_keys(rec.spec)) | {
            InstanceKey(rec.name, r.name, i) for r in rec.spec.roles
            for i in range(r.count, r.count + warm_count(r))}  # kept stopped: as desired
        for key in sorted(observed.keys() - wanted):  # a surge or scaled-away instance
            if key.run is None:  # (a run is not the stack's to be ready: jobs.py)
                out[key] = f"{key.name} (to be removed)"
        return out
