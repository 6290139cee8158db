"""The controller: accepts desired stacks, and reconciles each stack to them.

Level-triggered: an API call or a health change only enqueues the stack's name; `reconcile`
reads everything fresh (desired from the store, observed from the agent), plans (pure), and
executes. It is safe to run at any time, any number of times, after any crash.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from rackfire.control import capacity, migrate, overrides, releases
from rackfire.control.executor import CONTROLLER, Executor
from rackfire.control.fleet import Fleet
from rackfire.control.health import HealthMonitor, health_of, ready_timeout
from rackfire.control.hosts import asks_of, pool
from rackfire.control.workqueue import WorkQueue
from rackfire.errors import Conflict, ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.agent import Agent, InstanceStats, PublishedPort
from rackfire.model.host import Host, HostState, Reservation
from rackfire.model.instance import (
    Health,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
    Target,
)
from rackfire.model.stack import (
    MAX_COUNT,
    AppSource,
    HealthSpec,
    RoleSpec,
    RuntimeKind,
    StackSpec,
)
from rackfire.model.units import show_value as _show
from rackfire.plan import ActionKind, Plan, plan_stack, render_stack
from rackfire.plan.ipam import (
    DEFAULT_POOL,
    allocate_ips,
    allocate_subnet,
    gateway_of,
    subnet_prefix,
)
from rackfire.plan.planner import reloadable
from rackfire.plan.render import role_keys
from rackfire.schedule import Ask, Placement, explain, explain_decision, move, schedule
from rackfire.store import InstanceStatus, Release, ReleaseStatus, StackRecord, Store
from rackfire.store.placements import Migration

log = logging.getLogger("rackfire.controller")

RESYNC_SECONDS = 10.0
UNBUILT = "0" * 64  # the digest a plan shows for an image that apply will build


RELOAD_SETTLE = 0.5  # after a reload signal, before the drained instance is stopped
DRAIN_RETRY = 120.0  # seconds before a drain tries again to move an instance that failed to


@dataclass(frozen=True, slots=True)
class Desired:
    network: NetworkConfig
    ips: dict[InstanceKey, str]
    requests: list[InstanceRequest]  # rendered with the instances ready when it was made
    images: dict[str, str]  # role -> the image digest it runs
    layers: dict[str, str]  # role -> its built release layer (roles with an app)
    unbuilt: dict[str, str]  # role -> why its release layer could not be built
    observed: list[InstanceFacts]  # what ran when it was rendered (the plan starts there)
    render: Callable[[Collection[InstanceKey]], list[InstanceRequest]]  # with other ready


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance as `ps` shows it: the agent's facts and the controller's verdicts."""

    facts: InstanceFacts
    health: Health
    message: str  # why it is unhealthy or failed
    status: InstanceStatus | None

    @property
    def state(self) -> str:
        """running | stopped | failed | partial."""
        if self.status is not None and self.status.failed \
                and self.facts.state is not InstanceState.RUNNING:
            return "failed"
        return self.facts.state.value


class Controller:
    def __init__(self, store: Store, fleet: Fleet, *, subnet_pool: str = DEFAULT_POOL,
                 workers: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.fleet = fleet
        self.agent: Agent = fleet  # every host, as one agent: calls go where instances are
        self.subnet_pool = subnet_pool
        self.clock = clock
        self.queue = WorkQueue()
        self.health = HealthMonitor(store, fleet, on_change=self.queue.add)
        self.started = clock()
        self.executor = Executor(store, fleet, self.health)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._apply_lock = threading.Lock()
        self.failpoints = migrate.Failpoints(os.environ.get("RACKFIRE_FAILPOINTS", ""))
        self._move_failed: dict[InstanceKey, float] = {}  # a drain retries them later

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        interrupted = self.store.abandon_unfinished()
        if interrupted:
            log.warning("%d action(s) were interrupted by a crash; re-planning", interrupted)
        for i in range(self._workers):
            self._spawn(f"reconcile-{i}", lambda: self.queue.run_worker(self.reconcile_safely))
        self._spawn("resync", self._resync)
        self._spawn("health", lambda: self.health.run(self._stop))

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
                self.queue.add(rec.name)
            self._stop.wait(RESYNC_SECONDS)

    # requests from the API --------------------------------------------------------------

    def plan(self, spec: StackSpec, *, explain_placement: bool = False) -> Plan:
        """What apply would do now. Changes no desired state (IPs are chosen but not kept;
        the sources the CLI uploaded for it are kept, by content). Notes say
        where the file sets back what `scale` or `resize` set. With `explain_placement`,
        where each instance goes and why no other host (every host checked for each new
        one: hosts x new instances of work, so only when asked)."""
        rec = self.store.get_stack(spec.name)
        plan = self._plan_change(spec, rec)
        notes = overrides.disagreements(spec, self.store.overrides(spec.name)) if rec else []
        placement: tuple[str, ...] = ()
        if explain_placement:
            placement = tuple(explain(self._place(spec, self.agent.observe(spec.name),
                                                  explain=True)))
        return replace(plan, notes=tuple(notes), placement=placement)

    def apply(self, spec: StackSpec, expected_generation: int | None,
              actor: str = CONTROLLER) -> tuple[int, Plan]:
        """Store the spec as the stack's next generation and start converging.
        Every check runs before the store is touched: if this raises, nothing changed."""
        with self._audited(actor, spec.name, spec.name, "apply"):
            # A new tarball is read whole once, outside the lock (the plan's check under it
            # is then free): a large one must not hold up every other apply meanwhile.
            for image in spec.images:
                self.agent.check_image(image)
            with self._apply_lock:
                plan = self.plan(spec)  # two new stacks must not take one free subnet
                subnet = self._subnet(self.store.get_stack(spec.name), spec)
                generation = self.store.put_stack(spec, subnet, expected_generation, actor)
                for role in spec.roles:
                    if role.app is not None:
                        self.store.retry_release(spec.name, role.name, role.app.digest)
        self._event(actor, spec.name, spec.name, "apply", f"generation {generation}, "
                    f"{len(plan.actions)} change(s)")
        self.queue.add(spec.name)
        return generation, replace(plan, generation=generation)

    def destroy(self, name: str, actor: str = CONTROLLER, keep_data: bool = False) -> int:
        if self.store.get_stack(name) is None:
            if self.agent.observe(name):
                raise Conflict(f"stack {name} is unknown here but has instances on the host",
                               hint="see `rackfire ps`")
            return 0  # not found on delete is success
        generation = self.store.mark_deleting(name, keep_data)
        self._event(actor, name, name, "destroy", "keeping data disks" if keep_data else "")
        self.queue.add(name)
        return generation

    # day-2 requests ---------------------------------------------------------------------

    def scale(self, stack: str, role: str, count: int, actor: str) -> tuple[int, Plan]:
        """Set a role's instance count as the stack's desired state."""
        if not 0 <= count <= MAX_COUNT:
            raise PrereqError(f"count must be 0 to {MAX_COUNT}, got {count}")
        return self._change(stack, role, {"count": count}, actor, "scale")

    def resize(self, stack: str, role: str, changes: dict[str, float | int | None],
               actor: str) -> tuple[int, Plan]:
        """Set a role's cpu, memory, pids or disk: applied live, recorded as desired."""
        if not changes:
            raise PrereqError("nothing to resize", hint="give --cpu, --memory, --disk or --pids")
        return self._change(stack, role, dict(changes), actor, "resize")

    def push(self, stack: str, role: str, actor: str, *, source: str | None = None,
             label: str = "", image: str | None = None) -> tuple[int, Plan]:
        """Deploy an uploaded source dir, another base image, or both, as the role's next
        release: it rolls out by the role's update policy."""
        with self._audited(actor, stack, f"{stack}/{role}", "push"):
            if source is None and image is None:
                raise PrereqError("nothing to push", hint="give a source dir or --image")
            if source is not None and _role(self._record(stack).spec, role).app is None:
                raise Conflict(f"role {role} has no app to push into",
                               hint="give the role `app: DIR` in the stack file")
        fields: dict[str, Any] = {"image_digest": ""}
        what = []
        if source is not None:
            fields["app"] = AppSource(label, source)
            what.append(f"{label} ({source[:12]})")
        if image is not None:
            fields["image"] = image
            what.append(f"image {image}")
        result = self._change(stack, role, fields, actor, "push", ", ".join(what))
        if source is not None:
            self.store.retry_release(stack, role, source)
        return result

    def rollback(self, stack: str, role: str, version: int | None,
                 actor: str) -> tuple[int, Plan]:
        """Go back to an earlier release of a role (by default the one live before)."""
        with self._audited(actor, stack, f"{stack}/{role}", "rollback"):
            rec = self._record(stack)
            spec_role = _role(rec.spec, role)
            history = self.store.releases(stack, role)
            target = releases.pick(history, releases.current(
                self.store, rec.spec, spec_role, self._image_digest(spec_role)), version)
        return self._change(stack, role, releases.fields_of(target), actor, "rollback",
                            f"to v{target.version}")

    def releases(self, stack: str, role: str | None = None) -> list[tuple[Release, bool]]:
        """A role's releases, newest first, each with whether the role's spec runs it."""
        rec = self._record(stack)
        if role is not None:
            _role(rec.spec, role)
        current = {r.name: releases.current(self.store, rec.spec, r, self._image_digest(r))
                   for r in rec.spec.roles}
        return [(rel, (cur := current.get(rel.role)) is not None and cur.version == rel.version)
                for rel in self.store.releases(stack, role)]

    def _image_digest(self, role: RoleSpec) -> str:
        """The image digest a role runs: pinned by a rollback, else its image's now."""
        if role.image_digest:
            return role.image_digest
        summary = self.agent.image(role.image)
        return summary.digest if summary else UNBUILT

    def _change(self, stack: str, role: str, fields: dict[str, Any], actor: str,
                verb: str, what: str = "", generation: int | None = None) -> tuple[int, Plan]:
        """`fields`: a role's new `count`, resources by name, or release fields. With
        `generation`, only if the stack is still at it (Conflict otherwise)."""
        with self._apply_lock, self._audited(actor, stack, f"{stack}/{role}", verb):
            rec = self._record(stack)
            if generation is not None and rec.generation != generation:
                raise Conflict(f"stack {stack} changed meanwhile (generation "
                               f"{rec.generation}, expected {generation})")
            spec = overrides.with_role(rec.spec, role, fields)
            plan = self._plan_change(spec, rec)
            generation = self.store.update_spec(spec, rec.generation,
                                                overrides.overrides_for(role, fields, actor))
        if not what:
            old = rec.spec.role(role)
            before = {k: old.count if k == "count" else getattr(old.resources, k)
                      for k in fields}
            what = ", ".join(f"{k} {_show(k, before[k])} → {_show(k, v)}"
                             for k, v in fields.items())
        self._event(actor, stack, f"{stack}/{role}", verb, what)
        self.queue.add(stack)
        return generation, replace(plan, generation=generation)

    def operate(self, target: Target, verb: str, actor: str) -> tuple[int, list[InstanceKey]]:
        """`stop`, `start` or `restart` the instances of a stack, role or one instance.
        Recorded per instance as desired state: a stopped one stays stopped until started.
        Returns the stack's new generation and the instances."""
        with self._audited(actor, target.stack, str(target), verb):
            rec = self._record(target.stack)
            keys = [k for k in _desired_keys(rec.spec) if target.matches(k)]
            if not keys:
                raise NotFound(f"{target} matches no instance of stack {target.stack}",
                               hint=f"see `rackfire ps {target.stack}`")
            if verb not in ("stop", "start", "restart"):
                raise PrereqError(f"unknown operation {verb}",
                                  hint="use stop, start or restart")
        now = self.clock()
        if verb == "stop":
            self.store.set_operator(keys, stopped=True)
        elif verb == "restart":
            self.store.set_operator(keys, stopped=False, restart_requested=now)
        elif verb == "start":
            # Those not running start now, as a fresh start; running ones are left alone.
            running = {f.key for f in self.agent.observe(target.stack)
                       if f.state is InstanceState.RUNNING}
            self.store.set_operator([k for k in keys if k in running], stopped=False)
            self.store.set_operator([k for k in keys if k not in running], stopped=False,
                                    restart_requested=now)
        generation = self.store.bump_generation(target.stack)
        self._event(actor, target.stack, str(target), verb, f"{len(keys)} instance(s)")
        self.queue.add(target.stack)
        return generation, keys

    def migrate(self, key: InstanceKey, to: str | None, actor: str) -> Migration:
        """Move one instance to another host (cold: stopped, its disks copied, started
        there). Checked before any change; carried out by the stack's reconcile."""
        with self._audited(actor, key.stack, str(key), "migrate"):
            rec = self._record(key.stack)
            if key not in _desired_keys(rec.spec):
                raise NotFound(f"stack {key.stack} has no instance {key}",
                               hint=f"see `rackfire ps {key.stack}`")
            if any(m.key == key for m in self.fleet.placements.migrations(key.stack)):
                raise Conflict(f"{key} is being migrated already")
            found = next((f for f in self.agent.observe(key.stack) if f.key == key), None)
            if found is None:
                raise Conflict(f"{key} does not exist yet", hint="wait for the stack to "
                               "converge (`rackfire ps`)")
            if found.runtime is not RuntimeKind.CONTAINER:
                raise Conflict(f"{key} runs as a process: it has no disks to move",
                               hint="only container instances migrate")
            st = self.store.statuses(key.stack).get(key)
            if st is not None and st.stopped:
                raise Conflict(f"{key} is stopped by an operator",
                               hint=f"start it first (`rackfire start {key}`)")
            source = found.host
            if to == source:
                raise Conflict(f"{key} is on {to} already")
            target = self._target(rec.spec, key, source, to)
        self.fleet.placements.start_migration(key, source, target, actor)
        self._event(actor, key.stack, str(key), "migrate", f"{source} -> {target}: started")
        self.queue.add(key.stack)
        return next(m for m in self.fleet.placements.migrations(key.stack) if m.key == key)

    def drain(self, host: str, actor: str) -> int:
        """Move every instance off `host`, each role keeping its availability; the host
        gets nothing new meanwhile. How many instances are to move."""
        with self._audited(actor, "", f"host/{host}", "drain"):
            if host == self.fleet.local_name:
                raise Conflict(f"{host} is the server's own host: it cannot be drained",
                               hint="run the server with --no-local-host to keep "
                               "instances off it")
            self.fleet.registry.set_state(host, HostState.DRAINING)
        placed = self.fleet.placements.all()
        leaving = [k for k, h in placed.items() if h == host]
        self._event(actor, "", f"host/{host}", "drain", f"{len(leaving)} instance(s) to move")
        for stack in {k.stack for k in leaving}:
            self.queue.add(stack)
        return len(leaving)

    def _target(self, spec: StackSpec, key: InstanceKey, source: str,
                to: str | None) -> str:
        placed = self.fleet.placements.of_stack(spec.name)
        placed[key] = source
        d = move(self._pool(spec), placed, asks_of([spec]), key, to)
        if d.host is None:
            why = "; ".join(str(r) for r in d.rejected) or "no other host"
            raise Conflict(f"no host can take {key}: {why}",
                           hint="`rackfire capacity` shows what each host has free")
        return d.host

    def stats(self, target: Target) -> list[tuple[InstanceView, InstanceStats | None]]:
        self._record(target.stack)
        views = [v for v in self.instances(target.stack) if target.matches(v.facts.key)]
        measured = {s.key: s for s in self.agent.stats(target.stack)}
        return [(v, measured.get(v.facts.key)) for v in views]

    def _record(self, stack: str) -> StackRecord:
        rec = self.store.get_stack(stack)
        if rec is None or rec.deleting:
            raise NotFound(f"no stack named {stack}", hint="see `rackfire ps`")
        return rec

    def _event(self, actor: str, stack: str, target: str, action: str, reason: str) -> None:
        self.store.add_event(actor, stack, target, action, "ok", reason)

    @contextmanager
    def _audited(self, actor: str, stack: str, target: str, action: str) -> Iterator[None]:
        """A request refused before any change is an event too: who asked, and why not."""
        try:
            yield
        except RackfireError as e:
            self.store.add_event(actor, stack, target, action, "refused", e.message)
            raise

    def _plan_change(self, spec: StackSpec, rec: StackRecord | None) -> Plan:
        """Check that `spec` can be applied, then plan it: a refusal changes nothing."""
        self._check_prereqs(spec, rec)
        desired = self._desired(spec, rec, build=False)
        plan = self._plan(spec.name, rec.generation if rec else 0, spec, desired)
        for action in plan.actions:  # live limits and online growth have limits of their own
            if action.kind is ActionKind.RESIZE and action.request is not None:
                self.agent.check_resize(action.request)
        return plan

    def _check_prereqs(self, spec: StackSpec, rec: StackRecord | None = None) -> None:
        """Refuse, before any change, what cannot be applied."""
        taken = {
            p.host_port: rec.name
            for rec in self.store.stacks() if rec.name != spec.name and not rec.deleting
            for role in rec.spec.roles for p in role.ports
        }
        for role in spec.roles:
            for p in role.ports:
                if p.host_port in taken:
                    raise PrereqError(
                        f"roles.{role.name}.ports: host port {p.host_port} is already "
                        f"published by stack {taken[p.host_port]}",
                        hint="choose another host port")
        busy = self.agent.busy_ports(spec.name, [p for r in spec.roles for p in r.ports])
        if busy:
            raise PrereqError(
                f"host port {busy[0].host_port} is in use on {self.agent.info().name} by "
                "another program", hint="choose another host port, or stop that program")
        declared = {i.name for i in spec.images}
        for role in spec.roles:
            if role.image not in declared and self.agent.image(role.image) is None:
                raise NotFound(
                    f"roles.{role.name}.image: image {role.image!r} is neither declared under "
                    "images: nor built on this host",
                    hint=f"declare it (images: {{{role.image}: {{from: host}}}}) "
                    "or run `rackfire image build`")
        runtimes = self.agent.info().runtimes
        for role in spec.roles:
            if role.runtime is not None and role.runtime not in runtimes:
                raise PrereqError(f"roles.{role.name}.runtime: {role.runtime} is not available "
                                  f"here (available: {', '.join(runtimes)})",
                                  hint="the container runtime needs root and runc")
        for role in spec.roles:
            if role.app is not None and not role.app.digest:
                raise PrereqError(f"roles.{role.name}.app: the source dir {role.app.path} was "
                                  "not uploaded", hint="apply the file with the rackfire CLI, "
                                  "which uploads it, or use `rackfire push`")
            if (role.app or role.data) and (role.runtime or runtimes[0]) \
                    is not RuntimeKind.CONTAINER:
                raise PrereqError(f"roles.{role.name}: app releases and data disks need the "
                                  "container runtime", hint="run the server as root with runc")
        for image in spec.images:
            self.agent.check_image(image)
        keys = set(_desired_keys(spec))
        for m in self.fleet.placements.migrations(spec.name):
            if m.key not in keys:
                raise Conflict(f"{m.key} is being migrated ({m.source} -> {m.target}, "
                               f"{m.step}): it cannot go away meanwhile",
                               hint="try again when it has moved (`rackfire events`)")
        observed = self.agent.observe(spec.name)
        capacity.check_no_shrink(spec, observed)
        if self.fleet.multi_host():
            _refuse_unplaced(spec, self._place(spec, observed))
            return
        # One host: a change that reserves no more than before always passes.
        others = [r.spec for r in self.store.stacks() if r.name != spec.name and not r.deleting]
        capacity.check_fits(self.agent.info().name, self.agent.capacity(), spec,
                            rec.spec if rec and not rec.deleting else None, others)

    # reconcile --------------------------------------------------------------------------

    def reconcile_safely(self, name: str) -> None:
        rec = self.store.get_stack(name)
        generation = rec.generation if rec else 0
        try:
            self.reconcile(name)
        except RackfireError as e:
            log.warning("reconcile %s: %s", name, e.message)
            self.store.set_stack_status(name, generation, "failed", e.message)
            self.queue.add(name, delay=5.0)
        except Exception as e:
            log.exception("reconcile %s crashed", name)
            self.store.set_stack_status(name, generation, "failed", f"internal error: {e}")
            self.queue.add(name, delay=5.0)

    def reconcile(self, name: str) -> None:
        rec = self.store.get_stack(name)
        if rec is None:
            return
        if rec.deleting:
            self._reconcile_deleted(rec)
            return
        desired = self._desired(rec.spec, rec, build=True)
        current = releases.note(self.store, rec, desired.images, desired.layers)
        for role, why in desired.unbuilt.items():  # the old release runs on, untouched
            if current[role].status is not ReleaseStatus.FAILED and self._roll_back(
                    rec, current[role], f"its build failed: {why}"):
                return
            raise ExecError(f"the release of {role} could not be built: {why}",
                            hint="fix the app (its requirements.txt) and push it again")
        if self._migrate(rec, desired):
            desired = self._desired(rec.spec, rec, build=True)  # hosts changed: look again
        moving = migrate.migrating(self.fleet.placements.migrations(name))
        moving |= self.fleet.unknown(name)
        desired = replace(desired, requests=[r for r in desired.requests if r.key not in moving],
                          observed=[f for f in desired.observed if f.key not in moving])
        plan = self._plan(name, rec.generation, rec.spec, desired)
        self._place_new(rec.spec, desired, {a.key for a in plan.actions
                                            if a.kind is ActionKind.CREATE})
        self.agent.ensure_network(desired.network)
        self.store.save_ips(desired.ips)
        if not plan.empty:
            self.store.set_stack_status(name, rec.generation, "progressing",
                                        f"{len(plan.actions)} action(s)")
        outcome = self.executor.run(
            plan, self.clock, lambda down: self._publish(rec, desired, exclude=down))
        for key in outcome.released:
            self.store.release_ip(key)
            self.fleet.placements.drop(key)
        observed = self.agent.observe(name)
        self._publish(rec, desired, observed)
        failing = dict(outcome.rollout_failed)
        for a in plan.actions:
            if a.held and a.kind is ActionKind.REPLACE:
                failing.setdefault(a.key.role, f"rollout held: {a.held}")
        for role, why in failing.items():
            if current[role].status is ReleaseStatus.DEPLOYING and self._roll_back(
                    rec, current[role], why):
                return
        unready = self._unready(rec, observed)
        if not outcome.failed:  # a role whose every instance runs and passes: its release
            settled = {r.name for r in rec.spec.roles} - {k.role for k in unready}
            releases.settle(self.store, [current[r] for r in settled])
        if outcome.failed:
            self.store.set_stack_status(name, rec.generation, "failed", outcome.failed)
            if not outcome.held:  # held: a health change or the resync looks again
                self.queue.add(name, delay=5.0)
        elif outcome.deferred is not None:
            self.queue.add(name, delay=max(0.1, outcome.deferred - self.clock()))
        else:
            self._settle(rec, unready)

    def _roll_back(self, rec: StackRecord, bad: Release, why: str) -> bool:
        """A release failed its rollout: put the role back on the release that was live, as
        a new generation, and mark this one failed. False if there is none to go back to,
        or the stack moved on meanwhile (a newer push or apply wins; it is looked at anew)."""
        target = releases.fallback(self.store.releases(rec.name, bad.role), bad)
        try:
            if target is None:
                raise PrereqError("no earlier release to go back to")
            self._change(rec.name, bad.role, releases.fields_of(target), CONTROLLER, "rollback",
                         f"v{bad.version} failed ({why}); back to v{target.version}",
                         generation=rec.generation)
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

    def _reconcile_deleted(self, rec: StackRecord) -> None:
        observed = self.agent.observe(rec.name)
        self._remove_strays(rec.name, all_copies=True, keep_data=rec.keep_data)
        plan = plan_stack(rec.name, rec.generation, None, [], observed, {}, self.clock())
        outcome = self.executor.run(plan, self.clock)
        if outcome.failed:
            self.store.set_stack_status(rec.name, rec.generation, "failed", outcome.failed)
            self.queue.add(rec.name, delay=5.0)
            return
        self.agent.teardown_stack(rec.name, keep_data=rec.keep_data)
        self.store.forget_stack(rec.name)  # its placements, VNI and migrations too

    def _settle(self, rec: StackRecord, unready: dict[InstanceKey, str]) -> None:
        """Converged when every desired instance runs and passes its check, or is stopped
        by an operator, and no other is left (`unready` is empty). Failed instances make it
        degraded, which only an operator (or a new spec) changes: no fast re-check for
        them."""
        statuses = self.store.statuses(rec.name)
        failed = [why for k, why in unready.items()
                  if (st := statuses.get(k)) is not None and st.failed]
        waiting = [why for k, why in unready.items() if why not in failed]
        if waiting:
            self.store.set_stack_status(rec.name, rec.generation, "progressing",
                                        "waiting for " + waiting[0])
            self.queue.add(rec.name, delay=1.0)
        elif failed:
            self.store.set_stack_status(rec.name, rec.generation, "degraded",
                                        f"{len(failed)} failed: {failed[0]}", converged=True)
        else:
            self.store.set_stack_status(rec.name, rec.generation, "converged", "",
                                        converged=True)

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
        wanted = set(_desired_keys(rec.spec))
        for key in sorted(observed.keys() - wanted):  # a surge or scaled-away instance
            out[key] = f"{key.name} (to be removed)"
        return out

    # shared by plan and reconcile -------------------------------------------------------

    def _desired(self, spec: StackSpec, rec: StackRecord | None, *, build: bool) -> Desired:
        """Every desired instance, rendered with the instances that are ready now. With
        `build`, missing images and release layers are built first."""
        subnet = self._subnet(rec, spec)
        network = NetworkConfig(spec.name, subnet, gateway_of(subnet),
                                int(subnet.rsplit("/", 1)[1]))
        ips = self.store.ips(spec.name) if rec else {}
        missing = [k for role in spec.roles for k in role_keys(spec.name, role, surge=True)
                   if k not in ips]
        ips.update(zip(missing, allocate_ips(subnet, ips.values(), len(missing)), strict=True))
        digests = {}
        for image_name in {r.image for r in spec.roles}:
            summary = self.agent.image(image_name)
            if build and image_name in {i.name for i in spec.images}:
                if summary is None and rec is not None:
                    self.store.set_stack_status(spec.name, rec.generation, "progressing",
                                                f"building image {image_name}")
                summary = self.agent.ensure_image(spec.image(image_name))
            if summary is None and build:
                raise NotFound(f"image {image_name} is not built", hint="rackfire image build")
            digests[image_name] = summary.digest if summary else UNBUILT
        images = {r.name: r.image_digest or digests[r.image] for r in spec.roles}
        layers, unbuilt = {}, {}
        for role in spec.roles:
            if build and role.app is not None and rec is not None and any(
                    r.status is ReleaseStatus.FAILED and not r.layer
                    and r.source == role.app.digest and r.image_digest == images[role.name]
                    for r in self.store.releases(spec.name, role.name)):
                # Its build failed before: not again on every pass, only when pushed again.
                unbuilt[role.name] = "it failed to build before; push it again to retry"
            elif build and role.app is not None:
                if rec is not None:
                    self.store.set_stack_status(spec.name, rec.generation, "progressing",
                                                f"building the release of {role.name}")
                try:
                    layers[role.name] = self.agent.ensure_release(role.app.digest,
                                                                  images[role.name]).digest
                except RackfireError as e:  # that release fails; the reconcile decides
                    unbuilt[role.name] = e.message
        render = partial(render_stack, spec, ips, digests, network,
                         self.agent.info().runtimes[0], app_digests=layers)
        observed = self.agent.observe(spec.name)
        requests = render(ready=self._ready_keys(spec, observed) if rec else ())
        return Desired(network, {r.key: r.ip for r in requests}, requests, images, layers,
                       unbuilt, observed, lambda ready: render(ready=ready))

    def _ready_keys(self, spec: StackSpec, facts: list[InstanceFacts],
                    exclude: Collection[InstanceKey] = ()) -> set[InstanceKey]:
        """The instances that run and pass their check (a role without one: that run)."""
        statuses = self.store.statuses(spec.name)
        checks = {r.name: r.health for r in spec.roles}
        return {f.key for f in facts if f.key.role in checks and f.key not in exclude
                and _ready(f, statuses.get(f.key), checks[f.key.role])}

    def _subnet(self, rec: StackRecord | None, spec: StackSpec) -> str:
        """The stack's subnet, or the one a new stack would get: sized for it."""
        if rec:
            return rec.subnet
        wanted = sum(len(role_keys(spec.name, r, surge=True)) for r in spec.roles)
        return allocate_subnet(self.subnet_pool, self.store.used_subnets(),
                               subnet_prefix(wanted))

    def _migrate(self, rec: StackRecord, desired: Desired) -> bool:
        """Start the moves a draining host needs, carry on every migration of the stack,
        and remove copies that ones interrupted before left behind. Whether any ended."""
        if not self.fleet.multi_host():  # one host: nothing moves, nothing strays
            return False
        self._start_drains(rec, desired)
        requests = {r.key: r for r in desired.requests}
        ended = False
        for m in self.fleet.placements.migrations(rec.name):
            req = requests.get(m.key)
            if req is None:  # no longer wanted (changes that remove it are refused)
                if m.step in ("stopping", "copying"):  # whole on the source still
                    self.fleet.placements.end_migration(m.key, m.source)
                else:
                    log.warning("migration of %s: the instance is no longer wanted", m.key)
                continue
            if migrate.run(m, req, self.fleet, self.store, self._wait_on,
                           failpoints=self.failpoints):
                ended = True
                if self.fleet.placements.host_of(m.key) == m.source:  # reverted
                    self._move_failed[m.key] = time.monotonic()
            else:
                self.queue.add(rec.name, delay=5.0)
        return self._remove_strays(rec.name) or ended

    def _remove_strays(self, stack: str, *, all_copies: bool = False,
                       keep_data: bool = False) -> bool:
        """Remove the copies an interrupted migration left on a host other than the
        instance's placement (with `all_copies`, a migration's target copy too: the stack
        is going). Whether any was removed."""
        if not self.fleet.multi_host():
            return False
        moving = {m.key: m for m in self.fleet.placements.migrations(stack)
                  if m.key in migrate.migrating([m])}
        self.agent.observe(stack)  # strays are judged on what every host has now
        copies = self.fleet.strays(stack)
        if all_copies:  # the stack goes: a move's target copy too, unless it is the instance
            copies += [(m.key, m.target) for m in moving.values()
                       if self.fleet.placements.host_of(m.key) != m.target]
        removed = False
        for key, host in copies:
            if key in moving and not all_copies:
                continue
            try:
                agent = self.fleet.agent_for(host)
                agent.destroy(key)
                if not keep_data:
                    agent.discard_disks(key)
            except RackfireError as e:
                log.warning("removing the stray copy of %s on %s: %s", key, host, e.message)
                continue
            self._event(CONTROLLER, stack, str(key), "cleanup",
                        f"removed a stray copy on {host}")
            removed = True
        return removed

    def _start_drains(self, rec: StackRecord, desired: Desired) -> None:
        """Migrations off draining hosts, no more at once per role than its update policy
        lets be unavailable (at least one: a cold move takes an instance down)."""
        draining = {h.name for h in self.fleet.registry.hosts()
                    if h.state is HostState.DRAINING}
        if not draining:
            return
        placed = self.fleet.placements.of_stack(rec.name)
        ready = self._ready_keys(rec.spec, desired.observed)
        moving = {m.key for m in self.fleet.placements.migrations(rec.name)}
        now = time.monotonic()
        for role in rec.spec.roles:
            mine = [InstanceKey(rec.name, role.name, i) for i in range(role.count)]
            down = {k for k in mine if k not in ready or k in moving}
            for key in mine:
                if placed.get(key) not in draining or key in moving:
                    continue
                if len(down - {key}) >= max(1, role.update.max_unavailable):
                    break  # moving it now would take the role below its availability
                if now - self._move_failed.get(key, -DRAIN_RETRY) < DRAIN_RETRY:
                    continue
                try:
                    target = self._target(rec.spec, key, placed[key], None)
                except PrereqError as e:
                    self.store.add_event(CONTROLLER, rec.name, str(key), "drain", "failed",
                                         e.message)
                    self._move_failed[key] = now
                    continue
                self.fleet.placements.start_migration(key, placed[key], target, CONTROLLER)
                down.add(key)

    def _wait_on(self, req: InstanceRequest, host: str) -> str:
        """Wait until the instance runs and passes its check on `host` (not yet its
        placement): '' or why not."""
        role = next((r for r in self._record(req.key.stack).spec.roles
                     if r.name == req.key.role), None)
        check = role.health if role else None
        timeout = ready_timeout(check, role.update.health_timeout if role else 60.0)
        agent = self.fleet.agent_for(host)
        deadline = time.monotonic() + timeout
        why = "it did not start"
        while time.monotonic() < deadline:
            f = next((f for f in agent.observe(req.key.stack) if f.key == req.key), None)
            if f is not None and f.state is InstanceState.STOPPED:
                return "it stopped"
            if f is not None and f.state is InstanceState.RUNNING:
                if check is None:
                    return ""
                ok, why = agent.probe(req.key, req.ip, check)
                if ok:
                    return ""
            time.sleep(0.5)
        return f"not healthy after {timeout:.0f}s ({why})"

    def _place(self, spec: StackSpec, observed: list[InstanceFacts],
               surge: Collection[InstanceKey] = (), *, explain: bool = False) -> Placement:
        """Where each instance of `spec` would run: the scheduler over the hosts as they
        are now. An instance stays where it runs; only `migrate` and `drain` move one."""
        placed = self.fleet.placements.of_stack(spec.name)
        for f in observed:
            placed.setdefault(f.key, f.host)
        wanted = asks_of([spec])
        roles = {r.name: r for r in spec.roles}
        for key in surge:
            wanted[key] = Ask.of_role(roles[key.role])
        return schedule(self._pool(spec), placed, wanted, explain=explain)

    def _pool(self, spec: StackSpec) -> list[Host]:
        """The hosts as the scheduler sees them for `spec`: every other stack's instances
        hold their reservation on the host they are placed on (a draining one too, until
        they move), and an instance on the move holds one on its target as well."""
        others = [r.spec for r in self.store.stacks() if r.name != spec.name and not r.deleting]
        theirs, mine = asks_of(others), asks_of([spec])
        placed = self.fleet.placements.all()
        held: dict[str, Reservation] = {}
        for key, ask in theirs.items():
            if key in placed:
                held[placed[key]] = held.get(placed[key], Reservation()) + ask.need
        for m in self.fleet.placements.migrations():
            moving = theirs.get(m.key) or mine.get(m.key)
            if moving is not None:
                held[m.target] = held.get(m.target, Reservation()) + moving.need
        return [replace(h, reserved=h.reserved + held.get(h.name, Reservation()))
                for h in pool(self.fleet.views())]

    def _place_new(self, spec: StackSpec, desired: Desired,
                   creating: Collection[InstanceKey]) -> None:
        """Keep the host of each instance to be created that has none yet, before it is
        created there. A surge instance (it lives for minutes, and is not reserved) that
        fits nowhere goes beside its role's first one; any other that fits nowhere fails
        the reconcile."""
        have = self.fleet.placements.of_stack(spec.name)
        new = {f.key: f.host for f in desired.observed  # running before placements were kept
               if f.key not in have}
        todo = [k for k in creating if k not in have and k not in new]
        if todo and not self.fleet.multi_host():  # one host: the apply's check was enough
            new.update(dict.fromkeys(todo, self.fleet.local_name))
        elif todo:
            wanted = set(_desired_keys(spec))
            placement = self._place(spec, desired.observed, [k for k in todo
                                                             if k not in wanted])
            for key in todo:
                d = placement.decision(key)
                if d.host is not None:
                    new[key] = d.host
                elif key in wanted:
                    _refuse_unplaced(spec, placement)
                else:
                    first = have.get(InstanceKey(key.stack, key.role, 0))
                    if first is None:
                        raise PrereqError(f"no host can take the surge instance {key}")
                    new[key] = first
        if new:
            self.fleet.placements.put(new)

    def _plan(self, name: str, generation: int, spec: StackSpec, desired: Desired) -> Plan:
        statuses = self.store.statuses(name)
        controls = {k: s.control for k, s in statuses.items()}
        observed = desired.observed
        checked = {r.name for r in spec.roles if r.health}
        unhealthy, starting = {}, []
        for f in observed:
            if f.state is InstanceState.RUNNING and f.key.role in checked:
                health, why = health_of(f, statuses.get(f.key))
                if health is Health.UNHEALTHY:
                    unhealthy[f.key] = why
                elif health is not Health.HEALTHY:
                    starting.append(f.key)
        return plan_stack(name, generation, spec, desired.requests, observed, controls,
                          self.clock(), unhealthy, starting)

    def _publish(self, rec: StackRecord, desired: Desired,
                 facts: list[InstanceFacts] | None = None,
                 exclude: Collection[InstanceKey] = ()) -> None:
        """Point the published ports and the role names at the instances that are ready,
        leaving out `exclude` (about to go down). An instance's own name stays while it runs
        and is not failing, so it can find itself while it starts."""
        facts = self.agent.observe(rec.name) if facts is None else facts
        observed = {f.key: f for f in facts}
        statuses = self.store.statuses(rec.name)
        ready_keys = self._ready_keys(rec.spec, facts, exclude)
        self._reload_changed(rec, desired.render(ready_keys), observed, settle=bool(exclude))
        ports = []
        hosts: list[tuple[str, list[str]]] = []
        for role in rec.spec.roles:
            mine = [k for k in sorted(observed) if k.role == role.name and k not in exclude
                    and k in desired.ips]
            ready = [k for k in mine if k in ready_keys]
            for k in mine:
                f = observed.get(k)
                if k in ready:
                    hosts.append((desired.ips[k], [k.name, k.role]))
                elif f is not None and f.state is InstanceState.RUNNING and \
                        health_of(f, statuses.get(k))[0] is not Health.UNHEALTHY:
                    hosts.append((desired.ips[k], [k.name]))
            for p in role.ports:
                backends = tuple(f"{_address(observed[k], desired.ips[k])}:{p.container_port}"
                                 for k in ready)
                ports.append(PublishedPort(p, backends))
        self.agent.set_hosts(rec.name, hosts)
        self.agent.publish(rec.name, ports)

    def _reload_changed(self, rec: StackRecord, requests: list[InstanceRequest],
                        observed: dict[InstanceKey, InstanceFacts], *, settle: bool) -> None:
        """Instances whose files changed with who is ready (a load balancer's backend list)
        and that can reload get the new files now, in place: before a drained instance is
        stopped (`settle`: and a moment for the reload to take), and as soon as a new one
        is ready. Others wait for the next plan (a reconfigure)."""
        reloaded = 0
        for req in requests:
            f = observed.get(req.key)
            if f is None or not reloadable(req, f):
                continue
            try:
                self.agent.reload(req)
            except RackfireError as e:
                self.store.add_event(CONTROLLER, rec.name, str(req.key), "reload", "failed",
                                     e.message)
                continue
            reloaded += 1
            self.store.add_event(CONTROLLER, rec.name, str(req.key), "reload", "ok",
                                 "who is ready changed")
        if reloaded and settle:
            time.sleep(RELOAD_SETTLE)

    # reads ------------------------------------------------------------------------------

    def instances(self, stack: str | None = None) -> list[InstanceView]:
        facts = sorted(self.agent.observe(stack), key=lambda f: f.key)
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
            out.append(InstanceView(f, health, message, st))
        return out


def _ready(f: InstanceFacts | None, st: InstanceStatus | None, health: HealthSpec | None) -> bool:
    if f is None or f.state is not InstanceState.RUNNING:
        return False
    return health is None or health_of(f, st)[0] is Health.HEALTHY


def _address(f: InstanceFacts, ip: str) -> str:
    return f.ip or ip


def _refuse_unplaced(spec: StackSpec, placement: Placement) -> None:
    """Refuse, with the scheduler's reasons, a stack some instance of which fits nowhere."""
    unplaced = [d for d in placement.unplaced if d.key.stack == spec.name]
    if unplaced:
        why = "; ".join(line.strip() for line in explain_decision(unplaced[0]))
        raise PrereqError(
            f"stack {spec.name} does not fit: {len(unplaced)} instance(s) cannot be placed "
            f"({why})", hint="rackfire reserves what each instance asks for and never "
            "overcommits; lower the role's resources or count, or add hosts "
            "(`rackfire capacity` shows what is free)")


def _role(spec: StackSpec, name: str) -> RoleSpec:
    for r in spec.roles:
        if r.name == name:
            return r
    raise NotFound(f"stack {spec.name} has no role {name}",
                   hint=f"its roles: {', '.join(r.name for r in spec.roles) or 'none'}")


def _desired_keys(spec: StackSpec) -> list[InstanceKey]:
    return [InstanceKey(spec.name, r.name, i) for r in spec.roles for i in range(r.count)]

