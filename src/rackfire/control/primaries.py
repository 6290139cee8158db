"""The primary of a primary role (`ha: {primary: true}`: a database's primary and standbys):
which instance it is, kept in the store with a term (store/primaries.py), and a standby
promoted when the primary's host is gone.

The role's name resolves to the primary alone and its published ports lead only to it
(control/publish.py); templates see `instance.primary`, `roles.<r>.primary` and
`roles.<r>.term`, so a promotion changes the rendered files of the role's instances: the
new primary's reload (or restart) is the appliance's promotion, the old one's files say it
is a standby from then on (when its host comes back, its start makes it one again).

A standby is promoted only once the primary has surely stopped: its host's lease lapsed
*and* its fence deadline passed (its watchdog kills it by then: primary roles self-fence),
or an operator fenced the host, as a singleton waits (control/failover.py). Of the standbys,
the first that runs on a live host and passes its check is chosen. Two primaries never run
at once: the old one stopped before the new one was named, and it comes back a standby.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.model.host import HostState
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState
from rackfire.model.records import Primary
from rackfire.model.stack import RoleSpec, StackSpec
from rackfire.store import StateStore

AGAIN = 1.0  # seconds: no standby was ready to be promoted, look again this soon
ReadyKeys = Callable[[StackSpec, list[InstanceFacts]], Collection[InstanceKey]]


class Promoter:
    def __init__(self, store: StateStore, fleet: Fleet, ready_keys: ReadyKeys) -> None:
        self.store, self.fleet, self.ready_keys = store, fleet, ready_keys

    def run(self, spec: StackSpec) -> float | None:
        """Promote a standby of each primary role whose primary is gone and fenced; in how
        many seconds to look again (a fence still due), or None."""
        roles = [r for r in spec.roles if r.ha.primary]
        if not roles:
            return None
        current = self.store.primaries.of_stack(spec.name)
        lost = self.fleet.lost(spec.name)
        waits: list[float] = []
        facts: list[InstanceFacts] | None = None
        for role in roles:
            now_primary = current.get(role.name, Primary(0, 1, 0.0))
            key = InstanceKey(spec.name, role.name, now_primary.index)
            if key not in lost and now_primary.index < role.count:
                continue
            due = self._fenced(lost.get(key)) if key in lost else 0.0
            if due > 0:
                waits.append(due)
                continue
            if facts is None:
                facts = self.fleet.observe(spec.name)
            if not self._promote(spec, role, now_primary, key, facts, set(lost)):
                waits.append(AGAIN)  # no standby ready yet
        return min(waits) if waits else None

    def _fenced(self, host: str | None) -> float:
        """0 once what `host` ran has surely stopped, else the seconds until then."""
        rec = next((h for h in self.fleet.registry.hosts() if h.name == host), None)
        if rec is None or rec.state is HostState.FENCED:
            return 0.0  # removed (and what it held with it), or fenced by an operator
        if not self.fleet.liveness.gone(rec, time.time()):
            return 0.0
        return max(0.0, self.fleet.liveness.fenced_by(rec) - time.time())

    def _promote(self, spec: StackSpec, role: RoleSpec, old: Primary, old_key: InstanceKey,
                 facts: list[InstanceFacts], lost: set[InstanceKey]) -> bool:
        ready = self.ready_keys(spec, facts)
        candidates = sorted(f.key.index for f in facts
                            if f.key.role == role.name and f.key.index < role.count
                            and f.key != old_key and f.key not in lost and f.key in ready
                            and f.state is InstanceState.RUNNING)
        if not candidates:
            return False
        new = candidates[0]
        why = (f"{old_key.name}'s host is gone and fenced" if old_key in lost
               else f"{old_key.name} is scaled away")
        if self.store.primaries.promote(spec.name, role.name, new, old.term + 1, time.time()):
            self.store.add_event(CONTROLLER, spec.name, f"{spec.name}/{role.name}/{new}",
                                 "promote", "ok", f"{role.name}-{new} is the primary in term "
                                 f"{old.term + 1}: {why}")
        return True
