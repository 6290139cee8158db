"""The pure scheduler and the capacity analysis, with exact expectations."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import DataDisk, Resources, RoleSpec, RuntimeKind, StackSpec
from rackfire.schedule import (
    Ask,
    Check,
    Placement,
    Rejection,
    Strategy,
    explain,
    headroom,
    placement_order,
    redundancy,
    schedule,
    usage,
    wanted_for,
)

G = 1 << 30
M = 1 << 20
NOTHING = Reservation()


def host(name: str, *, cpus: float = 2.0, memory: int = 2 * G, disk: int = 10 * G,
         state: HostState = HostState.READY, rack: str | None = None,
         runtimes: tuple[RuntimeKind, ...] = (RuntimeKind.CONTAINER,),
         reserved: Reservation = NOTHING) -> Host:
    return Host(name, HostCapacity(cpus, memory, disk), state,
                (("rack", rack),) if rack else (), runtimes, reserved)


def ask(cpu: float = 0.5, memory: int = 512 * M, disk: int = 1 * G, **kw: object) -> Ask:
    return Ask(Reservation(cpu, memory, disk), **kw)  # type: ignore[arg-type]


def want(role: str, n: int, a: Ask, stack: str = "s") -> dict[InstanceKey, Ask]:
    return {InstanceKey(stack, role, i): a for i in range(n)}


def per_host(p: Placement) -> dict[str, int]:
    return dict(sorted(Counter(p.assignments().values()).items()))


def key(role: str, i: int) -> InstanceKey:
    return InstanceKey("s", role, i)


# spread and binpack


def test_spread_puts_12_instances_4_on_each_of_3_equal_hosts() -> None:
    hosts = [host(n, cpus=8.0, memory=16 * G, disk=100 * G) for n in "abc"]
    p = schedule(hosts, {}, want("web", 12, ask()))
    assert per_host(p) == {"a": 4, "b": 4, "c": 4}
    # Round robin by name: equal scores go to the host whose name sorts first.
    assert [p.assignments()[key("web", i)] for i in range(6)] == list("abcabc")


def test_spread_goes_to_another_rack_before_another_host_of_the_same_rack() -> None:
    hosts = [host("a", rack="r1"), host("b", rack="r1"), host("c", rack="r2")]
    p = schedule(hosts, {}, want("web", 3, ask()))
    assert [p.assignments()[key("web", i)] for i in range(3)] == ["a", "c", "b"]


def test_spread_then_prefers_the_host_with_most_free() -> None:
    hosts = [host("a", reserved=Reservation(1.0, 1 * G, 0)), host("b")]
    assert schedule(hosts, {}, want("web", 1, ask())).assignments() == {key("web", 0): "b"}


def test_spread_counts_only_the_same_role() -> None:
    hosts = [host("a"), host("b")]
    p = schedule(hosts, {}, {**want("db", 1, ask()), **want("web", 2, ask())})
    # web/0 goes to b for its free room, but web/1 to a: db does not count against web.
    assert p.assignments() == {key("db", 0): "a", key("web", 0): "b", key("web", 1): "a"}


def test_binpack_fills_one_host_before_the_next() -> None:
    hosts = [host(n, cpus=4.0, memory=8 * G) for n in "abc"]
    p = schedule(hosts, {}, want("web", 6, ask(cpu=1.0, strategy=Strategy.BINPACK)))
    assert per_host(p) == {"a": 4, "b": 2}


def test_binpack_takes_the_tightest_fit() -> None:
    hosts = [host("big", cpus=8.0, memory=8 * G), host("small")]
    p = schedule(hosts, {}, want("web", 1, ask(strategy=Strategy.BINPACK)))
    assert p.assignments() == {key("web", 0): "small"}


# feasibility: never overcommit


def test_a_request_too_big_for_every_host_is_unplaced_with_each_hosts_reason() -> None:
    hosts = [host("a"), host("b", reserved=Reservation(0, 1 * G, 0)),
             host("c", state=HostState.DOWN)]
    p = schedule(hosts, {}, want("db", 1, ask(cpu=4.0, memory=3 * G)))
    assert p.assignments() == {}
    (d,) = p.unplaced
    assert d.key == key("db", 0) and d.ranked == ()
    assert d.rejected == (
        Rejection("a", Check.CPU, "needs 4, 2 free"),
        Rejection("a", Check.MEMORY, "needs 3G, 2G free"),
        Rejection("b", Check.CPU, "needs 4, 2 free"),
        Rejection("b", Check.MEMORY, "needs 3G, 1G free"),
        Rejection("c", Check.STATE, "host is down"),
    )


def test_a_host_is_never_filled_past_its_capacity() -> None:
    hosts = [host("a", memory=1 * G), host("b", memory=1 * G)]
    p = schedule(hosts, {}, want("web", 5, ask(cpu=0.1)))
    assert per_host(p) == {"a": 2, "b": 2}
    assert [str(r) for r in p.decision(key("web", 4)).rejected] == [
        "memory: needs 512M, 0B free", "memory: needs 512M, 0B free"]


def test_exact_fits_in_cpu_are_not_lost_to_float_sums() -> None:
    p = schedule([host("a", cpus=1.0)], {}, want("web", 10, ask(cpu=0.1, memory=0, disk=0)))
    assert per_host(p) == {"a": 10}


def test_no_memory_or_cpu_limit_reserves_none_and_a_data_disk_counts_as_disk() -> None:
    role = RoleSpec("web", "base", count=2,
                    resources=Resources(cpu=None, memory=None, disk=1 * G),
                    data=DataDisk("/data", 2 * G))
    wanted = wanted_for(StackSpec("s", roles=(role,)))
    assert list(wanted) == [key("web", 0), key("web", 1)]
    assert wanted[key("web", 0)].need == Reservation(0.0, 0, 3 * G)
    p = schedule([host("a", cpus=0.0, memory=0, disk=5 * G)], {}, wanted)
    assert per_host(p) == {"a": 1}
    assert [str(r) for r in p.unplaced[0].rejected] == ["disk: needs 3G, 2G free"]


def test_a_host_already_over_says_so() -> None:
    p = schedule([host("a", reserved=Reservation(0, 3 * G, 0))], {}, want("web", 1, ask()))
    assert [str(r) for r in p.unplaced[0].rejected] == [
        "memory: needs 512M, none free (over by 1G)"]


def test_runtime_must_be_available() -> None:
    hosts = [host("a"), host("b", runtimes=(RuntimeKind.CONTAINER, RuntimeKind.PROCESS))]
    p = schedule(hosts, {}, want("web", 2, ask(runtime=RuntimeKind.PROCESS)), explain=True)
    assert per_host(p) == {"b": 2}
    assert [str(r) for r in p.decision(key("web", 0)).rejected] == [
        "runtime: needs process, host has container"]


def test_label_constraints() -> None:
    hosts = [host("a", rack="r1"), host("b", rack="r2"), host("c"), host("d", rack="r2")]
    p = schedule(hosts, {}, want("web", 4, ask(labels=(("rack", "r2"),))), explain=True)
    assert per_host(p) == {"b": 2, "d": 2}
    assert [str(r) for r in p.decision(key("web", 0)).rejected] == [
        "label: needs rack=r2, host has rack=r1", "label: needs rack=r2, host has no rack"]


def test_distinct_hosts_never_puts_two_of_the_role_on_one_host() -> None:
    hosts = [host(n, cpus=8.0, memory=8 * G) for n in "abc"]
    p = schedule(hosts, {}, want("db", 4, ask(distinct_hosts=True, strategy=Strategy.BINPACK)))
    assert per_host(p) == {"a": 1, "b": 1, "c": 1}
    assert [str(r) for r in p.decision(key("db", 3)).rejected] == [
        "distinct: s/db/0 is already on this host", "distinct: s/db/1 is already on this host",
        "distinct: s/db/2 is already on this host"]


# what is placed stays, unless it cannot


def test_placed_instances_stay_even_when_unbalanced() -> None:
    hosts = [host(n) for n in "abc"]
    placed = {key("web", i): "a" for i in range(3)}
    p = schedule(hosts, placed, want("web", 4, ask()))
    assert [d.kept for d in p.decisions] == [True, True, True, False]
    assert p.assignments() == {**placed, key("web", 3): "b"}


def test_a_draining_host_gets_nothing_new_and_its_instances_move() -> None:
    hosts = [host("a"), host("b", state=HostState.DRAINING), host("c")]
    placed = {key("web", 0): "a", key("web", 1): "b", key("web", 2): "c"}
    p = schedule(hosts, placed, want("web", 5, ask()))
    assert "b" not in p.assignments().values()
    assert [d.key for d in p.moved] == [key("web", 1)]
    moved = p.decision(key("web", 1))
    assert (moved.previous, moved.host) == ("b", "a")
    assert moved.left == (Rejection("b", Check.STATE, "host is draining"),)
    assert p.decision(key("web", 0)).kept and p.decision(key("web", 2)).kept
    assert per_host(p) == {"a": 3, "c": 2}


def test_instances_on_a_down_or_unknown_host_move() -> None:
    hosts = [host("a", state=HostState.DOWN), host("b")]
    p = schedule(hosts, {key("web", 0): "a", key("web", 1): "gone"}, want("web", 2, ask()))
    assert p.assignments() == {key("web", 0): "b", key("web", 1): "b"}
    assert [str(r) for d in p.moved for r in d.left] == [
        "state: host is down", "host: not known"]


def test_a_kept_instance_that_no_longer_fits_is_the_one_that_moves() -> None:
    # Its host shrank: the instances that come first in order stay.
    hosts = [host("a", memory=1 * G), host("b")]
    placed = {key("web", i): "a" for i in range(3)}
    p = schedule(hosts, placed, want("web", 3, ask()))
    assert p.assignments() == {key("web", 0): "a", key("web", 1): "a", key("web", 2): "b"}
    assert [str(r) for r in p.decision(key("web", 2)).left] == ["memory: needs 512M, 0B free"]


# determinism


def test_order_is_role_order_then_index_and_hosts_order_never_matters() -> None:
    wanted = {key("web", 1): ask(), key("db", 0): ask(), key("web", 0): ask(), **want(
        "mem", 2, ask(cpu=0.25))}
    assert placement_order(wanted) == [key("web", 0), key("web", 1), key("db", 0),
                                       key("mem", 0), key("mem", 1)]
    hosts = [host(n, rack=f"r{i % 2}") for i, n in enumerate("abcde")]
    first = schedule(hosts, {}, wanted)
    for seed in range(5):
        shuffled = hosts[:]
        random.Random(seed).shuffle(shuffled)
        assert schedule(shuffled, {}, wanted) == first


def test_a_host_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="host a is given twice"):
        schedule([host("a"), host("a")], {}, {})


# the explanation


def test_explain_says_why_each_host_was_chosen_ranked_lower_or_rejected() -> None:
    hosts = [host("a", rack="r1"), host("b", rack="r2"), host("c", rack="r2", memory=256 * M),
             host("d", state=HostState.DRAINING)]
    wanted = {**want("web", 2, ask()), **want("db", 1, ask(memory=4 * G)),
              **want("cache", 1, ask(cpu=0.0, memory=0))}
    placed = {key("web", 1): "d", key("cache", 0): "c"}
    assert explain(schedule(hosts, placed, wanted, explain=True)) == [
        "s/web/0 -> a (spread: 0 web on host, 0 on rack r1, 80.0% free after)",
        "  b: ranked 2: same score; a sorts first",
        "  c: rejected: memory: needs 512M, 256M free",
        "  d: rejected: state: host is draining",
        "s/web/1 -> b, moved from d (state: host is draining) "
        "(spread: 0 web on host, 0 on rack r2, 80.0% free after)",
        "  a: ranked 2: 1 web on host (vs 0)",
        "  c: rejected: memory: needs 512M, 256M free",
        "  d: rejected: state: host is draining",
        "s/db/0 not placed: no host can take it",
        "  a: rejected: memory: needs 4G, 1536M free",
        "  b: rejected: memory: needs 4G, 1536M free",
        "  c: rejected: memory: needs 4G, 256M free",
        "  d: rejected: state: host is draining",
        "s/cache/0 stays on c",
    ]


def test_explain_ranks_on_rack_then_free_and_binpack_on_fit() -> None:
    hosts = [host("a", rack="r1"), host("b", rack="r1"), host("c", rack="r2"),
             host("d", rack="r2", memory=4 * G)]
    p = schedule(hosts, {key("web", 0): "a"}, want("web", 2, ask()), explain=True)
    assert explain(p)[1:] == [
        "s/web/1 -> d (spread: 0 web on host, 0 on rack r2, 84.2% free after)",
        "  c: ranked 2: 80.0% free after (vs 84.2%)",
        "  b: ranked 3: 1 web on rack r1 (vs 0)",
        "  a: ranked 4: 1 web on host (vs 0)",
    ]
    p = schedule(hosts, {}, want("web", 1, ask(strategy=Strategy.BINPACK)), explain=True)
    assert explain(p) == [
        "s/web/0 -> a (binpack: 80.0% free after)",
        "  b: ranked 2: same score; a sorts first",
        "  c: ranked 3: same score; a sorts first",
        "  d: ranked 4: 84.2% free after (vs 80.0%): a looser fit",
    ]


def test_explain_an_instance_that_must_leave_and_fits_nowhere() -> None:
    hosts = [host("a", state=HostState.DOWN), host("b", memory=256 * M)]
    assert explain(schedule(hosts, {key("web", 0): "a"}, want("web", 1, ask()))) == [
        "s/web/0 not placed: no host can take it; it was on a (state: host is down)",
        "  a: rejected: state: host is down",
        "  b: rejected: memory: needs 512M, 256M free",
    ]


def test_explain_with_no_hosts() -> None:
    assert explain(schedule([], {}, want("web", 1, ask()))) == [
        "s/web/0 not placed: no host can take it (no hosts)"]


# capacity analysis


def test_usage_per_host() -> None:
    hosts = [host("b", reserved=Reservation(0.5, 0, 0)), host("a")]
    asks = want("web", 3, ask())
    (a, b) = usage(hosts, {key("web", 0): "a", key("web", 1): "a", key("web", 2): "b"}, asks)
    assert (a.host, a.reserved, a.free, a.instances) == (
        "a", Reservation(1.0, 1 * G, 2 * G), Reservation(1.0, 1 * G, 8 * G),
        (key("web", 0), key("web", 1)))
    assert (b.host, b.reserved, b.free) == (
        "b", Reservation(1.0, 512 * M, 1 * G), Reservation(1.0, 1536 * M, 9 * G))


def test_n_plus_1_for_hosts_and_racks_names_what_would_not_fit() -> None:
    # Three hosts with room for 3 each, 2 on each: any one host's 2 fit on the others; the
    # rack of a and b holds 4, which c's one free place cannot take.
    hosts = [host("a", rack="r1"), host("b", rack="r1"), host("c", rack="r2"),
             host("x", memory=0)]
    web = ask(cpu=0.5, memory=640 * M)
    asks = want("web", 6, web)
    placed = dict(zip(asks, "aabbcc", strict=True))
    r = redundancy(hosts, placed, asks)
    assert r.n_plus_1 and not r.rack_safe
    assert [(loss.lost, loss.displaced) for loss in r.hosts] == [
        ("a", (key("web", 0), key("web", 1))), ("b", (key("web", 2), key("web", 3))),
        ("c", (key("web", 4), key("web", 5))), ("x", ())]
    assert r.unracked == ("x",)
    (r1, r2) = r.racks
    assert (r1.lost, r1.hosts, r1.ok) == ("r1", ("a", "b"), False)
    assert [d.key for d in r1.stranded] == [key("web", 1), key("web", 2), key("web", 3)]
    assert [str(x) for x in r1.stranded[0].rejected] == [
        "state: host is down", "state: host is down", "memory: needs 640M, 128M free",
        "memory: needs 640M, 0B free"]
    assert (r2.lost, r2.ok) == ("r2", True)


def test_headroom_counts_more_instances_per_host_with_what_stops_the_next() -> None:
    hosts = [host("a"), host("b", reserved=Reservation(0, 1792 * M, 0)),
             host("c", state=HostState.DRAINING)]
    asks = want("web", 2, ask())
    placed = {key("web", 0): "a", key("web", 1): "c"}  # web/1 will move off c: to a
    room = headroom(hosts, placed, asks, ("s", "web"))
    assert room.total == 2
    assert [(r.host, r.fits, [str(x) for x in r.then]) for r in room.hosts] == [
        ("a", 2, ["cpu: needs 0.5, 0 free", "memory: needs 512M, 0B free"]),
        ("b", 0, ["memory: needs 512M, 256M free"]),
        ("c", 0, ["state: host is draining"]),
    ]
    # The same count whatever the strategy; distinct hosts: one more per host without one.
    binpack = ask(strategy=Strategy.BINPACK)
    assert headroom(hosts, placed, asks, ("s", "web"), binpack).total == 2
    one_each = headroom([host(n, cpus=8.0, memory=8 * G) for n in "abc"], {key("web", 0): "a"},
                        asks, ("s", "web"), ask(distinct_hosts=True))
    assert [(r.host, r.fits) for r in one_each.hosts] == [("a", 0), ("b", 1), ("c", 1)]
    assert [str(x) for x in one_each.hosts[1].then] == [
        "distinct: s/web/1 is already on this host"]


def test_headroom_of_a_role_that_reserves_nothing_has_no_end() -> None:
    free = headroom([host("a")], {}, {}, ("s", "tiny"), ask(cpu=0.0, memory=0, disk=0))
    assert free.total is None and free.hosts[0].fits is None


def test_headroom_needs_an_ask_for_a_role_with_no_instances() -> None:
    with pytest.raises(KeyError):
        headroom([host("a")], {}, {}, ("s", "web"))
