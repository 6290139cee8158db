"""Restart elsewhere: the instances placed on a host that is gone (its lease lapsed, or an
operator fenced it) are placed again by the scheduler, each as a new incarnation
(store/placements.py), before the planner looks; the planner then creates them where they
are placed now. The gone host is down to the scheduler, so it is never chosen, hard
reservations and spread rules hold as for any placement.

When depends on the role (model/stack.py `HaPolicy`):
- replaced at once (`replace: immediate`, the default for a role without data);
- a singleton (or `replace: fenced`) only once its host has surely stopped it: its lease
  lapsed *and* its fence deadline passed (control/hosts.py `Liveness.fenced_by`: the
  agent's watchdog kills what fences by then, agent/watchdog.py), or at once when an
  operator fenced the host. One whose host does not fence it waits for an operator;
- an instance with a data disk stays where its data is: it cannot come back with its data
  while that host is gone, and is reported so (`ps`, events, `rackfire ha`).

What the host still runs, should it come back, is an older incarnation: it is destroyed
there (control/fleet.py `replaced_on`, agent/hostside.py `sweep`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rackfire.control.detector import LOOK
from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.control.hosts import FENCE_GRACE, Liveness
from rackfire.control.placement import Placer
from rackfire.control.replicas import EVERY as REPLICA_EVERY
from rackfire.errors import Conflict
from rackfire.model.host import HostState
from rackfire.model.instance import InstanceKey
from rackfire.model.records import REPLICA, HostRecord, Replica, Seed
from rackfire.model.stack import RoleSpec, StackSpec
from rackfire.store import StateStore


@dataclass(frozen=True, slots=True)
class Held:
    """Why a lost instance is not placed again (yet)."""

    why: str
    until: float | None = None  # it may be then (its host's fence deadline)


class Failover:
    def __init__(self, store: StateStore, fleet: Fleet, placer: Placer) -> None:
        self.store, self.fleet, self.placer = store, fleet, placer
        self._lock = threading.Lock()
        self._held: dict[InstanceKey, Held] = {}  # what the last pass could not place

    def run(self, spec: StackSpec) -> float | None:
        """Place again what gone hosts held of `spec`, as far as may be now; in how many
        seconds to look again (a singleton waiting for its host's fence), or None."""
        lost = self.fleet.lost(spec.name)
        known = {h.name: h for h in self.fleet.registry.hosts()} if lost else {}
        roles = {r.name: r for r in spec.roles}
        now = time.time()
        held: dict[InstanceKey, Held] = {}
        for key, host in sorted(lost.items()):
            role = roles.get(key.role)
            if role is None or key.index >= role.count:
                continue  # on its way out: removed where it is once its host is back
            rec = known.get(host)  # None: it was removed, and what it held with it
            if rec is not None and not self.fleet.liveness.gone(rec, now):
                continue  # back since
            replica = self._standby(key, role, now)
            hold = self._hold(role, host, rec, now, replica)
            if hold is None:
                hold = (self._place(spec, key, host) if replica is None
                        else self._onto_standby(key, host, rec, replica))
            if hold is not None:
                held[key] = hold
        with self._lock:
            before = {k: v for k, v in self._held.items() if k.stack == spec.name}
            for key in before:
                self._held.pop(key)
            self._held.update(held)
        for key, hold in held.items():
            if before.get(key, Held("")).why != hold.why:
                self.store.add_event(CONTROLLER, spec.name, str(key), "failover", "held",
                                     hold.why)
        waits = [h.until - now for h in held.values() if h.until is not None]
        return max(0.0, min(waits)) if waits else None

    def held(self, key: InstanceKey) -> str:
        """Why the lost instance is not placed again yet ("" if nothing holds it)."""
        with self._lock:
            hold = self._held.get(key)
        return hold.why if hold else ""

    def _hold(self, role: RoleSpec, host: str, rec: HostRecord | None,
              now: float, replica: Replica | None = None) -> Held | None:
        """Why not to place it again now; None: it may be. (No record: the host was
        removed, and what it held with it.) One with a standby copy of its data disk waits
        for the fence as a singleton does: its old copy must have stopped writing."""
        if rec is None:
            return None
        if role.data is not None and replica is not None:
            if not role.self_fences and rec.state is not HostState.FENCED:
                return Held(f"{host} does not stop it by itself (ha: fence: false): it "
                            f"starts from its standby copy once an operator runs "
                            f"`rackfire host fence {host}`")
            until = self.fleet.liveness.fenced_by(rec)
            if rec.state is not HostState.FENCED and now < until:
                due = time.strftime("%H:%M:%S", time.localtime(until))
                return Held(f"waits for {host}'s fence, due at {due}, to start from its "
                            f"standby copy on {replica.standby}", until)
            return None
        if role.data is not None:
            return Held(f"its data disk is only on {host}, which is lost: it cannot come back "
                        f"with its data until {host} does (`rackfire host rm {host}` gives "
                        "the data up)")
        if not role.replace_after_fence or rec.state is HostState.FENCED:
            return None
        if not role.self_fences:
            return Held(f"{host} does not stop it by itself (ha: fence: false): it is placed "
                        f"again once an operator runs `rackfire host fence {host}`")
        until = self.fleet.liveness.fenced_by(rec)
        if now < until:
            due = time.strftime("%H:%M:%S", time.localtime(until))
            return Held(f"waits for {host}'s fence, due at {due}", until)
        return None

    def _standby(self, key: InstanceKey, role: RoleSpec, now: float) -> Replica | None:
        """The whole standby copy of its data disk on a live host, if it has one."""
        if role.data is None or role.data.replicas < 2:
            return None
        replica = self.store.replicas.of_stack(key.stack).get(key)
        if replica is None or not replica.token:
            return None
        rec = next((h for h in self.fleet.registry.hosts() if h.name == replica.standby), None)
        live = (replica.standby == self.fleet.server_host and self.fleet.local_pool) or (
            rec is not None and not self.fleet.liveness.gone(rec, now))
        return replica if live else None

    def _onto_standby(self, key: InstanceKey, host: str, rec: HostRecord | None,
                      replica: Replica) -> Held | None:
        """Place it on its standby's host, to be made from the standby copy there."""
        self.store.snapshots.plant([Seed(key, key.stack, REPLICA, key.name, replica.standby)])
        run = self.fleet.placements.put({key: replica.standby}).get(key, 0)
        heard = f"{rec.last_seen - replica.taken:.1f} s before {host} was last heard from" \
            if rec is not None else "at its last shipment"
        self.store.add_event(CONTROLLER, key.stack, str(key), "failover", "ok",
                             f"{host} is lost: placed again on {replica.standby} from its "
                             f"standby copy, a snapshot taken {heard} (what it wrote after "
                             f"is lost: the RPO) (incarnation {run})")
        return None

    def _place(self, spec: StackSpec, key: InstanceKey, host: str) -> Held | None:
        try:
            target = self.placer.target(spec, key, host, None)
        except Conflict as e:
            return Held(e.message)
        run = self.fleet.placements.put({key: target}).get(key, 0)
        self.store.add_event(CONTROLLER, spec.name, str(key), "failover", "ok",
                             f"{host} is lost: placed again on {target} (incarnation {run})")
        return None


def chains(stacks: list[StackSpec], placed: dict[InstanceKey, str],
           hosts: dict[str, HostRecord], liveness: Liveness, server_host: str,
           now: float) -> list[dict[str, object]]:
    """`rackfire ha status`: per instance replaced only after its fence (singletons), the
    chain of timings that proves it stopped before it runs elsewhere, and the worst case
    from its host's death to its replacement being started (its own start not counted)."""
    out: list[dict[str, object]] = []
    for spec in stacks:
        for role in spec.roles:
            if not role.replace_after_fence:
                continue
            for i in range(role.count):
                key = InstanceKey(spec.name, role.name, i)
                host = placed.get(key, "")
                rec = hosts.get(host)
                entry: dict[str, object] = {
                    "instance": str(key), "host": host, "singleton": role.singleton,
                    "self_fences": role.self_fences, "data": role.data is not None}
                if rec is None:  # the server's own host (no lease: it is the controller)
                    entry |= {"state": "ready" if host == server_host else "unplaced",
                              "chain": "on the server's own host: not failed over"}
                    out.append(entry)
                    continue
                interval = rec.facts.interval
                lease, fence = liveness.lease(interval), liveness.fence(interval)
                worst = fence + FENCE_GRACE + LOOK
                entry |= {"state": liveness.state(rec, now), "lease": lease,
                          "lease_age": round(now - rec.last_seen, 3), "fence_after": fence,
                          "grace": FENCE_GRACE, "worst_case": round(worst, 3),
                          "chain": (f"lease lapses {lease:g}s after its last heartbeat; its "
                                    f"watchdog kills it {fence:g}s after the last one it "
                                    f"sent; placed again {FENCE_GRACE:g}s after that "
                                    f"(+{LOOK:g}s to notice): worst case {worst:.2f}s "
                                    "plus its start")}
                if role.data is not None and role.data.replicas > 1:
                    entry["chain"] = (f"{entry['chain']}; from its data disk's standby copy "
                                      f"(shipped every {REPLICA_EVERY:g}s: its RPO)")
                elif role.data is not None:
                    entry["chain"] = (f"its data disk is on {host} only: it is not placed "
                                      "again while that host is lost")
                elif not role.self_fences:
                    entry["chain"] = ("not stopped by its host (fence: false): placed again "
                                      "only after `rackfire host fence`")
                out.append(entry)
    return out
