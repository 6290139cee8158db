"""Failure domains: `placement: {spread: rack|site}` as a hard rule of the scheduler, and
what `rackfire capacity` says of losing any two hosts, any rack and any site."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rackfire.api.answers import CapacityAnswer
from rackfire.control.hosts import HostView, capacity_report
from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host, HostFacts, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import PlacementRule, Resources, RoleSpec, RuntimeKind, Spread
from rackfire.schedule import (
    Ask,
    Check,
    Verdict,
    explain,
    headroom,
    lose,
    move,
    redundancy,
    schedule,
    survival,
    wanted_for,
)
from rackfire.spec import load_stack_text

G = 1 << 30
M = 1 << 20


def host(name: str, rack: str | None = None, site: str | None = None, *,
         cpus: float = 4.0, memory: int = 4 * G) -> Host:
    labels = tuple((k, v) for k, v in (("rack", rack), ("site", site)) if v)
    return Host(name, HostCapacity(cpus, memory, 20 * G), HostState.READY, labels)


def ask(spread: Spread | None = None, **kw: Any) -> Ask:
    return Ask(Reservation(0.5, 512 * M, 1 * G), spread=spread, **kw)


def want(role: str, n: int, a: Ask, stack: str = "s") -> dict[InstanceKey, Ask]:
    return {InstanceKey(stack, role, i): a for i in range(n)}


def key(role: str, i: int, stack: str = "s") -> InstanceKey:
    return InstanceKey(stack, role, i)


# Three racks of two hosts.
RACKS = [host(f"{r}{i}", r) for r in ("r1", "r2", "r3") for i in (1, 2)]


def racks_of(hosts: list[Host], placed: dict[InstanceKey, str]) -> Counter[str | None]:
    by_name = {h.name: h for h in hosts}
    return Counter(by_name[h].rack for h in placed.values())


# the hard rule


@pytest.mark.parametrize("full", [False, True])
def test_three_replicas_spread_over_three_racks_land_one_per_rack(full: bool) -> None:
    p = schedule(RACKS, {}, want("web", 3, ask(Spread.RACK)), explain=full)
    assert p.ok
    assert racks_of(RACKS, p.assignments()) == {"r1": 1, "r2": 1, "r3": 1}


@pytest.mark.parametrize("full", [False, True])
def test_a_fourth_cannot_be_placed_and_says_why_for_every_host(full: bool) -> None:
    p = schedule(RACKS, {}, want("web", 4, ask(Spread.RACK)), explain=full)
    (d,) = p.unplaced
    assert d.key == key("web", 3)
    assert {r.host for r in d.rejected} == {h.name for h in RACKS}
    assert {r.check for r in d.rejected} == {Check.SPREAD}
    assert str(next(r for r in d.rejected if r.host == "r22")) == \
        "spread: s/web/1 is already in rack r2"
    lines = explain(schedule(RACKS, {}, want("web", 4, ask(Spread.RACK)), explain=True))
    assert lines[-7] == "s/web/3 not placed: no host can take it"
    assert "  r11: rejected: spread: s/web/0 is already in rack r1" in lines


def test_a_host_without_the_label_cannot_take_one() -> None:
    hosts = [host("a", "r1"), host("bare"), host("c", site="s1")]
    p = schedule(hosts, {}, want("web", 3, ask(Spread.RACK)), explain=True)
    assert p.assignments() == {key("web", 0): "a"}
    d = p.decision(key("web", 1))
    assert [str(r) for r in d.rejected] == [
        "spread: s/web/0 is already in rack r1",
        "label: spread: rack needs a rack label, host has no rack",
        "label: spread: rack needs a rack label, host has no rack"]
    # The fast path says the same when nothing fits.
    assert schedule(hosts, {}, want("web", 3, ask(Spread.RACK))).decision(
        key("web", 1)).rejected == d.rejected
    # Spread by site: the one with a site label only.
    p = schedule(hosts, {}, want("web", 2, ask(Spread.SITE)))
    assert p.assignments() == {key("web", 0): "c"}
    assert "label: spread: site needs a site label, host has no site" in [
        str(r) for r in p.decision(key("web", 1)).rejected]


def test_spread_by_site_puts_one_per_site_whatever_the_racks() -> None:
    hosts = [host("a", "r1", "s1"), host("b", "r2", "s1"), host("c", "r3", "s2")]
    p = schedule(hosts, {}, want("db", 3, ask(Spread.SITE)))
    assert sorted(p.assignments().values()) == ["a", "c"]
    assert [str(r) for r in p.unplaced[0].rejected] == [
        "spread: s/db/0 is already in site s1", "spread: s/db/0 is already in site s1",
        "spread: s/db/1 is already in site s2"]


def test_only_the_same_role_counts_and_other_checks_still_hold() -> None:
    wanted = {**want("web", 3, ask(Spread.RACK)), **want("api", 3, ask(Spread.RACK))}
    p = schedule(RACKS, {}, wanted)
    assert p.ok
    for role in ("web", "api"):
        mine = {k: h for k, h in p.assignments().items() if k.role == role}
        assert racks_of(RACKS, mine) == {"r1": 1, "r2": 1, "r3": 1}
    # A rack with room only on one full host: the rule does not open another host of it.
    small = [host("a", "r1", cpus=0.5), host("b", "r2")]
    p = schedule(small, {}, want("web", 2, ask(Spread.RACK)), explain=True)
    assert len(p.assignments()) == 2


def test_spread_host_or_none_is_todays_preference_exactly() -> None:
    assert ask(Spread.HOST) == ask() and ask(Spread.HOST).spread is None
    role = RoleSpec("web", "base", count=4, resources=Resources(cpu=0.5, memory=512 * M))
    by_host = RoleSpec("web", "base", count=4, resources=Resources(cpu=0.5, memory=512 * M),
                       placement=PlacementRule(Spread.HOST))
    assert Ask.of_role(by_host) == Ask.of_role(role)
    # Four on three racks: a preference, so the fourth doubles up a rack rather than fail.
    p = schedule(RACKS, {}, want("web", 4, Ask.of_role(by_host)), explain=True)
    assert p.ok and sorted(racks_of(RACKS, p.assignments()).values()) == [1, 1, 2]
    assert explain(p) == explain(schedule(RACKS, {}, want("web", 4, Ask.of_role(role)),
                                          explain=True))
    # ... and a host without a rack takes one.
    assert schedule([host("bare")], {}, want("web", 2, Ask.of_role(role))).ok


def test_the_stack_file_asks_it_and_the_ask_carries_it() -> None:
    spec = load_stack_text("""
stack: shop
roles:
  web:
    image: base
    count: 3
    command: [sleep, "1"]
    placement: {spread: rack}
  db:
    image: base
    command: [sleep, "1"]
    placement: {spread: site}
  job:
    image: base
    command: [sleep, "1"]
    placement: {spread: host}
""", "s.yaml")
    asks = wanted_for(spec)
    assert {k.role: a.spread for k, a in asks.items()} == {
        "web": Spread.RACK, "db": Spread.SITE, "job": None}


def test_an_instance_already_breaking_the_rule_is_the_one_that_moves() -> None:
    a = ask(Spread.RACK)
    placed = {key("web", 0): "r11", key("web", 1): "r12"}  # the rule came after
    p = schedule(RACKS, placed, want("web", 2, a))
    assert p.decision(key("web", 0)).kept
    d = p.decision(key("web", 1))
    assert d.previous == "r12" and d.host in ("r21", "r22", "r31", "r32")
    assert [str(r) for r in d.left] == ["spread: s/web/0 is already in rack r1"]


def test_a_move_keeps_the_rule() -> None:
    a = ask(Spread.RACK)
    placed = {key("web", 0): "r11", key("web", 1): "r21", key("web", 2): "r31"}
    d = move(RACKS, placed, want("web", 3, a), key("web", 0))
    assert d.host == "r12"  # the only host apart from the other two racks
    to = move(RACKS, placed, want("web", 3, a), key("web", 0), to="r22")
    assert to.host is None
    assert [str(r) for r in to.rejected] == ["spread: s/web/1 is already in rack r2"]


def test_headroom_counts_one_per_free_rack() -> None:
    a = ask(Spread.RACK)
    placed = {key("web", 0): "r11"}
    room = headroom([*RACKS, host("bare")], placed, want("web", 1, a), ("s", "web"))
    assert room.total == 2  # r2 and r3, whichever of their hosts
    assert {r.host: r.fits for r in room.hosts} == {
        "bare": 0, "r11": 0, "r12": 0, "r21": 1, "r22": 1, "r31": 1, "r32": 1}
    assert [str(x) for x in room.hosts[3].then] == ["spread: s/web/1 is already in rack r2"]
    # What is placed then is exactly that.
    more = schedule([*RACKS, host("bare")], placed, want("web", 1 + room.total + 1, a))
    assert [d.key for d in more.unplaced] == [key("web", 3)]


# A Hypothesis check that the index and the exhaustive search agree under the hard rule,
# and that it is never broken. (tests/unit/test_schedule_properties.py draws spread asks too.)

labels = st.sampled_from([None, "a", "b", "c"])


@st.composite
def fleets(draw: st.DrawFn) -> list[Host]:
    n = draw(st.integers(0, 7))
    return [host(f"h{i}", draw(labels), draw(labels), cpus=draw(st.sampled_from([0.5, 1.0, 2.0])),
                 memory=draw(st.sampled_from([512 * M, 1 * G, 2 * G]))) for i in range(n)]


@settings(max_examples=150, deadline=None, database=None)
@given(fleets(), st.lists(st.tuples(st.sampled_from(["web", "db"]), st.integers(0, 6),
                                    st.sampled_from([None, Spread.RACK, Spread.SITE])),
                          max_size=2, unique_by=lambda t: t[0]),
       st.dictionaries(st.integers(0, 5), st.integers(0, 7)))
def test_never_two_in_one_domain_and_both_searches_agree(
        hosts: list[Host], roles: list[tuple[str, int, Spread | None]],
        where: dict[int, int]) -> None:
    wanted: dict[InstanceKey, Ask] = {}
    for role, n, spread in roles:
        wanted.update(want(role, n, ask(spread)))
    names = [h.name for h in hosts] + ["gone"]
    placed = {k: names[where[k.index] % len(names)] for k in wanted if k.index in where}
    fast, full = schedule(hosts, placed, wanted), schedule(hosts, placed, wanted, explain=True)
    assert [d.host for d in fast.decisions] == [d.host for d in full.decisions]
    by_name = {h.name: h for h in hosts}
    for role, _, spread in roles:
        if spread is None:
            continue
        domains = [by_name[h].label(spread.value) for k, h in fast.assignments().items()
                   if k.role == role]
        assert None not in domains and len(domains) == len(set(domains))
    for d in fast.unplaced:  # left out only with every host's reason
        assert {r.host for r in d.rejected} == set(by_name)


# losing two hosts, a rack, a site


def bed() -> tuple[list[Host], dict[InstanceKey, str], dict[InstanceKey, Ask]]:
    """The issue's bed: three hosts, one rack each, two sites; `web` x3 spread over racks
    and a singleton `db`, all room enough for one more of each."""
    hosts = [host("vm1", "r1", "s1"), host("vm2", "r2", "s1"), host("vm3", "r3", "s2")]
    asks = {**want("web", 3, ask(Spread.RACK), "shop"), **want("db", 1, ask(), "shop")}
    placed = {key("web", 0, "shop"): "vm1", key("web", 1, "shop"): "vm2",
              key("web", 2, "shop"): "vm3", key("db", 0, "shop"): "vm1"}
    return hosts, placed, asks


def test_losing_any_two_hosts_any_rack_and_any_site() -> None:
    hosts, placed, asks = bed()
    red = redundancy(hosts, placed, asks)
    assert [x.lost for x in red.pairs] == ["vm1+vm2", "vm1+vm3", "vm2+vm3"]
    assert red.paired == ("vm1", "vm2", "vm3") and not red.pairs_capped
    # web's instance of a lost rack can go nowhere: every other rack has one.
    (r1, *others) = red.racks
    assert [x.lost for x in others] == ["r2", "r3"]
    assert [d.key for d in r1.stranded] == [key("web", 0, "shop")]  # db moves to vm2
    assert [str(r) for r in r1.stranded[0].rejected] == [
        "state: host is down", "spread: shop/web/1 is already in rack r2",
        "spread: shop/web/2 is already in rack r3"]
    assert not red.rack_safe and not red.n_plus_1 and not red.n_plus_2
    (s1, s2) = red.sites
    assert [d.key for d in s2.stranded] == [key("web", 2, "shop")]
    assert (s1.lost, s1.hosts) == ("s1", ("vm1", "vm2"))
    assert [d.key for d in s1.stranded] == [key("web", 0, "shop"), key("web", 1, "shop")]
    assert red.unsited == () and red.unracked == ()
    (fate,) = survival(red, placed, asks)
    assert fate.stack == "shop"
    # A rack (or a host, or two, or a site) down: web serves with fewer, db moves.
    assert fate.rack.verdict is Verdict.DEGRADED and fate.rack.loss == "r1"
    assert fate.rack.stranded == (key("web", 0, "shop"),)
    assert fate.pair.verdict is Verdict.DEGRADED and fate.pair.loss == "vm1+vm2"
    assert fate.site.verdict is Verdict.DEGRADED and fate.host.verdict is Verdict.DEGRADED


def test_a_role_with_none_left_is_down_and_no_labels_is_untested() -> None:
    # db fits only on vm1 and vm2: losing both leaves it nowhere.
    hosts = [host("vm1"), host("vm2"), host("vm3", memory=256 * M)]
    asks = want("db", 1, ask(), "shop")
    red = redundancy(hosts, {key("db", 0, "shop"): "vm1"}, asks)
    assert red.racks == () and red.sites == () and red.unracked == ("vm1", "vm2", "vm3")
    (fate,) = survival(red, {key("db", 0, "shop"): "vm1"}, asks)
    assert fate.host.verdict is Verdict.OK and fate.host.loss is None
    assert (fate.pair.verdict, fate.pair.loss) == (Verdict.DOWN, "vm1+vm2")
    assert fate.rack.verdict is Verdict.UNTESTED and fate.site.verdict is Verdict.UNTESTED
    # One host: no pair to lose.
    lone = redundancy([host("vm1")], {key("db", 0, "shop"): "vm1"}, asks)
    assert lone.pairs == () and survival(lone, {key("db", 0, "shop"): "vm1"},
                                         asks)[0].pair.verdict is Verdict.UNTESTED


def test_pairs_are_capped_to_the_hosts_holding_the_most() -> None:
    hosts = [host(f"h{i}") for i in range(6)]
    asks = want("web", 4, ask())
    placed = {key("web", 0): "h5", key("web", 1): "h5", key("web", 2): "h3",
              key("web", 3): "h0"}
    red = redundancy(hosts, placed, asks, paired_max=3)
    assert red.paired == ("h0", "h3", "h5") and red.pairs_capped
    assert [x.lost for x in red.pairs] == ["h0+h3", "h0+h5", "h3+h5"]
    assert len(redundancy(hosts, placed, asks).pairs) == 15  # all of them under the cap


@settings(max_examples=150, deadline=None, database=None)
@given(fleets(), st.lists(st.tuples(st.sampled_from(["web", "db", "job"]), st.integers(0, 5),
                                    st.sampled_from([None, Spread.RACK, Spread.SITE]),
                                    st.booleans()),
                          max_size=3, unique_by=lambda t: t[0]),
       st.lists(st.integers(0, 7), max_size=18), st.booleans())
def test_every_scenario_is_what_schedule_says_with_those_hosts_down(
        hosts: list[Host], roles: list[tuple[str, int, Spread | None, bool]],
        where: list[int], settled: bool) -> None:
    """redundancy() skips re-checking what stays when it may: never with another answer."""
    wanted: dict[InstanceKey, Ask] = {}
    for role, n, spread, distinct in roles:
        wanted.update(want(role, n, ask(spread, distinct_hosts=distinct)))
    names = [h.name for h in hosts]
    if not names:
        return
    placed = {k: names[w % len(names)] for k, w in zip(wanted, where, strict=False)}
    if settled:  # where the scheduler put them: every one kept, the usual case
        placed = schedule(hosts, placed, wanted).assignments()
    red = redundancy(hosts, placed, wanted, paired_max=4)
    for loss in (*red.hosts, *red.pairs, *red.racks, *red.sites):
        assert loss == lose(hosts, placed, wanted, set(loss.hosts), loss.lost)


# the report and the command


def views() -> list[HostView]:
    facts = HostFacts(HostCapacity(4, 4 * G, 20 * G), (RuntimeKind.CONTAINER,), 0, 0, "0.1")
    return [HostView(name, "ready", name == "vm1", (("rack", rack), ("site", site)), facts,
                     Reservation(), None) for name, rack, site in
            (("vm1", "r1", "s1"), ("vm2", "r2", "s1"), ("vm3", "r3", "s2"))]


SHOP = """
stack: shop
roles:
  web:
    image: base
    count: 3
    command: [sleep, "1"]
    resources: {cpu: 0.5, memory: 512M, disk: 1G}
    placement: {spread: rack}
  db:
    image: base
    command: [sleep, "1"]
    resources: {cpu: 0.5, memory: 512M, disk: 1G}
"""


def report() -> dict[str, Any]:
    stack = load_stack_text(SHOP, "s.yaml")
    placed = {key("web", 0, "shop"): "vm1", key("web", 1, "shop"): "vm2",
              key("web", 2, "shop"): "vm3", key("db", 0, "shop"): "vm1"}
    return capacity_report(views(), [stack], placed)


def test_the_capacity_answer_says_it_per_scenario_and_per_stack() -> None:
    r = report()
    # The JSON is what the answer model describes, field for field.
    assert json.dumps(CapacityAnswer.model_validate(r).model_dump(mode="json")) == json.dumps(r)
    assert r["n_plus_2"]["pairs"] == 3 and not r["n_plus_2"]["capped"]
    assert [x["lost"] for x in r["n_plus_2"]["losses"]] == ["vm1+vm2", "vm1+vm3", "vm2+vm3"]
    assert r["n_plus_2"]["losses"][0]["stranded"][0] == {
        "instance": "shop/web/0", "why": {"vm1": "state: host is down",
                                          "vm2": "state: host is down",
                                          "vm3": "spread: shop/web/2 is already in rack r3"}}
    assert [x["lost"] for x in r["sites"]["losses"]] == ["s1", "s2"]
    assert r["stacks"] == [{
        "stack": "shop",
        "host": {"verdict": "degraded", "loss": "vm1", "stranded": ["shop/web/0"]},
        "hosts_2": {"verdict": "degraded", "loss": "vm1+vm2",
                    "stranded": ["shop/web/0", "shop/web/1"]},
        "rack": {"verdict": "degraded", "loss": "r1", "stranded": ["shop/web/0"]},
        "site": {"verdict": "degraded", "loss": "s1",
                 "stranded": ["shop/web/0", "shop/web/1"]},
        "pinned": {}}]  # no data disk: nothing is held with a host
    # The fields that were there keep their meaning.
    assert not r["n_plus_1"]["ok"] and len(r["n_plus_1"]["losses"]) == 3
    assert [x["lost"] for x in r["racks"]["losses"]] == ["r1", "r2", "r3"]


class Reporting:
    """What `connect()` gives the command: here, the report made in-process."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def capacity(self) -> dict[str, Any]:
        return self.answer


def test_the_command_prints_each_kind_of_loss_and_a_table_per_stack(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rackfire.cli import hosts as cli

    monkeypatch.setattr(cli, "connect", lambda url=None: Reporting(report()))
    cli.capacity(json=False, url=None)
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert ("any one rack lost: losing r1 strands 1 of 2, e.g. shop/web/0 (vm1: state: host "
            "is down; vm2: spread: shop/web/1 is already in rack r2; vm3: spread: shop/web/2 "
            "is already in rack r3)") in lines
    assert any(ln.startswith("any one site lost: losing s1 strands 2 of 3") for ln in lines)
    assert any(ln.startswith("any two hosts lost: losing vm1+vm2 strands 2 of 3")
               for ln in lines)
    assert "any two hosts lost: 3 of 3 pairs strand something (0 not shown)" in lines
    head = next(ln for ln in lines if ln.startswith("STACK"))
    row = next(ln for ln in lines if ln.startswith("shop "))
    assert head.split() == ["STACK", "1", "HOST", "LOST", "2", "HOSTS", "LOST", "A", "RACK",
                            "LOST", "A", "SITE", "LOST"]
    # Aligned: each verdict starts under its column's head.
    for col, cell in (("2 HOSTS LOST", "degraded (vm1+vm2: 2 stranded)"),
                      ("A RACK LOST", "degraded (r1: 1 stranded)"),
                      ("A SITE LOST", "degraded (s1: 2 stranded)")):
        assert row.index(cell) == head.index(col), (head, row)

    # With room for everything, the lines say ok (and a cap, when there was one).
    answer = report()
    answer["n_plus_2"] = {"ok": True, "losses": [], "pairs": 780, "hosts": ["h"] * 40,
                          "capped": True}
    monkeypatch.setattr(cli, "connect", lambda url=None: Reporting(answer))
    cli.capacity(json=False, url=None)
    assert ("any two hosts lost: ok, every instance could run elsewhere (780 pairs; capped: "
            "the pairs of the 40 hosts holding the most)") in capsys.readouterr().out.splitlines()


PINNED = """
stack: shop
roles:
  web:
    image: base
    count: 2
    command: [sleep, "1"]
  db:
    image: base
    count: 2
    command: [sleep, "1"]
    data: {path: /data, size: 1G}
"""


def test_an_instance_with_a_data_disk_is_pinned_to_its_host_and_the_command_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Its data is on one host only: failover holds it there (control/failover.py), so
    losing that host stops it until the host returns, whatever the scheduler could do."""
    from rackfire.cli import hosts as cli

    stack = load_stack_text(PINNED, "s.yaml")
    # db/1 is not placed yet: it counts on the first host, as everything in the report.
    placed = {key("web", 0, "shop"): "vm2", key("web", 1, "shop"): "vm3",
              key("db", 0, "shop"): "vm2"}
    r = capacity_report(views(), [stack], placed)
    assert json.dumps(CapacityAnswer.model_validate(r).model_dump(mode="json")) == json.dumps(r)
    (fate,) = r["stacks"]
    assert fate["pinned"] == {"shop/db/0": "vm2", "shop/db/1": "vm1"}  # web has no data

    monkeypatch.setattr(cli, "connect", lambda url=None: Reporting(r))
    cli.capacity(json=False, url=None)
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if "keeps its data" in ln] == [
        "shop/db/0 keeps its data on vm2 only: it stops if vm2 is lost (until vm2 returns)",
        "shop/db/1 keeps its data on vm1 only: it stops if vm1 is lost (until vm1 returns)"]
