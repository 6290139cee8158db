"""A stack's instances moving between hosts, as a step of its reconcile: the migrations a
draining host needs, each migration carried on from its step (control/migrate.py), and the
copies an interrupted one left behind removed. Nothing here waits for a host: a step that
needs time says when to look again."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from rackfire.control import migrate
from rackfire.control.desired import Desired
from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.control.health import ready_timeout
from rackfire.control.placement import Placer
from rackfire.control.publish import Publisher
from rackfire.errors import PrereqError, RackfireError
from rackfire.model.host import HostState
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState
from rackfire.store import StackRecord, StateStore

log = logging.getLogger("rackfire.moves")

DRAIN_RETRY = 120.0  # seconds before a drain tries again to move an instance that failed to


class Moves:
    def __init__(self, store: StateStore, fleet: Fleet, clock: Callable[[], float],
                 placer: Placer, publisher: Publisher) -> None:
        self.store, self.fleet, self.clock = store, fleet, clock
        self.placer, self.publisher = placer, publisher
        self.failpoints = migrate.Failpoints(os.environ.get("RACKFIRE_FAILPOINTS", ""))
        self._move_failed: dict[InstanceKey, float] = {}  # a drain retries them later

    def carry_on(self, rec: StackRecord, desired: Desired) -> float | None:
        """Start the moves a draining host needs, carry on every migration of the stack,
        and remove copies that ones interrupted before left behind. 0 if any ended (the
        hosts changed), else when to look again at one still under way (None: none)."""
        if self.fleet.sole_host():  # one host: nothing moves, nothing strays
            return None
        self._start_drains(rec, desired)
        requests = {r.key: r for r in desired.requests}
        ended = False
        again: float | None = None
        for m in self.fleet.placements.migrations(rec.name):
            req = requests.get(m.key)
            if req is None:  # no longer wanted (changes that remove it are refused)
                if m.step in ("stopping", "copying"):  # whole on the source still
                    self.fleet.placements.end_migration(m.key, m.source)
                else:
                    log.warning("migration of %s: the instance is no longer wanted", m.key)
                continue
            later = migrate.run(m, req, self.fleet, self.store, self._ready_on,
                                failpoints=self.failpoints)
            if later is None:
                ended = True
                if self.fleet.placements.host_of(m.key) == m.source:  # reverted
                    self._move_failed[m.key] = time.monotonic()
            else:
                again = later if again is None else min(again, later)
        if self.remove_strays(rec.name) or ended:
            return 0.0
        return again

    def remove_strays(self, stack: str, *, all_copies: bool = False,
                      keep_data: bool = False) -> bool:
        """Remove the copies an interrupted migration left on a host other than the
        instance's placement (with `all_copies`, a migration's target copy too: the stack
        is going). Whether any was removed."""
        if self.fleet.sole_host():
            return False
        moving = {m.key: m for m in self.fleet.placements.migrations(stack)
                  if m.key in migrate.migrating([m])}
        self.fleet.observe(stack)  # strays are judged on what every host has now
        copies = self.fleet.strays(stack)
        if all_copies:  # the stack goes: a move's target copy too, unless it is the instance
            copies += [(m.key, m.target) for m in moving.values()
                       if self.fleet.placements.host_of(m.key) != m.target]
        removed = False
        gone = self.fleet.gone()  # its heartbeat answer has it destroy them when it is back
        for key, host in copies:
            if (key in moving and not all_copies) or host in gone:
                continue
            try:
                agent = self.fleet.link(host)
                agent.destroy(key)
                if not keep_data:
                    agent.discard_disks(key)
            except RackfireError as e:
                log.warning("removing the stray copy of %s on %s: %s", key, host, e.message)
                continue
            self.store.add_event(CONTROLLER, stack, str(key), "cleanup", "ok",
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
        ready = self.publisher.ready_keys(rec.spec, desired.observed)
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
                    target = self.placer.target(rec.spec, key, placed[key], None)
                except PrereqError as e:
                    self.store.add_event(CONTROLLER, rec.name, str(key), "drain", "failed",
                                         e.message)
                    self._move_failed[key] = now
                    continue
                self.fleet.placements.start_migration(key, placed[key], target, CONTROLLER)
                down.add(key)

    def _ready_on(self, req: InstanceRequest, host: str) -> str | None:
        """Whether the instance runs and passes its check on `host` (not yet its
        placement, so the health monitor does not look at it): one look, one probe.
        '' if it does, None if it may still, else why not."""
        rec = self.store.get_stack(req.key.stack)
        role = next((r for r in rec.spec.roles if r.name == req.key.role), None) \
            if rec else None
        check = role.health if role else None
        timeout = ready_timeout(check, role.update.health_timeout if role else 60.0)
        agent = self.fleet.link(host)
        f = next((f for f in agent.observe(req.key.stack) if f.key == req.key), None)
        if f is not None and f.state is InstanceState.STOPPED:
            return "it stopped"
        why = "it did not start"
        if f is not None and f.state is InstanceState.RUNNING:
            if check is None:
                return ""
            ok, why = agent.probe(req.key, req.ip, check)
            if ok:
                return ""
        if f is None or (f.started_at and self.clock() - f.started_at < timeout):
            return None  # not there yet (a crash between create and this look), or in time
        return f"not healthy after {timeout:.0f}s ({why})"
