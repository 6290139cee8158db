"""Replicated data disks (`data: {size, replicas: 2}`): a standby copy of each instance's
data disk on another host (another rack where there is one), kept by shipping the changed
extents of a frozen snapshot every EVERY seconds.

Why this way: this kernel has no DRBD, no NBD client and no device-mapper (PLATFORM.md), so
a block device cannot be mirrored below the filesystem. What works is a snapshot: the data
disk frozen for milliseconds and reflinked on its host (agent/replicas.py), what changed
since the version the standby confirmed found from the extent maps (FIEMAP: a written block
of a reflinked file moves), streamed through the controller as the cold migration's disks
are, and applied to the standby copy so that it is always a whole version. The standby is
therefore at most EVERY seconds (and a shipment) behind: the RPO, which each shipment's
version (the time its snapshot was taken) records. A kernel with DRBD could mirror the disk
synchronously behind the same seam: the standby's version, a stage for the failover.

When the instance's host is lost, the failover (control/failover.py) places it again on its
standby's host once its old host is fenced, and it is made from the standby copy (a seed:
control/executor.py), with the RPO it had in the event. A new standby is then chosen and
sent the whole disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rackfire.control.fleet import Fleet
from rackfire.errors import RackfireError
from rackfire.model.instance import InstanceKey
from rackfire.model.records import Replica
from rackfire.model.stack import RoleSpec
from rackfire.store import StateStore

log = logging.getLogger("rackfire.replicas")
EVERY = 5.0  # seconds between two shipments of a replicated data disk
LOOK = 0.5  # seconds between two looks at which are due
PARALLEL = 4  # disks shipped at once


class Replicator:
    def __init__(self, store: StateStore, fleet: Fleet,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.fleet, self.clock = store, fleet, clock
        self._failed: dict[InstanceKey, str] = {}  # the last error of each, said once
        # Each disk ships on its own: one whose host stopped answering holds up no other.
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="replica")
        self._lock = threading.Lock()
        self._shipping: set[InstanceKey] = set()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(LOOK):
            try:
                for key, primary, replica in self.due():
                    self._pool.submit(self._ship, key, primary, replica)
            except Exception:  # one bad look must not end replication
                log.exception("replication failed; looking again")
        self._pool.shutdown(wait=False, cancel_futures=True)

    def ship_due(self) -> list[InstanceKey]:
        """Ship each replicated disk that is due, one after another: those shipped."""
        return [key for key, primary, replica in self.due()
                if self._ship(key, primary, replica)]

    def due(self) -> list[tuple[InstanceKey, str, Replica]]:
        """(instance, its host, its standby) of each replicated disk whose last shipment is
        EVERY seconds old and that is not being shipped: each then counts as shipping."""
        todo = []
        live = self._live()
        for rec in self.store.stacks():
            if rec.deleting:
                continue
            roles = [r for r in rec.spec.roles if r.data is not None and r.data.replicas > 1]
            if not roles:
                continue
            replicas = self.store.replicas.of_stack(rec.name)
            placed = self.fleet.placements.of_stack(rec.name)
            seen = {f.key: f.host for f in self.fleet.observe(rec.name)}
            for role in roles:
                for i in range(role.count):
                    key = InstanceKey(rec.name, role.name, i)
                    primary = placed.get(key)
                    if primary is None or primary not in live or seen.get(key) != primary:
                        continue  # not made there yet, or its host is gone: the failover's
                    replica = replicas.get(key)
                    if replica is None or replica.standby == primary \
                            or replica.standby not in live:
                        if replica is not None and replica.standby in live \
                                and replica.standby != primary:
                            self._drop(key, replica.standby)
                        replica = self._choose(key, role, primary, live, replicas)
                        if replica is None:
                            continue
                    with self._lock:
                        if self.clock() - replica.shipped >= EVERY \
                                and key not in self._shipping:
                            self._shipping.add(key)
                            todo.append((key, primary, replica))
        return todo

    def _ship(self, key: InstanceKey, primary: str, replica: Replica) -> bool:
        try:
            return self._send(key, primary, replica)
        finally:
            with self._lock:
                self._shipping.discard(key)

    def _send(self, key: InstanceKey, primary: str, replica: Replica) -> bool:
        try:
            chunks = self.fleet.link(primary).send_replica(key, replica.token)
            self.fleet.link(replica.standby).receive_replica(key, chunks)
            token = self.fleet.link(replica.standby).replica_version(key)
            self.fleet.link(primary).replica_shipped(key, token)
        except RackfireError as e:
            if self._failed.get(key) != e.message:
                self._failed[key] = e.message
                self.store.add_event("controller", key.stack, str(key), "replicate",
                                     "failed", f"to {replica.standby}: {e.message}")
            return False
        if self._failed.pop(key, None) is not None or not replica.token:
            self.store.add_event("controller", key.stack, str(key), "replicate", "ok",
                                 f"a whole standby copy on {replica.standby}")
        self.store.replicas.put(Replica(key, replica.standby, token, int(token) / 1000,
                                        self.clock()))
        return True

    def _drop(self, key: InstanceKey, host: str) -> None:
        try:
            self.fleet.link(host).drop_replica(key)
        except RackfireError as e:
            log.warning("the old standby copy of %s on %s stays: %s", key, host, e.message)

    def _choose(self, key: InstanceKey, role: RoleSpec, primary: str, live: dict[str, str],
                replicas: dict[InstanceKey, Replica]) -> Replica | None:
        """A standby host for `key`: live, not its own, in another rack where one is, the
        one holding the fewest standbys of the stack; None if there is no other host."""
        others = [h for h in live if h != primary]
        if not others:
            return None
        held = {h: sum(1 for r in replicas.values() if r.standby == h) for h in others}
        rack = live[primary]
        standby = min(others, key=lambda h: (bool(rack) and live[h] == rack, held[h], h))
        replica = Replica(key, standby, "", 0.0, 0.0)
        self.store.replicas.put(replica)
        return replica

    def _live(self) -> dict[str, str]:
        """The hosts that may hold a copy, with their rack label."""
        now = time.time()
        live = {h.name: dict(h.labels).get("rack", "") for h in self.fleet.registry.hosts()
                if not self.fleet.liveness.gone(h, now)}
        if self.fleet.local_pool:
            live[self.fleet.server_host] = ""
        return live
