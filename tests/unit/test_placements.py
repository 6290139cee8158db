"""Where instances are kept (placements, VNIs, migrations) and where one goes when it moves
(`schedule.move`, pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.schedule import Ask, Check, move
from rackfire.store import Store
from rackfire.store.placements import FIRST_VNI, Placements

G = 1 << 30


def host(name: str, memory: int = 4 * G, state: HostState = HostState.READY,
         rack: str | None = None) -> Host:
    return Host(name, HostCapacity(4.0, memory, 100 * G), state,
                (("rack", rack),) if rack else ())


def key(i: int, role: str = "web") -> InstanceKey:
    return InstanceKey("s", role, i)


ONE_G = Ask(Reservation(0.5, G, G))


def test_move_picks_the_best_other_host_and_holds_everything_else() -> None:
    hosts = [host("a"), host("b"), host("c")]
    placed = {key(0): "a", key(1): "b", key(2): "a"}
    wanted = dict.fromkeys(placed, ONE_G)
    d = move(hosts, placed, wanted, key(0))
    # Spread: c has none of the role, b has one; a is where it leaves from.
    assert (d.host, d.previous) == ("c", "a")
    assert [c.host for c in d.ranked] == ["c", "b"]


def test_move_to_a_named_host_is_refused_with_the_reason() -> None:
    hosts = [host("a"), host("b", memory=2 * G)]
    placed = {key(0): "a", key(1): "b", key(2): "b"}
    wanted = dict.fromkeys(placed, ONE_G)
    d = move(hosts, placed, wanted, key(0), to="b")
    assert d.host is None
    [why] = d.rejected
    assert (why.host, why.check) == ("b", Check.MEMORY)
    d = move(hosts, placed, wanted, key(0), to="nowhere")
    assert d.host is None and d.rejected[0].check is Check.HOST


def test_move_never_picks_a_draining_or_down_host() -> None:
    hosts = [host("a"), host("b", state=HostState.DRAINING), host("c", state=HostState.DOWN)]
    d = move(hosts, {key(0): "a"}, {key(0): ONE_G}, key(0))
    assert d.host is None
    assert {r.host: r.check for r in d.rejected} == {"b": Check.STATE, "c": Check.STATE}


def test_move_keeps_the_reservations_of_instances_on_a_draining_host() -> None:
    # b is draining but still holds k1 until it moves itself: c is then the only room.
    hosts = [host("a", memory=G), host("b", state=HostState.DRAINING), host("c", memory=G)]
    placed = {key(0): "b", key(1): "b", key(2): "a"}
    wanted = dict.fromkeys(placed, ONE_G)
    assert move(hosts, placed, wanted, key(0)).host == "c"


@pytest.fixture
def places(tmp_path: Path) -> Placements:
    return Placements(Store(tmp_path / "db.sqlite"))


def test_placements_are_kept_and_replaced(places: Placements) -> None:
    places.put({key(0): "a", key(1): "b"})
    places.put({key(1): "c"})
    assert places.of_stack("s") == {key(0): "a", key(1): "c"}
    assert places.host_of(key(1)) == "c" and places.host_of(key(9)) is None
    places.drop(key(0))
    assert places.all() == {key(1): "c"}


def test_each_stack_gets_its_own_vni_for_good(places: Placements) -> None:
    a, b = places.vni("a"), places.vni("b")
    assert a == FIRST_VNI and b == FIRST_VNI + 1
    assert places.vni("a") == a  # asked again: the same
    places.store.forget_stack("a")  # the stack is gone: its VNI is free again
    assert places.vni("c") == FIRST_VNI


def test_a_migration_is_a_row_until_it_ends_where_it_ends(places: Placements) -> None:
    places.put({key(0): "a"})
    places.start_migration(key(0), "a", "b", "alice")
    places.set_step(key(0), "copying")
    [m] = places.migrations("s")
    assert (m.source, m.target, m.step, m.actor) == ("a", "b", "copying", "alice")
    assert places.host_of(key(0)) == "a"  # still the source's until the end
    places.end_migration(key(0), "b")
    assert places.migrations() == [] and places.host_of(key(0)) == "b"
