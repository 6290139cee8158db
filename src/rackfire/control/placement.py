"""The host pool as the scheduler sees it, and the placements kept from its decisions: an
instance's host is written before it is created there, and it stays there until `migrate`
or `drain` moves it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from rackfire.control.desired import Desired, desired_keys
from rackfire.control.fleet import Fleet
from rackfire.control.hosts import asks_of, pool
from rackfire.errors import Conflict, PrereqError
from rackfire.model.host import Host, Reservation
from rackfire.model.instance import InstanceFacts, InstanceKey
from rackfire.model.stack import StackSpec
from rackfire.schedule import Ask, Placement, explain_decision, move, schedule
from rackfire.store import StateStore


class Placer:
    def __init__(self, store: StateStore, fleet: Fleet) -> None:
        self.store, self.fleet = store, fleet

    def place(self, spec: StackSpec, observed: list[InstanceFacts],
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
        return schedule(self.pool(spec), placed, wanted, explain=explain)

    def pool(self, spec: StackSpec) -> list[Host]:
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

    def place_new(self, spec: StackSpec, desired: Desired,
                  creating: Collection[InstanceKey]) -> None:
        """Keep the host of each instance to be created that has none yet, before it is
        created there. A surge instance (it lives for minutes, and is not reserved) that
        fits nowhere goes beside its role's first one; any other that fits nowhere fails
        the reconcile."""
        have = self.fleet.placements.of_stack(spec.name)
        new = {f.key: f.host for f in desired.observed  # running before placements were kept
               if f.key not in have}
        todo = [k for k in creating if k not in have and k not in new]
        if todo and (only := self.fleet.sole_host()):  # the apply's check was enough
            new.update(dict.fromkeys(todo, only))
        elif todo:
            wanted = set(desired_keys(spec))
            placement = self.place(spec, desired.observed, [k for k in todo
                                                            if k not in wanted])
            for key in todo:
                d = placement.decision(key)
                if d.host is not None:
                    new[key] = d.host
                elif key in wanted:
                    refuse_unplaced(spec, placement)
                else:
                    first = have.get(InstanceKey(key.stack, key.role, 0))
                    if first is None:
                        raise PrereqError(f"no host can take the surge instance {key}")
                    new[key] = first
        if new:
            self.fleet.placements.put(new)

    def target(self, spec: StackSpec, key: InstanceKey, source: str, to: str | None) -> str:
        """The host `key` would move to from `source` (`to`, if it can take it)."""
        placed = self.fleet.placements.of_stack(spec.name)
        placed[key] = source
        d = move(self.pool(spec), placed, asks_of([spec]), key, to)
        if d.host is None:
            why = "; ".join(str(r) for r in d.rejected) or "no other host"
            raise Conflict(f"no host can take {key}: {why}",
                           hint="`rackfire capacity` shows what each host has free")
        return d.host


def refuse_unplaced(spec: StackSpec, placement: Placement) -> None:
    """Refuse, with the scheduler's reasons, a stack some instance of which fits nowhere."""
    unplaced = [d for d in placement.unplaced if d.key.stack == spec.name]
    if unplaced:
        why = "; ".join(line.strip() for line in explain_decision(unplaced[0]))
        raise PrereqError(
            f"stack {spec.name} does not fit: {len(unplaced)} instance(s) cannot be placed "
            f"({why})", hint="rackfire reserves what each instance asks for and never "
            "overcommits; lower the role's resources or count, or add hosts "
            "(`rackfire capacity` shows what is free)")

