"""Snapshots of a stack (or one role, or one instance) and restores from them.

A snapshot is taken at one point on each host: the host freezes every listed instance's
filesystems at once, copies their disks (reflinks where the data dir allows) and thaws them
(agent/snapshots.py). The hosts of a stack are asked at the same moment, in parallel; the
record (store/snapshots.py) keeps the desired state of that moment beside where each copy
is. A host that cannot take its part fails the whole snapshot: what the others took is
removed, and the record says why.

A restore plants *seeds*: each instance of the snapshot is to be made from its copy, by
its next create or replace (control/executor.py), which the planner asks for as a replace
("restore from shop@before"), so it rolls as a release does. A whole-stack snapshot's spec
becomes the stack's desired state again (its releases with it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from rackfire.control.commands import Commands
from rackfire.control.fleet import Fleet
from rackfire.errors import Conflict, NotFound, PrereqError, RackfireError
from rackfire.model.agent import SnapshotPart
from rackfire.model.instance import InstanceKey, Target
from rackfire.model.records import (
    ReleaseStatus,
    Seed,
    Snapshot,
    SnapshotCopy,
    SnapshotState,
)
from rackfire.model.stack import NAME_PATTERN, StackSpec
from rackfire.store import StateStore

T = TypeVar("T")


class SnapshotCommands:
    def __init__(self, store: StateStore, fleet: Fleet, commands: Commands,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.fleet, self.commands, self.clock = store, fleet, commands, clock
        self.table = store.snapshots

    def take(self, target: Target, name: str | None, actor: str) -> Snapshot:
        stack = target.stack
        with self.commands.audited(actor, stack, str(target), "snapshot"):
            rec = self.commands.record(stack)
            name = name or time.strftime("s%Y%m%d-%H%M%S", time.gmtime(self.clock()))
            check_name(name)
            facts = [f for f in self.fleet.observe(stack) if target.matches(f.key)]
            if not facts:
                raise Conflict(f"{target} has no instances to snapshot",
                               hint="see `rackfire ps`")
            lost = self.fleet.lost(stack)
            gone = [f.key for f in facts if f.key in lost]
            if gone:
                raise Conflict(f"instance {gone[0]} is on a host that is gone",
                               hint="snapshot it once its host is back or it runs elsewhere")
            live = tuple(r for r in self.store.releases(stack)
                         if r.status in (ReleaseStatus.LIVE, ReleaseStatus.DEPLOYING))
            snap = Snapshot(stack, name, str(target), self.clock(), actor,
                            SnapshotState.TAKING, rec.generation, rec.spec,
                            tuple(self.store.overrides(stack)), live)
            self.table.begin(snap)
        by_host: dict[str, list[InstanceKey]] = {}
        for f in facts:
            by_host.setdefault(f.host, []).append(f.key)
        started = time.monotonic()
        results = on_hosts(by_host, lambda host, keys:
                           self.fleet.link(host).take_snapshot(stack, name, keys))
        failed = [(h, r) for h, r in results.items() if isinstance(r, RackfireError)]
        if failed:
            host, error = failed[0]
            on_hosts({h: [] for h in by_host},
                     lambda h, _: self.fleet.link(h).remove_snapshot(stack, name))
            why = f"host {host}: {error.message}"
            self.table.finish(stack, name, SnapshotState.FAILED, (), why)
            self.store.add_event(actor, stack, str(target), "snapshot", "failed", why)
            raise type(error)(f"snapshot {snap.ref} failed on {why}",
                              hint="nothing of it was kept") from None
        copies = tuple(_copy(host, p) for host, parts in results.items()
                       if not isinstance(parts, RackfireError) for p in parts)
        self.table.finish(stack, name, SnapshotState.READY, copies)
        taken = replace(snap, state=SnapshotState.READY, copies=copies)
        longest = max((c.frozen_ms for c in copies), default=0.0)
        self.commands.event(actor, stack, str(target), "snapshot",
                            f"{taken.ref}: {len(copies)} instance(s) in "
                            f"{time.monotonic() - started:.2f} s, frozen at most "
                            f"{longest:.0f} ms")
        return taken

    def recover(self) -> None:
        """At the server's start: a snapshot it was taking when it stopped is failed, and
        what its hosts made of it removed (they are asked again at the next `rm`)."""
        for snap in self.table.of_stack():
            if snap.state is SnapshotState.TAKING:
                self._remove_everywhere(snap)
                self.table.finish(snap.stack, snap.name, SnapshotState.FAILED, (),
                                  "the server stopped while it was taken")

    def _remove_everywhere(self, snap: Snapshot) -> None:
        """Have every host that may hold a part of it remove that (errors left: best effort)."""
        def remove(host: str, _: list[InstanceKey]) -> None:
            self.fleet.link(host).remove_snapshot(snap.stack, snap.name)

        hosts = self.fleet.holding(snap.stack) | {c.host for c in snap.copies}
        on_hosts({h: [] for h in hosts}, remove)

    def remove(self, stack: str, name: str, actor: str) -> None:
        with self.commands.audited(actor, stack, f"{stack}@{name}", "snapshot rm"):
            snap = self.get(stack, name)
            hosts = {c.host for c in snap.copies}
        results = on_hosts({h: [] for h in hosts},
                           lambda h, _: self.fleet.link(h).remove_snapshot(stack, name))
        failed = [(h, r) for h, r in results.items() if isinstance(r, RackfireError)]
        if failed:  # kept, so that a later rm finds what is left
            raise type(failed[0][1])(f"snapshot {snap.ref} could not be removed from host "
                                     f"{failed[0][0]}: {failed[0][1].message}",
                                     hint="run `rackfire snapshot rm` again")
        self.table.drop(stack, name)
        self.commands.event(actor, stack, snap.ref, "snapshot rm", "")

    def get(self, stack: str, name: str) -> Snapshot:
        snap = self.table.get(stack, name)
        if snap is None:
            raise NotFound(f"no snapshot {stack}@{name}",
                           hint=f"see `rackfire snapshot ls {stack}`")
        return snap

    def of_stack(self, stack: str | None = None) -> list[Snapshot]:
        return self.table.of_stack(stack)

    def restore(self, stack: str, name: str, to: str | None, confirm: bool, actor: str,
                *, spec: StackSpec | None = None) -> tuple[int, list[InstanceKey]]:
        """Plant the snapshot's seeds in stack `to` (default: its own) and make its spec (or
        `spec`, a clone's) the desired one, for a whole-stack snapshot: every instance it
        holds is replaced from its copy, rolling. Refused, before any change, onto instances
        that run unless `confirm`, or if an instance is now on another host than its copy."""
        target = to or stack
        with self.commands.audited(actor, target, f"{stack}@{name}", "restore"):
            snap = self.get(stack, name)
            if snap.state is not SnapshotState.READY:
                raise Conflict(f"snapshot {snap.ref} is {snap.state}, not ready",
                               hint=snap.error or "take another one")
            check_name(target, "stack")
            rec = self.store.get_stack(target)
            if rec is not None and rec.deleting:
                raise Conflict(f"stack {target} is being destroyed",
                               hint="wait until `rackfire destroy` finishes")
            seeds = [Seed(_key(target, c.instance), stack, name, c.instance, c.host)
                     for c in snap.copies]
            running = {f.key for f in self.fleet.observe(target)} if rec else set()
            hit = [s.key for s in seeds if s.key in running]
            if hit and not confirm:
                raise Conflict(f"restoring {snap.ref} replaces the disks of {len(hit)} "
                               f"instance(s) of {target} that exist now, from "
                               f"{hit[0].name} on", hint="add -y to go ahead")
            placed = self.store.placements.of_stack(target)
            for s in seeds:
                if placed.get(s.key, s.host) != s.host:
                    raise PrereqError(f"{s.key.name} of {target} runs on host "
                                      f"{placed[s.key]}, its copy in {snap.ref} is on host "
                                      f"{s.host}", hint=f"migrate it back to {s.host} first")
            whole = snap.scope == stack
            if not whole and rec is None:
                raise NotFound(f"no stack named {target}", hint=f"{snap.ref} holds only "
                               f"{snap.scope}: restore it onto its stack")
        self.table.plant(seeds)
        new = {s.key: s.host for s in seeds if s.key not in placed}
        self.store.placements.put(new)
        if not whole:
            assert rec is not None
            generation = self.store.bump_generation(target)
            self.commands.event(actor, target, snap.ref, "restore", f"{len(seeds)} instance(s)")
            self.commands.enqueue(target)
            return generation, [s.key for s in seeds]
        try:
            generation, _ = self.commands.apply(spec or replace(snap.spec, name=target), None,
                                                actor)
        except RackfireError:  # refused by apply's checks: nothing of it stays
            for s in seeds:
                self.table.reap(s.key)
            for key in new:
                self.store.placements.drop(key)
            raise
        self.commands.event(actor, target, snap.ref, "restore",
                            f"{len(seeds)} instance(s), generation {generation}")
        return generation, [s.key for s in seeds]


def on_hosts(work: dict[str, list[InstanceKey]],
             call: Callable[[str, list[InstanceKey]], T]) -> dict[str, T | RackfireError]:
    """`call` on every host of `work` at once: its answer, or the error it raised."""
    def one(host: str) -> T | RackfireError:
        try:
            return call(host, work[host])
        except RackfireError as e:
            return e

    if not work:
        return {}
    with ThreadPoolExecutor(len(work), thread_name_prefix="hosts") as pool:
        return dict(zip(work, pool.map(one, work), strict=True))


def _key(stack: str, instance: str) -> InstanceKey:
    role, index = instance.rsplit("-", 1)
    return InstanceKey(stack, role, int(index))


def _copy(host: str, p: SnapshotPart) -> SnapshotCopy:
    return SnapshotCopy(p.key.name, host, tuple((d.name, d.size, d.used) for d in p.disks),
                        p.method, p.frozen_ms)


def check_name(name: str, what: str = "snapshot") -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise PrereqError(f"invalid {what} name {name!r}",
                          hint="lowercase letters, digits and hyphens, at most 32, starting "
                               "with a letter")
