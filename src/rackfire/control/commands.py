"""The API's verbs, each in Ganeti's phases: the arguments, then the prerequisites (which
change nothing when they refuse: a refusal is an event too, with who asked and why not),
then the desired state written and the stack enqueued. The reconcile does the rest."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from rackfire.control import capacity, overrides, releases, vip
from rackfire.control.desired import DesiredState, desired_keys
from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.control.placement import Placer, refuse_unplaced
from rackfire.errors import Conflict, NotFound, PrereqError, RackfireError
from rackfire.model.host import HostState
from rackfire.model.instance import InstanceKey, InstanceState, Target
from rackfire.model.records import Migration
from rackfire.model.runtime import Need, describe, role_needs
from rackfire.model.stack import MAX_COUNT, AppSource, RoleSpec, StackSpec
from rackfire.model.units import show_value as _show
from rackfire.plan import ActionKind, Plan
from rackfire.plan.steps import UNBUILT
from rackfire.schedule import explain
from rackfire.store import Release, StackRecord, StateStore


class Commands:
    def __init__(self, store: StateStore, fleet: Fleet, clock: Callable[[], float],
                 desired: DesiredState, placer: Placer,
                 enqueue: Callable[[str], None]) -> None:
        self.store, self.fleet, self.clock = store, fleet, clock
        self.agent: Fleet = fleet  # every host, as one agent: calls go where instances are
        self.desired, self.placer, self.enqueue = desired, placer, enqueue
        self._apply_lock = threading.Lock()  # two new stacks must not take one free subnet

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
            placement = tuple(explain(self.placer.place(spec, self.agent.observe(spec.name),
                                                  explain=True)))
        return replace(plan, notes=tuple(notes), placement=placement)

    def apply(self, spec: StackSpec, expected_generation: int | None,
              actor: str = CONTROLLER) -> tuple[int, Plan]:
        """StateStore the spec as the stack's next generation and start converging.
        Every check runs before the store is touched: if this raises, nothing changed."""
        with self.audited(actor, spec.name, spec.name, "apply"):
            # A new tarball is read whole once, outside the lock (the plan's check under it
            # is then free): a large one must not hold up every other apply meanwhile.
            for image in spec.images:
                self.agent.images.check_image(image)
            with self._apply_lock:
                plan = self.plan(spec)  # two new stacks must not take one free subnet
                subnet = self.desired.subnet(self.store.get_stack(spec.name), spec)
                generation = self.store.put_stack(spec, subnet, expected_generation, actor)
                for role in spec.roles:
                    if role.app is not None:
                        self.store.retry_release(spec.name, role.name, role.app.digest)
        self.event(actor, spec.name, spec.name, "apply", f"generation {generation}, "
                    f"{len(plan.actions)} change(s)")
        self.enqueue(spec.name)
        return generation, replace(plan, generation=generation)

    def destroy(self, name: str, actor: str = CONTROLLER, keep_data: bool = False) -> int:
        if self.store.get_stack(name) is None:
            if self.agent.observe(name):
                raise Conflict(f"stack {name} is unknown here but has instances on the host",
                               hint="see `rackfire ps`")
            return 0  # not found on delete is success
        generation = self.store.mark_deleting(name, keep_data)
        self.event(actor, name, name, "destroy", "keeping data disks" if keep_data else "")
        self.enqueue(name)
        return generation

    # day-2 requests ---------------------------------------------------------------------

    def scale(self, stack: str, role: str, count: int, actor: str) -> tuple[int, Plan]:
        """Set a role's instance count as the stack's desired state."""
        if not 0 <= count <= MAX_COUNT:
            raise PrereqError(f"count must be 0 to {MAX_COUNT}, got {count}")
        return self.change(stack, role, {"count": count}, actor, "scale")

    def resize(self, stack: str, role: str, changes: dict[str, float | int | None],
               actor: str) -> tuple[int, Plan]:
        """Set a role's cpu, memory, pids or disk: applied live, recorded as desired."""
        if not changes:
            raise PrereqError("nothing to resize", hint="give --cpu, --memory, --disk or --pids")
        return self.change(stack, role, dict(changes), actor, "resize")

    def push(self, stack: str, role: str, actor: str, *, source: str | None = None,
             label: str = "", image: str | None = None) -> tuple[int, Plan]:
        """Deploy an uploaded source dir, another base image, or both, as the role's next
        release: it rolls out by the role's update policy."""
        with self.audited(actor, stack, f"{stack}/{role}", "push"):
            if source is None and image is None:
                raise PrereqError("nothing to push", hint="give a source dir or --image")
            if source is not None and _role(self.record(stack).spec, role).app is None:
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
        result = self.change(stack, role, fields, actor, "push", ", ".join(what))
        if source is not None:
            self.store.retry_release(stack, role, source)
        return result

    def rollback(self, stack: str, role: str, version: int | None,
                 actor: str) -> tuple[int, Plan]:
        """Go back to an earlier release of a role (by default the one live before)."""
        with self.audited(actor, stack, f"{stack}/{role}", "rollback"):
            rec = self.record(stack)
            spec_role = _role(rec.spec, role)
            history = self.store.releases(stack, role)
            target = releases.pick(history, releases.current(
                self.store, rec.spec, spec_role, self.image_digest(spec_role)), version)
        return self.change(stack, role, releases.fields_of(target), actor, "rollback",
                            f"to v{target.version}")

    def releases(self, stack: str, role: str | None = None) -> list[tuple[Release, bool]]:
        """A role's releases, newest first, each with whether the role's spec runs it."""
        rec = self.record(stack)
        if role is not None:
            _role(rec.spec, role)
        current = {r.name: releases.current(self.store, rec.spec, r, self.image_digest(r))
                   for r in rec.spec.roles}
        return [(rel, (cur := current.get(rel.role)) is not None and cur.version == rel.version)
                for rel in self.store.releases(stack, role)]

    def image_digest(self, role: RoleSpec) -> str:
        """The image digest a role runs: pinned by a rollback, else its image's now."""
        if role.image_digest:
            return role.image_digest
        summary = self.agent.images.image(role.image)
        return summary.digest if summary else UNBUILT

    def change(self, stack: str, role: str, fields: dict[str, Any], actor: str,
                verb: str, what: str = "", generation: int | None = None) -> tuple[int, Plan]:
        """`fields`: a role's new `count`, resources by name, or release fields. With
        `generation`, only if the stack is still at it (Conflict otherwise)."""
        with self._apply_lock, self.audited(actor, stack, f"{stack}/{role}", verb):
            rec = self.record(stack)
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
        self.event(actor, stack, f"{stack}/{role}", verb, what)
        self.enqueue(stack)
        return generation, replace(plan, generation=generation)

    def operate(self, target: Target, verb: str, actor: str) -> tuple[int, list[InstanceKey]]:
        """`stop`, `start` or `restart` the instances of a stack, role or one instance.
        Recorded per instance as desired state: a stopped one stays stopped until started.
        Returns the stack's new generation and the instances."""
        with self.audited(actor, target.stack, str(target), verb):
            rec = self.record(target.stack)
            keys = [k for k in desired_keys(rec.spec) if target.matches(k)]
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
        self.event(actor, target.stack, str(target), verb, f"{len(keys)} instance(s)")
        self.enqueue(target.stack)
        return generation, keys

    def migrate(self, key: InstanceKey, to: str | None, actor: str) -> Migration:
        """Move one instance to another host (cold: stopped, its disks copied, started
        there). Checked before any change; carried out by the stack's reconcile."""
        with self.audited(actor, key.stack, str(key), "migrate"):
            rec = self.record(key.stack)
            if key not in desired_keys(rec.spec):
                raise NotFound(f"stack {key.stack} has no instance {key}",
                               hint=f"see `rackfire ps {key.stack}`")
            if any(m.key == key for m in self.fleet.placements.migrations(key.stack)):
                raise Conflict(f"{key} is being migrated already")
            found = next((f for f in self.agent.observe(key.stack) if f.key == key), None)
            if found is None:
                raise Conflict(f"{key} does not exist yet", hint="wait for the stack to "
                               "converge (`rackfire ps`)")
            if self.fleet.facts_of(found.host).lacks(found.runtime, {Need.COLD_MIGRATE}):
                raise Conflict(f"{key} runs on the {found.runtime} runtime, which cannot move "
                               "it to another host", hint="only instances of a runtime that "
                               "can move its disks (container) migrate")
            st = self.store.statuses(key.stack).get(key)
            if st is not None and st.stopped:
                raise Conflict(f"{key} is stopped by an operator",
                               hint=f"start it first (`rackfire start {key}`)")
            source = found.host
            if to == source:
                raise Conflict(f"{key} is on {to} already")
            target = self.placer.target(rec.spec, key, source, to)
        self.fleet.placements.start_migration(key, source, target, actor)
        self.event(actor, key.stack, str(key), "migrate", f"{source} -> {target}: started")
        self.enqueue(key.stack)
        return next(m for m in self.fleet.placements.migrations(key.stack) if m.key == key)

    def drain(self, host: str, actor: str) -> int:
        """Move every instance off `host`, each role keeping its availability; the host
        gets nothing new meanwhile. How many instances are to move."""
        with self.audited(actor, "", f"host/{host}", "drain"):
            if host == self.fleet.server_host:
                raise Conflict(f"{host} is the server's own host: it cannot be drained",
                               hint="run the server with --no-local-host to keep "
                               "instances off it")
            self.fleet.registry.set_state(host, HostState.DRAINING)
        placed = self.fleet.placements.all()
        leaving = [k for k, h in placed.items() if h == host]
        self.event(actor, "", f"host/{host}", "drain", f"{len(leaving)} instance(s) to move")
        for stack in {k.stack for k in leaving}:
            self.enqueue(stack)
        return len(leaving)

    def fence(self, host: str, actor: str) -> int:
        """Declare `host` dead at once (as Kubernetes' out-of-service taint): what it held
        is placed again now, singletons too, without waiting for its fence deadline; its
        epoch rises, so a call meant for it as it was is refused there. Should it be alive
        after all, its next heartbeat's answer has it destroy every replaced copy. How many
        instances are to be placed again."""
        with self.audited(actor, "", f"host/{host}", "fence"):
            if host == self.fleet.server_host:
                raise Conflict(f"{host} is the server's own host: it cannot be fenced",
                               hint="stop the server to stop its instances")
            epoch = self.fleet.registry.fence(host)
            self.fleet.lapses.set(self.fleet.registry.hosts(), self.fleet.liveness)  # at once
        placed = [k for k, h in self.fleet.placements.all().items() if h == host]
        self.event(actor, "", f"host/{host}", "fence",
                   f"declared dead: epoch {epoch}, {len(placed)} instance(s) to place again")
        for stack in {k.stack for k in placed}:
            self.enqueue(stack)
        return len(placed)

    def ready(self, host: str, actor: str) -> None:
        """Bring a drained or fenced host back: it takes instances again."""
        with self.audited(actor, "", f"host/{host}", "ready"):
            if host == self.fleet.server_host:
                raise Conflict(f"{host} is the server's own host: it is always ready")
            self.fleet.registry.set_state(host, HostState.READY)
        self.event(actor, "", f"host/{host}", "ready", "takes instances again")
        for rec in self.store.stacks():
            self.enqueue(rec.name)

    def record(self, stack: str) -> StackRecord:
        rec = self.store.get_stack(stack)
        if rec is None or rec.deleting:
            raise NotFound(f"no stack named {stack}", hint="see `rackfire ps`")
        return rec

    def event(self, actor: str, stack: str, target: str, action: str, reason: str) -> None:
        self.store.add_event(actor, stack, target, action, "ok", reason)

    @contextmanager
    def audited(self, actor: str, stack: str, target: str, action: str) -> Iterator[None]:
        """A request refused before any change is an event too: who asked, and why not."""
        try:
            yield
        except RackfireError as e:
            self.store.add_event(actor, stack, target, action, "refused", e.message)
            raise

    def _plan_change(self, spec: StackSpec, rec: StackRecord | None) -> Plan:
        """Check that `spec` can be applied, then plan it: a refusal changes nothing."""
        self._check_prereqs(spec, rec)
        desired = self.desired.make(spec, rec, build=False)
        plan = self.desired.plan(spec.name, rec.generation if rec else 0, spec, desired)
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
        if spec.vip:
            taken_vips = {r.spec.vip: r.name for r in self.store.stacks()
                          if r.name != spec.name and not r.deleting and r.spec.vip}
            why = vip.check(spec.vip, {h.name: h.facts for h in self.fleet.registry.hosts()},
                            self.fleet.underlay_ips(), taken_vips)
            if why:
                raise PrereqError(f"vip: {why}", hint="choose a free address of the network "
                                  "the hosts share (`rackfire hosts --json`: facts.underlay)")
        declared = {i.name for i in spec.images}
        for role in spec.roles:
            if role.image not in declared and self.agent.images.image(role.image) is None:
                raise NotFound(
                    f"roles.{role.name}.image: image {role.image!r} is neither declared under "
                    "images: nor built on this host",
                    hint=f"declare it (images: {{{role.image}: {{from: host}}}}) "
                    "or run `rackfire image build`")
        runtimes = self.agent.info().runtimes
        facts = self.fleet.facts_of(self.fleet.server_host)
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
            kind = role.runtime or runtimes[0]
            lacking = facts.lacks(kind, role_needs(role) & {Need.APP_LAYERS, Need.DISKS})
            if lacking:
                raise PrereqError(f"roles.{role.name}: {describe(lacking)} need a runtime that "
                                  f"has them, and {kind} has not",
                                  hint="run the server as root with runc (the container "
                                  "runtime)")
        for image in spec.images:
            self.agent.images.check_image(image)
        keys = set(desired_keys(spec))
        for m in self.fleet.placements.migrations(spec.name):
            if m.key not in keys:
                raise Conflict(f"{m.key} is being migrated ({m.source} -> {m.target}, "
                               f"{m.step}): it cannot go away meanwhile",
                               hint="try again when it has moved (`rackfire events`)")
        observed = self.agent.observe(spec.name)
        capacity.check_no_shrink(spec, observed)
        if self.fleet.sole_host() is None:
            refuse_unplaced(spec, self.placer.place(spec, observed))
            return
        # One host: a change that reserves no more than before always passes.
        others = [r.spec for r in self.store.stacks() if r.name != spec.name and not r.deleting]
        capacity.check_fits(self.agent.info().name, self.agent.capacity(), spec,
                            rec.spec if rec and not rec.deleting else None, others)


def _role(spec: StackSpec, name: str) -> RoleSpec:
    for r in spec.roles:
        if r.name == name:
            return r
    raise NotFound(f"stack {spec.name} has no role {name}",
                   hint=f"its roles: {', '.join(r.name for r in spec.roles) or 'none'}")
