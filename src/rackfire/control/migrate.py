"""Cold migration: stop an instance, copy its disks to another host, start it there with the
same name, IP and data, and remove the source copy only once the target passes its check.

A migration is a row in the store (`store/placements.py` Migration) naming the step under
way; every step can be repeated, so the reconcile that finds a row (after any crash of the
controller or of either agent) carries on from that step:

    stopping   stop the source copy                                  -> copying
    copying    stream the disks source -> target                     -> releasing
    releasing  the source moves its disks aside (as if received) and removes the instance
               (its netns, veth and cgroup: names that must be free where it starts next)
                                                                     -> starting
    starting   create on the target from the copied disks, wait for its check -> cleaning
    cleaning   place it on the target; drop the source's disks         -> done
    reverting  (a step failed) remove the target copy and its disks; start the source
               again, from its own disks set aside if it was released  -> done

The instance's placement moves to the target only in `cleaning`, when the target copy is
healthy: until then the source's disks are the instance's. At most one copy runs at any
time: the source is stopped before the target starts, and the target is removed before the
source starts again. A host that cannot be reached leaves the row where it is, for the next
reconcile; one unreachable for longer than GIVE_UP is given up on (reverted).

The source's disks set aside (moved into its own `incoming/`, as if received) make a
revert that needs nothing from the target.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

from rackfire.control.fleet import Fleet
from rackfire.errors import AgentOffline, ExecError, RackfireError
from rackfire.model.agent import HostLink
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState
from rackfire.model.records import Migration
from rackfire.store import StateStore
from rackfire.store.protocol import PlacementTable

log = logging.getLogger("rackfire.migrate")

GIVE_UP = 300.0  # seconds a migration waits for an unreachable host before it is reverted
LOOK_AGAIN = 0.5  # the target copy is starting: its check is looked at again this soon
UNREACHABLE_AGAIN = 5.0  # a host could not be reached: tried again this soon


def migrating(rows: list[Migration]) -> set[InstanceKey]:
    """The instances a migration holds: left alone by the planner (neither created nor
    restarted elsewhere). From `cleaning` on the instance is placed on its target and
    managed as any other; the row only waits to drop the source's disks."""
    return {m.key for m in rows if m.step != "cleaning"}


class Failpoints:
    """Test hooks: RACKFIRE_FAILPOINTS=migrate.copying=exit makes the server die at the
    start of that step (as a crash would), to check that the next one carries on."""

    def __init__(self, spec: str = "") -> None:
        self.points = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)

    def hit(self, name: str) -> None:
        action = self.points.get(name, "")
        if action == "exit":
            log.warning("failpoint %s: exiting", name)
            os._exit(70)
        if action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))


def run(m: Migration, req: InstanceRequest, fleet: Fleet, store: StateStore,
        ready_on: Callable[[InstanceRequest, str], str | None], *,
        failpoints: Failpoints | None = None) -> float | None:
    """Carry the migration on from its step, as far as it goes without waiting; None when
    it is over (done or reverted), else in how many seconds to look again (the target
    copy is still starting, or a host could not be reached). `ready_on(req, host)`: ''
    once the copy there passes its check, None while it may still, else why it failed."""
    places = fleet.placements
    key, step = m.key, m.step
    req = replace(req, incarnation=places.incarnation(key))  # one run, moved: its own
    points = failpoints or Failpoints()
    try:
        if step == "stopping":
            points.hit("migrate.stopping")
            fleet.link(m.source).stop(key, req.stop_timeout)
            step = _next(places, m, "copying")
        if step == "copying":
            points.hit("migrate.copying")
            source, target = fleet.link(m.source), fleet.link(m.target)
            target.receive_disks(key, source.send_disks(key))
            step = _next(places, m, "releasing")
        if step == "releasing":
            points.hit("migrate.releasing")
            source = fleet.link(m.source)
            if _exists(source, key):  # else it was released before a crash
                source.set_aside(key)
            step = _next(places, m, "starting")
        if step == "starting":
            points.hit("migrate.starting")
            agent = fleet.link(m.target)
            moved = replace(req, adopt_disks=True, action_id=f"migrate-{int(m.started)}")
            if not _running(agent, key):  # else made by an earlier pass, starting there
                fleet.prepare(m.target, agent, moved)
                agent.create(moved)
            why = ready_on(moved, m.target)
            if why is None:
                return LOOK_AGAIN
            if why:
                raise ExecError(f"{key} did not become healthy on {m.target}: {why}")
            step = _next(places, m, "cleaning")
        if step == "cleaning":
            points.hit("migrate.cleaning")
            places.move(key, m.target)  # the target copy is the instance from here
            source = fleet.link(m.source)
            source.destroy(key, req.stop_timeout)  # nothing left there unless not released
            source.discard_disks(key)
            places.end_migration(key, m.target)
            fleet.heard_from(m.source, m.target)
            store.add_event(m.actor, key.stack, str(key), "migrate", "ok",
                            f"{m.source} -> {m.target}")
            return None
        if step == "reverting":
            _revert(m, req, fleet, store, "")
            return None
    except AgentOffline as e:
        if time.time() - m.started < GIVE_UP or step in ("cleaning", "reverting"):
            log.warning("migration of %s waits at %s: %s", key, step, e.message)
            return UNREACHABLE_AGAIN
        return _start_revert(m, req, fleet, store, f"gave up at {step}: {e.message}")
    except (RackfireError, OSError) as e:  # OSError: the server's own disks (ENOSPC, ...)
        why = e.message if isinstance(e, RackfireError) else str(e)
        if step in ("cleaning", "reverting"):  # the instance is whole on one host: carry on
            log.warning("migration of %s at %s: %s", key, step, why)
            return UNREACHABLE_AGAIN
        return _start_revert(m, req, fleet, store, f"{step} failed: {why}")
    return None


def _next(places: PlacementTable, m: Migration, step: str) -> str:
    places.set_step(m.key, step)
    return step


def _start_revert(m: Migration, req: InstanceRequest, fleet: Fleet, store: StateStore,
                  why: str) -> float | None:
    fleet.placements.set_step(m.key, "reverting")
    store.add_event(m.actor, m.key.stack, str(m.key), "migrate", "failed",
                    f"{m.source} -> {m.target}: {why}; going back to {m.source}")
    try:
        _revert(m, req, fleet, store, why)
        return None
    except (RackfireError, OSError) as e:
        log.warning("reverting the migration of %s: %s", m.key, e)
        return UNREACHABLE_AGAIN


def _revert(m: Migration, req: InstanceRequest, fleet: Fleet, store: StateStore,
            why: str) -> None:
    """Remove the target's copy (running or half made) and its disks, then start the source
    copy again, from its disks set aside if it was released: never two running."""
    target = fleet.link(m.target)
    target.destroy(m.key, req.stop_timeout)
    target.discard_disks(m.key)
    source = fleet.link(m.source)
    here = [f for f in source.observe(m.key.stack) if f.key == m.key]
    if not here:  # released: made again from its own disks
        back = replace(req, adopt_disks=True, action_id=f"unmigrate-{int(m.started)}")
        fleet.prepare(m.source, source, back)
        source.create(back)
    elif here[0].state is not InstanceState.RUNNING:
        fleet.prepare(m.source, source, req)
        source.restart(req)
    fleet.placements.end_migration(m.key, m.source)
    fleet.heard_from(m.source, m.target)


def _exists(agent: HostLink, key: InstanceKey) -> bool:
    return any(f.key == key for f in agent.observe(key.stack))


def _running(agent: HostLink, key: InstanceKey) -> bool:
    return any(f.key == key and f.state is InstanceState.RUNNING
               for f in agent.observe(key.stack))
