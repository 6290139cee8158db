"""Fencing without a host: leases go ready -> suspect -> lost (never sooner than a lease
after the server started), incarnations only rise and are issued per placement on a host,
a host refuses an older run than it was told of and destroys a replaced copy, and the
failover holds a singleton until its host's fence deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from tests.harness.clock import FakeClock
from tests.harness.fakehost import FakeHost

from rackfire.agent.hostside import HostSide, Served
from rackfire.agent.inprocess import InProcessLink
from rackfire.control.detector import Detector
from rackfire.control.fleet import Fleet
from rackfire.control.hosts import FENCE_GRACE, Lapses, Liveness
from rackfire.errors import StaleIncarnation
from rackfire.model.agent import HostCapacity, HostLink, Stamp
from rackfire.model.host import HostFacts, HostState
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, InstanceState
from rackfire.model.records import HostRecord
from rackfire.model.stack import DataDisk, HaPolicy, Replace, RoleSpec, RuntimeKind
from rackfire.store import Store
from rackfire.store.placements import Placements

KEY = InstanceKey("s", "db", 0)


def record(last_seen: float, interval: float = 0.5,
           state: HostState = HostState.READY) -> HostRecord:
    facts = HostFacts(HostCapacity(2.0, 1 << 30, 1 << 30), (RuntimeKind.PROCESS,), 0, 0,
                      interval=interval)
    return HostRecord("h1", (), facts, state, 0.0, last_seen, "10.0.0.1:7481", "k", 1)


def test_a_lease_goes_ready_suspect_lost_and_fenced_is_at_once() -> None:
    live = Liveness(ttl=3.0)
    h = record(last_seen=100.0, interval=0.5)
    assert live.lease(0.5) == 3.0 and live.lease(2.0) == 6.0  # three beats at least
    assert live.state(h, 100.5) == "ready"
    assert live.state(h, 101.0) == "suspect"  # it missed one beat
    assert live.state(h, 103.1) == "lost" and live.gone(h, 103.1)
    assert live.state(replace(h, state=HostState.FENCED), 100.1) == "fenced"
    assert live.state(replace(h, state=HostState.DRAINING), 100.1) == "draining"
    assert live.state(replace(h, state=HostState.DRAINING), 104.0) == "lost"
    # Restarted, the server heard nothing yet: no lease lapses before a lease after it.
    restarted = replace(live, since=200.0)
    assert restarted.state(h, 200.5) == "ready" and restarted.state(h, 203.5) == "lost"


def test_the_fence_deadline_comes_after_the_agents_own() -> None:
    live = Liveness(ttl=3.0)
    h = record(last_seen=100.0)
    # The agent counts from when it sent its last heartbeat (no later than it arrived).
    assert live.fence(0.5) == 4.0
    assert live.fenced_by(h) == 100.0 + 4.0 + FENCE_GRACE
    assert Liveness(ttl=3.0, fence_after=10.0).fenced_by(h) == 100.0 + 10.0 + FENCE_GRACE


def test_incarnations_rise_per_placement_and_a_move_keeps_its_own(tmp_path: Path) -> None:
    places = Placements(Store(tmp_path / "db"))
    first = places.put({KEY: "h1"})
    assert first == {KEY: 1}
    assert places.put({KEY: "h1"}) == {}  # placed where it is: the same run
    assert places.put({KEY: "h2"}) == {KEY: 2}  # placed again elsewhere: a new run
    places.move(KEY, "h3")  # a cold migration moves the run it is
    assert places.incarnation(KEY) == 2 and places.host_of(KEY) == "h3"
    places.drop(KEY)
    assert places.put({KEY: "h1"}) == {KEY: 3}  # never issued twice, whatever went


class Host:
    """Enough of a host: one instance, of some incarnation."""

    def __init__(self, incarnation: int) -> None:
        self.facts = [InstanceFacts(KEY, InstanceState.RUNNING, RuntimeKind.PROCESS, "h1",
                                    incarnation=incarnation)]
        self.destroyed: list[InstanceKey] = []
        self.restarted = 0

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return self.facts

    def destroy(self, key: InstanceKey, stop_timeout: float = 10) -> None:
        self.destroyed.append(key)
        self.facts = []

    def restart(self, req: object) -> None:
        self.restarted += 1


def test_a_host_refuses_an_older_run_and_destroys_a_replaced_copy(tmp_path: Path) -> None:
    host = Host(incarnation=4)
    side = HostSide(cast(Served, host), tmp_path)
    req = cast(InstanceRequest, _Req(KEY, 4))
    side.call("restart", {"req": req}, Stamp(1))
    assert host.restarted == 1
    # The controller replaced it elsewhere as incarnation 6: the copy here is older.
    side.replaced([(KEY, 6)])
    with pytest.raises(StaleIncarnation, match="incarnation 4 refused"):
        side.call("restart", {"req": req}, Stamp(1))
    assert host.restarted == 1  # refused before anything was done
    assert side.sweep() == [KEY] and host.destroyed == [KEY]
    # A restarted agent remembers what it was told.
    again = HostSide(cast(Served, Host(incarnation=5)), tmp_path)
    assert again.sweep() == [KEY]


class _Req:
    def __init__(self, key: InstanceKey, incarnation: int) -> None:
        self.key, self.incarnation = key, incarnation


def test_which_roles_wait_for_the_fence() -> None:
    web = RoleSpec("web", "base", count=3)
    assert not web.singleton and not web.replace_after_fence and not web.self_fences
    solo = RoleSpec("solo", "base", ha=HaPolicy(singleton=True))
    assert solo.singleton and solo.replace_after_fence and solo.self_fences
    db = RoleSpec("db", "base", data=DataDisk("/data", 1 << 20))
    assert db.singleton  # one instance with data: at most one copy, ever
    fenced = RoleSpec("w", "base", count=2, ha=HaPolicy(replace=Replace.FENCED, fence=True))
    assert not fenced.singleton and fenced.replace_after_fence and fenced.self_fences


def test_gone_at_says_what_gone_says() -> None:
    live = Liveness(ttl=3.0)
    for state in HostState:
        h = record(last_seen=100.0, state=state)
        for now in (100.0, 101.0, 102.9, 103.1, 110.0):
            assert live.gone(h, now) == (now > live.gone_at(h)), (state, now)
    assert replace(live, since=200.0).gone_at(record(last_seen=100.0)) == 203.0


def test_a_lease_lapses_for_the_links_at_its_own_time_without_another_look() -> None:
    lapses = Lapses()
    assert not lapses.gone("h1")  # never seen (or removed): not gone
    live = Liveness(ttl=3.0)
    lapses.set([record(last_seen=time.time() - 2.9)], live)
    assert not lapses.gone("h1")
    time.sleep(0.15)  # no look in between: its lease's end was known
    assert lapses.gone("h1")


def test_the_detector_keeps_what_a_call_under_way_asks_as_the_host_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "rackfire.db")
    fake = FakeHost(tmp_path / "home", FakeClock())
    links: dict[str, Callable[[], bool]] = {}

    def connect(host: str, address: str, key: str, epoch: Callable[[], int],
                gone: Callable[[], bool]) -> HostLink:
        links[host] = gone
        return cast(HostLink, object())

    fleet = Fleet(InProcessLink(HostSide(fake)), fake, store, connect)
    reg = fleet.registry
    token, _ = reg.create_token(60, 1, "test")
    facts = record(0.0).facts
    reg.join(token, "h1", {}, facts)
    reg.heartbeat("h1", {}, facts, "10.0.0.1:7481")
    reg.fence("h1")  # fenced before the server started
    detector = Detector(store, fleet, lambda stack: None)
    fleet.link("h1")
    gone = links["h1"]
    assert gone()  # from the start, before any look

    def look_then_gone() -> bool:
        detector.look(time.time())
        real = reg.hosts

        def no_store() -> list[HostRecord]:
            raise AssertionError("gone() read the store")

        monkeypatch.setattr(reg, "hosts", no_store)
        try:
            return gone()
        finally:
            monkeypatch.setattr(reg, "hosts", real)

    reg.set_state("h1", HostState.READY)  # `host ready`
    assert not look_then_gone()
    reg.fence("h1")  # `host fence`: given up from the detector's next look on
    assert look_then_gone()
    reg.set_state("h1", HostState.READY)
    reg.heartbeat("h1", {}, facts, "10.0.0.1:7481")
    assert not look_then_gone()
    reg.set_state("h1", HostState.DRAINING)  # draining still holds its lease
    assert not look_then_gone()
    reg.remove("h1")  # removed: its link goes too, never given up as gone
    assert not look_then_gone()
    # The same looks are the host's events (the first found it ready, as it starts out).
    assert [e.result for e in store.events() if e.target == "host/h1"] == [
        "fenced", "ready", "draining"]
