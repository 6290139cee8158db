"""A stack cloned for a trial upgrade, promoted to production or thrown away, and what two
stacks' specs and releases differ in.

A clone is a restore of a snapshot (the one given, or one taken now) into a new stack: its
own subnet and VNI (every new stack's), its disks copies of the snapshot's (reflinks where
the data dir allows), its published ports moved by an offset and no floating address, so
nothing of the original is shared and, stacks being isolated from each other
(net/egress.py), no traffic passes between them.

Promoting it gives it the original's published ports and floating address; the original is
stopped and keeps its instances and disks, without ports, until it is destroyed: going back
is promoting it again.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import replace
from typing import Any

from rackfire.control.commands import Commands
from rackfire.control.fleet import Fleet
from rackfire.control.snapshots import SnapshotCommands
from rackfire.errors import Conflict, PrereqError, RackfireError
from rackfire.model.instance import Target
from rackfire.model.records import ReleaseStatus
from rackfire.model.stack import PortMap, StackSpec
from rackfire.store import StateStore

DEFAULT_OFFSET = 1000
PORTS_FREED = 30.0  # seconds a promote waits for the original's ports to be released
LOOK = 0.2


class CloneCommands:
    def __init__(self, store: StateStore, fleet: Fleet, commands: Commands,
                 snapshots: SnapshotCommands) -> None:
        self.store, self.fleet, self.commands, self.snapshots = store, fleet, commands, snapshots

    def clone(self, stack: str, new: str, snapshot: str | None, port_offset: int | None,
              actor: str) -> tuple[int, str]:
        """Make stack `new` a copy of `stack` (of its snapshot `snapshot`, or of a snapshot
        taken now): (its generation, the snapshot it was made from)."""
        with self.commands.audited(actor, new, f"{stack} -> {new}", "clone"):
            src = self.commands.record(stack)
            if self.store.get_stack(new) is not None:
                raise Conflict(f"stack {new} exists", hint="clone into a new name, or "
                               f"`rackfire destroy {new}` first")
            offset = DEFAULT_OFFSET if port_offset is None else port_offset
            ports = [p for r in src.spec.roles for p in r.ports]
            if any(not 0 < p.host_port + offset < 65536 for p in ports):
                raise PrereqError(f"a port offset of {offset} takes a published port of "
                                  f"{stack} out of 1-65535", hint="give --port-offset")
            if ports and offset == 0:
                raise PrereqError(f"{stack} publishes ports: a clone needs its own",
                                  hint="give a --port-offset other than 0")
            snap = self.snapshots.get(stack, snapshot) if snapshot else None
            if snap is not None and snap.scope != stack:
                raise PrereqError(f"snapshot {snap.ref} holds only {snap.scope}",
                                  hint="clone from a snapshot of the whole stack")
        taken = snap is None
        snap = snap or self.snapshots.take(Target(stack), None, actor)
        spec = _moved(replace(snap.spec, name=new, vip=""), offset)
        try:
            generation, _ = self.snapshots.restore(stack, snap.name, new, False, actor,
                                                   spec=spec)
        except RackfireError:
            if taken:  # taken for this clone only
                self.snapshots.remove(stack, snap.name, actor)
            raise
        self.commands.event(actor, new, new, "clone", f"of {snap.ref}, ports "
                            f"{'+' if offset >= 0 else ''}{offset}")
        return generation, snap.ref

    def promote(self, new: str, stack: str, actor: str) -> int:
        """Give `new` the published ports and floating address of `stack`, which is stopped
        (without ports) and kept: its new generation."""
        with self.commands.audited(actor, new, f"{new} -> {stack}", "promote"):
            if new == stack:
                raise Conflict(f"{stack} cannot be promoted over itself",
                               hint="promote a clone of it: `rackfire clone` makes one")
            old, rec = self.commands.record(stack), self.commands.record(new)
            mine = {r.name for r in rec.spec.roles}
            missing = [r.name for r in old.spec.roles if r.ports and r.name not in mine]
            if missing:
                raise Conflict(f"{new} has no role {missing[0]} to take the ports of "
                               f"{stack}/{missing[0]}")
        ports = {r.name: r.ports for r in old.spec.roles}
        promoted = replace(rec.spec, vip=old.spec.vip, roles=tuple(
            replace(r, ports=ports.get(r.name, ())) for r in rec.spec.roles))
        kept = replace(old.spec, vip="", roles=tuple(replace(r, ports=())
                                                     for r in old.spec.roles))
        self.commands.operate(Target(stack), "stop", actor)
        self.store.update_spec(kept, self.commands.record(stack).generation, [])
        self.commands.enqueue(stack)
        try:
            self._wait_freed(new, [p for r in old.spec.roles for p in r.ports], stack)
            generation, _ = self.commands.apply(promoted, None, actor)
        except RackfireError:  # the original back as it was: serving, with its ports
            self.store.update_spec(old.spec, self.commands.record(stack).generation, [])
            self.commands.operate(Target(stack), "start", actor)
            raise
        self.commands.event(actor, new, new, "promote", f"took the ports of {stack}, which "
                            "is stopped")
        return generation

    def _wait_freed(self, new: str, ports: list[PortMap], old: str) -> None:
        hosts = sorted(self.fleet.holding(old) | self.fleet.holding(new))
        deadline = time.monotonic() + PORTS_FREED
        while ports:
            busy = [p for h in hosts for p in self.fleet.link(h).busy_ports(new, ports)]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise Conflict(f"port {busy[0].host_port} is still held {PORTS_FREED:.0f} s "
                               f"after {old} was stopped", hint=f"see `rackfire ps {old}`; "
                               "promote again once it is free")
            time.sleep(LOOK)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """How stack `b`'s spec and live releases differ from `a`'s."""
        ra, rb = self.commands.record(a), self.commands.record(b)
        lines = list(difflib.unified_diff(_text(ra.spec), _text(rb.spec), a, b, lineterm="",
                                          n=2))
        releases = []
        for role in sorted({r.name for r in ra.spec.roles} | {r.name for r in rb.spec.roles}):
            pair = [self._live(s, role) for s in (a, b)]
            if _runs(pair[0]) != _runs(pair[1]):
                releases.append({"role": role, "a": pair[0], "b": pair[1]})
        return {"a": a, "b": b, "spec": lines, "releases": releases}

    def _live(self, stack: str, role: str) -> dict[str, Any] | None:
        """What the role runs (its version is the stack's own numbering: not compared)."""
        for r in self.store.releases(stack, role):
            if r.status is ReleaseStatus.LIVE:
                return {"source": r.source[:12], "image": r.image_digest[:12],
                        "label": r.label, "version": r.version}
        return None


def _runs(release: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in release.items() if k != "version"} if release else None


def _moved(spec: StackSpec, offset: int) -> StackSpec:
    return replace(spec, roles=tuple(
        replace(r, ports=tuple(replace(p, host_port=p.host_port + offset) for p in r.ports))
        for r in spec.roles))


def _text(spec: StackSpec) -> list[str]:
    """The spec as lines to compare, its name left out (two stacks differ in it anyway)."""
    data = spec.to_json()
    data.pop("name")
    return json.dumps(data, indent=2, sort_keys=True).splitlines()
