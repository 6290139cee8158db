"""Properties of the scheduler on random hosts and requests (Hypothesis).

Amounts come from coarse grids (quarter cores, 128M of memory, 512M of disk): exact in
binary floating point, and full hosts and exact fits are common, which is where mistakes hide.
The checks below recompute what they need from the input; they do not reuse the scheduler's
own ledger.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import RuntimeKind, Spread
from rackfire.schedule import Ask, Placement, Strategy, headroom, move, schedule

M = 1 << 20
CHECKS = settings(max_examples=120, deadline=None, database=None)

cpus = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0])
memory = st.integers(0, 16).map(lambda n: n * 128 * M)
disk = st.integers(0, 8).map(lambda n: n * 512 * M)
# Weighted towards hosts that can take instances: a full host is where mistakes show.
states = st.sampled_from([HostState.READY] * 4 + [HostState.DRAINING, HostState.DOWN])
runtimes = st.sampled_from([(RuntimeKind.CONTAINER,)] * 3 + [
    (RuntimeKind.PROCESS,), (RuntimeKind.CONTAINER, RuntimeKind.PROCESS), ()])
racks = st.sampled_from([None, "r1", "r2"])
sites = st.sampled_from([None, None, "s1", "s2"])


@st.composite
def hosts(draw: st.DrawFn) -> list[Host]:
    names = draw(st.lists(st.sampled_from([f"h{i}" for i in range(8)]), unique=True,
                          max_size=6))
    out = []
    for name in names:
        rack, site = draw(racks), draw(sites)
        out.append(Host(
            name, HostCapacity(draw(cpus), draw(memory), draw(disk)),
            draw(states), tuple((k, v) for k, v in (("rack", rack), ("site", site)) if v),
            draw(runtimes),
            draw(st.one_of(st.just(Reservation()),
                           st.builds(Reservation, cpus, memory, disk)))))
    return out


asks = st.builds(
    Ask, st.builds(Reservation, st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                   st.integers(0, 6).map(lambda n: n * 128 * M),
                   st.integers(0, 3).map(lambda n: n * 512 * M)),
    st.sampled_from([None] * 3 + [RuntimeKind.CONTAINER, RuntimeKind.PROCESS]),
    st.sampled_from([()] * 3 + [(("rack", "r1"),)]),
    st.booleans(),
    st.sampled_from(Strategy),
    st.sampled_from([None] * 3 + [Spread.RACK, Spread.SITE]))  # a hard failure domain


@st.composite
def wanted(draw: st.DrawFn) -> dict[InstanceKey, Ask]:
    roles = draw(st.lists(st.sampled_from(["web", "app", "db", "mem"]), unique=True,
                          max_size=3))
    out: dict[InstanceKey, Ask] = {}
    for role in roles:
        a = draw(asks)
        for i in range(draw(st.integers(0, 8))):
            out[InstanceKey("s", role, i)] = a
    return out


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Host], dict[InstanceKey, str],
                                         dict[InstanceKey, Ask]]:
    """Hosts, where some instances run now (maybe on a host that is gone), and the want."""
    hs, want = draw(hosts()), draw(wanted())
    names = [h.name for h in hs] + ["gone"]
    placed = {k: draw(st.sampled_from(names)) for k in want if draw(st.booleans())}
    return hs, placed, want


def fits_now(h: Host, key: InstanceKey, a: Ask, assigned: dict[InstanceKey, str],
             want: dict[InstanceKey, Ask], fleet: list[Host]) -> bool:
    """Whether `h` could take one more instance on top of `assigned` (on `fleet`): an
    oracle written apart from the scheduler's checks."""
    if h.state is not HostState.READY:
        return False
    if (a.runtime is None and not h.runtimes) or (a.runtime and a.runtime not in h.runtimes):
        return False
    if any(h.label(k) != v for k, v in a.labels):
        return False
    on = [k for k, where in assigned.items() if where == h.name]
    if a.distinct_hosts and any((k.stack, k.role) == (key.stack, key.role) for k in on):
        return False
    if a.spread is not None:  # its rack (site) must exist and hold none of the role
        label = {x.name: x.label(a.spread.value) for x in fleet}
        mine = label[h.name]
        if mine is None or any((k.stack, k.role) == (key.stack, key.role)
                               and label.get(where) == mine for k, where in assigned.items()):
            return False
    used = h.reserved
    for k in on:
        used += want[k].need
    return (used + a.need).within(h.total)


@CHECKS
@given(situations())
def test_no_host_is_ever_over_its_capacity_or_breaks_a_constraint(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]]) -> None:
    hs, placed, want = s
    got = schedule(hs, placed, want).assignments()
    by_name = {h.name: h for h in hs}
    for name in set(got.values()):
        h = by_name[name]
        on = [k for k, where in got.items() if where == name]
        used = h.reserved
        for k in on:
            used += want[k].need
        assert used.within(h.total), (name, used, h.total)
        assert h.state is HostState.READY
        for k in on:
            a = want[k]
            assert a.runtime in h.runtimes if a.runtime else h.runtimes
            assert all(h.label(lk) == v for lk, v in a.labels)
        distinct = Counter(k.role for k in on if want[k].distinct_hosts)
        assert all(n == 1 for n in distinct.values())
    # A hard failure domain: never two of a role in one rack (site), none outside every one.
    apart = Counter((k.role, spread, by_name[where].label(spread.value))
                    for k, where in got.items() if (spread := want[k].spread) is not None)
    assert all(domain is not None and n == 1 for (_, _, domain), n in apart.items()), apart


@CHECKS
@given(situations(), st.randoms(use_true_random=False))
def test_the_same_input_gives_the_same_placement_whatever_the_hosts_order(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]],
        rnd: random.Random) -> None:
    hs, placed, want = s
    shuffled = hs[:]
    rnd.shuffle(shuffled)
    assert schedule(shuffled, placed, want) == schedule(hs, placed, want)


@CHECKS
@given(situations(), st.integers(0, 7), st.sampled_from([HostState.DRAINING, HostState.DOWN]))
def test_placements_change_only_for_instances_whose_host_became_infeasible(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]], pick: int,
        state: HostState) -> None:
    hs, placed, want = s
    first = schedule(hs, placed, want).assignments()
    # Run again on its own result: a fixed point, everything stays.
    again = schedule(hs, first, want)
    assert again.assignments() == first
    assert all(d.kept for d in again.decisions if d.host is not None)
    if not hs:
        return
    # Take one host away: only what was on it moves.
    lost = hs[pick % len(hs)].name
    after = schedule([replace(h, state=state) if h.name == lost else h for h in hs], first,
                     want)
    for d in after.decisions:
        if first.get(d.key) not in (None, lost):
            assert d.kept and d.host == first[d.key], d
        else:
            assert d.host != lost


@CHECKS
@given(situations())
def test_every_host_is_accounted_for_and_nothing_placeable_is_left_out(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]]) -> None:
    hs, placed, want = s
    p: Placement = schedule(hs, placed, want, explain=True)
    got = p.assignments()
    names = sorted(h.name for h in hs)
    for d in p.decisions:
        if d.kept:
            continue
        ranked = [c.host for c in d.ranked]
        rejected = sorted({r.host for r in d.rejected})
        assert sorted(ranked + rejected) == names  # each host once: ranked or rejected
        assert d.host == (ranked[0] if ranked else None)
        if d.host is None:
            # Not a gap in the search: no host could take it even now.
            assert not any(fits_now(h, d.key, d.ask, got, want, hs) for h in hs)


@CHECKS
@given(situations(), asks)
def test_headroom_is_exactly_what_the_scheduler_then_places(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]],
        extra: Ask) -> None:
    hs, placed, want = s
    room = headroom(hs, placed, want, ("x", "more"), extra)
    if room.total is None:
        assert extra.need == Reservation()
        return
    current = {k: a for k, a in want.items() if k in placed}
    more = {InstanceKey("x", "more", i): extra for i in range(room.total + 1)}
    p = schedule(hs, placed, {**current, **more})
    left = [d.key for d in p.unplaced if d.key.stack == "x"]
    assert left == [InstanceKey("x", "more", room.total)]


@CHECKS
@given(situations(), st.integers(0, 30), st.randoms(use_true_random=False))
def test_a_move_lands_only_where_the_instance_fits_beside_everything_that_stays(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]], pick: int,
        rnd: random.Random) -> None:
    hs, placed, want = s
    if not want:
        return
    key = sorted(want)[pick % len(want)]
    d = move(hs, placed, want, key)
    shuffled = hs[:]
    rnd.shuffle(shuffled)
    assert move(shuffled, placed, want, key) == d  # deterministic, whatever the order
    others = {k: h for k, h in placed.items() if k != key and h in {x.name for x in hs}}
    feasible = {h.name for h in hs if h.name != placed.get(key)
                and fits_now(h, key, want[key], others, want, hs)}
    if d.host is None:
        assert not feasible  # it says no only when no other host could take it
    else:
        assert d.host in feasible and d.host != placed.get(key)


@CHECKS
@given(situations(), st.lists(asks, max_size=3), st.randoms(use_true_random=False))
def test_the_index_chooses_what_asking_every_host_ranks_first(
        s: tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]],
        others: list[Ask], rnd: random.Random) -> None:
    hs, placed, want = s
    for k in list(want):  # a role may mix asks (its surge instances ask what the new spec does)
        if others and rnd.random() < 0.3:
            want[k] = rnd.choice(others)
    fast, full = schedule(hs, placed, want), schedule(hs, placed, want, explain=True)
    assert [d.host for d in fast.decisions] == [d.host for d in full.decisions]
    for a, b in zip(fast.decisions, full.decisions, strict=True):
        assert a.ranked[:1] == b.ranked[:1]  # the same score for the chosen host
        if a.host is None:
            assert a.rejected == b.rejected


def test_the_index_agrees_on_a_large_mixed_fleet() -> None:
    rnd = random.Random(7)
    hs = [Host(f"h{i:03}", HostCapacity(rnd.choice([2.0, 4.0, 8.0]),
                                        rnd.choice([4, 8, 16]) * 1024 * M, 64 * 1024 * M),
               HostState.READY if rnd.random() < 0.9 else HostState.DRAINING,
               (("rack", f"r{i % 7}"),) if i % 5 else ())
          for i in range(80)]
    want: dict[InstanceKey, Ask] = {}
    for role, n, strategy in [("web", 300, Strategy.SPREAD), ("db", 40, Strategy.BINPACK),
                              ("mem", 150, Strategy.SPREAD), ("job", 1500, Strategy.BINPACK)]:
        for i in range(n):
            want[InstanceKey("s", role, i)] = Ask(
                Reservation(rnd.choice([0.0, 0.25, 0.5]), rnd.choice([1, 2, 4]) * 128 * M,
                            512 * M), strategy=strategy, distinct_hosts=role == "db")
    placed = {k: f"h{rnd.randrange(90):03}" for k in want if rnd.random() < 0.2}
    fast, full = schedule(hs, placed, want), schedule(hs, placed, want, explain=True)
    assert fast.assignments() == full.assignments()
    assert len(full.unplaced) > 0 and len(fast.assignments()) > 500  # both paths exercised
