"""Failure detection: every joined host's state from its lease (control/hosts.py
`Liveness`: ready -> suspect -> lost, or fenced by an operator), looked at every LOOK
seconds. Each change is an event. A host that goes (lost, fenced) or comes back wakes the
reconcile of every stack placed on it or last seen there: the reconcile places again what
it held (control/failover.py; one that waits for the fence asks to be run again then), or
removes the replaced copies it brought back. Each look also keeps `Fleet.lapses`, when each
host is gone, which a call under way to it asks (agent/remote.py `gone`) without the store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.control.hosts import GONE
from rackfire.store import StateStore

log = logging.getLogger("rackfire.detector")
LOOK = 0.25  # seconds between looks: a lapse is acted on within about that


class Detector:
    def __init__(self, store: StateStore, fleet: Fleet,
                 wake: Callable[[str], None]) -> None:
        self.store, self.fleet, self.wake = store, fleet, wake
        self._states: dict[str, str] = {}
        # Before the first look, so a call at start gives a fenced host up at once.
        fleet.lapses.set(fleet.registry.hosts(), fleet.liveness)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(LOOK):
            try:
                self.look(time.time())
            except Exception:
                log.exception("looking at the hosts' leases failed; the next look tries again")

    def look(self, now: float) -> None:
        liveness = self.fleet.liveness
        placed: dict[str, set[str]] | None = None
        hosts = self.fleet.registry.hosts()
        # First: a reconcile woken below gives up its calls to a host gone at once.
        self.fleet.lapses.set(hosts, liveness)
        for h in hosts:
            state = liveness.state(h, now)
            before = self._states.get(h.name, "ready")
            self._states[h.name] = state
            if state == before:
                continue
            age = now - h.last_seen
            self.store.add_event(CONTROLLER, "", f"host/{h.name}", "state", state,
                                 f"{before} -> {state}: last heartbeat {age:.1f}s ago "
                                 f"(lease {liveness.lease(h.facts.interval):.1f}s)")
            if (state in GONE) == (before in GONE):
                continue  # ready <-> suspect: nothing moves for that
            if placed is None:
                placed = {}
                for key, host in self.fleet.placements.all().items():
                    placed.setdefault(host, set()).add(key.stack)
            seen = {f.key.stack for f in self.fleet.observed.facts(h.name) or []}
            for stack in sorted(placed.get(h.name, set()) | seen):
                self.wake(stack)
