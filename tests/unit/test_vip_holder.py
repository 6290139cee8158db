"""Which host holds a stack's floating address (control/vip.py): a ready host of the stack on
the address's network, the one that holds it now while it stays ready; every other one is
told to let go first; what cannot be a floating address is refused before any change."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rackfire.control.hosts import Liveness
from rackfire.control.vip import Vips, check, holder
from rackfire.errors import AgentOffline
from rackfire.model.agent import HostCapacity
from rackfire.model.host import HostFacts, HostState
from rackfire.model.records import HostRecord
from rackfire.model.stack import RuntimeKind

NET = "172.31.0.0/24"
VIP = "172.31.0.100"


def facts(underlay: str = NET, vips: tuple[tuple[str, str], ...] = ()) -> HostFacts:
    return HostFacts(HostCapacity(2.0, 1 << 30, 1 << 30), (RuntimeKind.PROCESS,), 0, 0,
                     interval=0.5, underlay=underlay, vips=vips)


def test_the_holder_is_kept_while_ready_else_the_first_ready_one_on_its_network() -> None:
    hosts = ["h1", "h2", "h3"]
    ready = dict.fromkeys(hosts, "ready")
    plain = dict.fromkeys(hosts, facts())
    assert holder("s", VIP, hosts, ready, plain) == "h1"
    sticky = plain | {"h2": facts(vips=(("s", VIP),))}
    assert holder("s", VIP, hosts, ready, sticky) == "h2"  # h1 came back: not taken back
    assert holder("s", VIP, hosts, ready | {"h2": "lost"}, sticky) == "h1"
    assert holder("s", VIP, hosts, ready | {"h1": "suspect", "h2": "draining"}, plain) == "h3"
    assert holder("s", VIP, hosts, ready | {"h2": "suspect"}, sticky) == "h2"  # its lease holds
    assert holder("s", VIP, hosts, ready | {"h2": "draining"}, sticky) == "h1"
    other = plain | {"h1": facts("10.1.0.0/24")}
    assert holder("s", VIP, hosts, ready, other) == "h2"  # h1 is on another network
    assert holder("s", VIP, hosts, dict.fromkeys(hosts, "lost"), plain) is None
    assert holder("t", VIP, hosts, ready, sticky) == "h1"  # another stack's is not its own


def test_what_cannot_float_is_refused() -> None:
    known = {"h1": facts(), "h2": facts()}
    ips = {"h1": "172.31.0.1", "h2": "172.31.0.2"}
    assert check(VIP, known, ips, {}) == ""
    assert "not inside any host's underlay network (172.31.0.0/24)" in check(
        "10.9.9.9", known, ips, {})
    assert "host h2's own address" in check("172.31.0.2", known, ips, {})
    assert "network address" in check("172.31.0.0", known, ips, {})
    assert "already the floating address of stack t" in check(VIP, known, ips, {VIP: "t"})
    assert "none reported yet" in check(VIP, {"h1": facts("")}, {}, {})


@dataclass
class Link:
    told: list[tuple[str, str, str]]
    name: str
    offline: bool = False

    def hold_vip(self, stack: str, vip: str) -> None:
        if self.offline:
            raise AgentOffline(f"{self.name} is away")
        self.told.append((self.name, stack, vip))


@dataclass
class Fleet:
    """The few parts of control/fleet.py Fleet that Vips uses."""

    now: float
    records: dict[str, HostRecord] = field(default_factory=dict)
    told: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    liveness: Liveness = field(default_factory=lambda: Liveness(ttl=3.0, since=0.0))

    @property
    def registry(self) -> Fleet:
        return self

    @property
    def store(self) -> Fleet:
        return self

    def hosts(self) -> list[HostRecord]:
        return list(self.records.values())

    def holding(self, stack: str) -> set[str]:
        return set(self.records)

    def link(self, host: str) -> Link:
        return Link(self.told, host)

    def add_event(self, *args: Any) -> None:
        self.events.append(args)

    def beat(self, host: str, f: HostFacts | None = None, at: float | None = None) -> None:
        old = self.records.get(host)
        self.records[host] = HostRecord(host, (), f or (old.facts if old else facts()),
                                        HostState.READY, 0.0, self.now if at is None else at,
                                        "", "k", 1)


def test_it_moves_when_its_holder_is_lost_and_is_not_taken_back(monkeypatch: Any) -> None:
    fleet = Fleet(now=1000.0)
    monkeypatch.setattr("rackfire.control.vip.time.time", lambda: fleet.now)
    for h in ("h1", "h2", "h3"):
        fleet.beat(h)
    vips = Vips(fleet)  # type: ignore[arg-type]
    assert vips.place("s", VIP) == "h1" and fleet.told == [("h1", "s", VIP)]
    fleet.beat("h1", facts(vips=(("s", VIP),)))
    fleet.told.clear()
    assert vips.place("s", VIP) == "h1" and fleet.told == []  # held: nothing to say
    fleet.now += 5.0  # h1 silent past its lease; the others beat
    fleet.beat("h2")
    fleet.beat("h3")
    assert vips.place("s", VIP) == "h2" and fleet.told == [("h2", "s", VIP)]  # h1 not asked
    assert [e[-1] for e in fleet.events] == ["held by h1", "held by h2"]
    fleet.beat("h2", facts(vips=(("s", VIP),)))
    fleet.beat("h1", facts(vips=(("s", VIP),)))  # back, and it had kept it
    fleet.told.clear()
    assert vips.place("s", VIP) == "h2" and fleet.told == [("h1", "s", "")]
    fleet.told.clear()
    assert vips.place("s", "") == "" and sorted(fleet.told) == [("h1", "s", ""),
                                                                ("h2", "s", "")]


def test_a_host_that_refuses_says_so_once(monkeypatch: Any) -> None:
    from rackfire.errors import PrereqError

    fleet = Fleet(now=1000.0)
    monkeypatch.setattr("rackfire.control.vip.time.time", lambda: fleet.now)
    fleet.beat("h1")

    def refuse(stack: str, vip: str) -> None:
        raise PrereqError("not on this host's underlay network")

    monkeypatch.setattr(Link, "hold_vip", lambda self, stack, vip: refuse(stack, vip))
    vips = Vips(fleet)  # type: ignore[arg-type]
    assert vips.place("s", VIP) == "h1" and vips.place("s", VIP) == "h1"
    assert [e[4:] for e in fleet.events] == [("failed", "h1: not on this host's underlay "
                                                        "network")]
    fleet.records["h1"] = replace(fleet.records["h1"], facts=facts("10.1.0.0/24"))
    assert vips.place("s", VIP) == ""
    assert "no ready host of stack s" in fleet.events[-1][-1]


def test_the_one_told_last_wins_over_one_that_still_says_it_holds_it() -> None:
    hosts = ["h1", "h2"]
    both = {"h1": facts(vips=(("s", VIP),)), "h2": facts(vips=(("s", VIP),))}
    ready = dict.fromkeys(hosts, "ready")
    assert holder("s", VIP, hosts, ready, both, told="h2") == "h2"
    assert holder("s", VIP, hosts, ready | {"h2": "lost"}, both, told="h2") == "h1"
