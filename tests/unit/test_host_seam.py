"""The host seam without a host: the call table matches the protocol, a host side refuses a
stale epoch before it acts and counts what it finished, the client tracks what an
observation must reflect, and the observed cache never goes back to older facts."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import cast

import pytest

from rackfire.agent.hostside import HostSide, Served
from rackfire.agent.inprocess import InProcessLink
from rackfire.control.observed import ObservedCache
from rackfire.errors import ExecError, StaleEpoch
from rackfire.model.agent import ACTION, CALLS, HostAgent, Observed, Stamp
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState
from rackfire.model.stack import RuntimeKind

KEY = InstanceKey("s", "web", 0)


def _facts(state: InstanceState = InstanceState.RUNNING, key: InstanceKey = KEY
           ) -> InstanceFacts:
    return InstanceFacts(key, state, RuntimeKind.PROCESS, "h1")


class Recorder:
    """Enough of a host for the seam: it records each stop and what stamped it."""

    def __init__(self) -> None:
        self.stopped: list[tuple[InstanceKey, str]] = []
        self.running = True

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return [_facts(InstanceState.RUNNING if self.running else InstanceState.STOPPED)]

    def stop(self, key: InstanceKey, stop_timeout: float = 10) -> None:
        self.stopped.append((key, ACTION.get()))
        self.running = False

    def destroy(self, key: InstanceKey, stop_timeout: float = 10) -> None:
        raise ExecError("it would not go")


def test_the_call_table_names_every_call_of_the_protocol() -> None:
    declared = {n for n, _ in inspect.getmembers(HostAgent, inspect.isfunction)
                if not n.startswith("_")}
    assert declared == set(CALLS)
    assert all(c.timeout > 0 for c in CALLS.values())
    assert not CALLS["observe"].mutating and CALLS["create"].mutating


def test_a_stale_epoch_is_refused_before_anything_is_done(tmp_path: Path) -> None:
    host = Recorder()
    side = HostSide(cast(Served, host), tmp_path)
    side.call("stop", {"key": KEY}, Stamp(3, "a1"))
    assert side.epoch == 3 and (tmp_path / "epoch").read_text().strip() == "3"
    with pytest.raises(StaleEpoch, match="epoch 2 refused"):
        side.call("stop", {"key": KEY}, Stamp(2, "a2"))
    assert len(host.stopped) == 1  # the refused call did nothing
    # A restarted agent remembers the epoch it was told.
    again = HostSide(cast(Served, Recorder()), tmp_path)
    with pytest.raises(StaleEpoch):
        again.call("stop", {"key": KEY}, Stamp(2))
    again.adopt(4)
    assert again.epoch == 4


def test_an_observation_says_which_calls_it_reflects() -> None:
    host = Recorder()
    link = InProcessLink(HostSide(cast(Served, host)), epoch=lambda: 1)
    before = link.observed("s")
    assert before.done == 0 and link.done() == (before.boot, 0)
    token = ACTION.set("act-7")
    try:
        link.stop(KEY)
    finally:
        ACTION.reset(token)
    assert host.stopped == [(KEY, "act-7")]  # the action id rode along
    boot, done = link.done()
    assert done == 1 and boot == before.boot
    cache = ObservedCache()
    cache.put("h1", before)
    assert not cache.fresh("h1", "s", link.done())  # it predates the stop
    cache.put("h1", link.observed("s"))
    assert cache.fresh("h1", "s", link.done())
    assert cache.facts("h1", "s") == [_facts(InstanceState.STOPPED)]
    # A failed mutating call: nothing cached is fresh until the host is looked at again.
    with pytest.raises(ExecError):
        link.destroy(KEY)
    assert not cache.fresh("h1", "s", link.done())
    cache.put("h1", link.observed("s"))
    assert cache.fresh("h1", "s", link.done())


def test_the_cache_keeps_the_newer_of_two_looks() -> None:
    cache = ObservedCache()
    newer = Observed("b1", 5, (_facts(InstanceState.STOPPED),), "s")
    older_heartbeat = Observed("b1", 4, (_facts(InstanceState.RUNNING),
                                         _facts(key=InstanceKey("t", "db", 0))))
    cache.put("h1", newer)
    cache.put("h1", older_heartbeat)  # on its way while the fleet asked directly
    assert cache.facts("h1", "s") == [_facts(InstanceState.STOPPED)]
    assert cache.facts("h1", "t") == [_facts(key=InstanceKey("t", "db", 0))]
    assert cache.facts("h1") == [_facts(InstanceState.STOPPED),
                                 _facts(key=InstanceKey("t", "db", 0))]
    # The agent restarted: its count begins again, and its word is the newest.
    cache.put("h1", Observed("b2", 0, ()))
    assert cache.facts("h1", "s") == [] and cache.fresh("h1", "s", ("b2", 0))
    assert not cache.fresh("h1", "s", ("b1", 5))
    assert cache.facts("h2") is None




def test_a_host_that_says_nothing_changed_keeps_its_facts_as_of_now() -> None:
    now = [100.0]
    cache = ObservedCache(clock=lambda: now[0])
    cache.confirm("h1")  # nothing told yet: nothing to confirm, and it is asked for all
    assert cache.observed_at("h1") is None
    cache.put("h1", Observed("b1", 2, (_facts(),)))
    now[0] = 130.0
    cache.confirm("h1")
    assert cache.observed_at("h1") == 130.0 and cache.facts("h1") == [_facts()]
