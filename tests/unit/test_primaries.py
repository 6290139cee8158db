"""A primary role (`ha: {primary: true}`): templates see which instance is the primary, and
a standby is promoted only once the primary's host is gone *and* fenced, the first ready
standby on a live host, once per term."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rackfire.control.hosts import Liveness
from rackfire.control.primaries import AGAIN, Promoter
from rackfire.model.agent import HostCapacity
from rackfire.model.host import HostFacts, HostState
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState, NetworkConfig
from rackfire.model.records import HostRecord, Primary
from rackfire.model.stack import RuntimeKind, StackSpec
from rackfire.plan import render_stack
from rackfire.spec import load_stack_text
from rackfire.store import Store

SPEC = """\
stack: s
images: {base: {from: host}}
roles:
  db:
    image: base
    count: 3
    command: [sleep, "1"]
    ha: {primary: true}
    files:
      /etc/role: >-
        {{ 'primary' if instance.primary else 'standby of ' ~ roles.db.primary.name }}
        term {{ roles.db.term }}
  app:
    image: base
    command: [sleep, "1"]
    uses: [db]
    files:
      /etc/db: "{{ roles.db.primary.ip }}"
"""


def spec() -> StackSpec:
    return load_stack_text(SPEC, "stack.yaml")


def files(primaries: dict[str, tuple[int, int]] | None) -> dict[str, str]:
    keys = [InstanceKey("s", r, i) for r, n in (("db", 3), ("app", 1)) for i in range(n)]
    ips = {k: f"10.0.0.{n + 2}" for n, k in enumerate(keys)}
    net = NetworkConfig("s", "10.0.0.0/24", "10.0.0.1", 24)
    reqs = render_stack(spec(), ips, {"base": "sha256:" + "0" * 64}, net, RuntimeKind.PROCESS,
                        primaries=primaries)
    return {r.key.name: dict(r.files).popitem()[1] for r in reqs}


def test_templates_see_the_primary_and_its_term() -> None:
    first = files(None)  # none chosen yet: the first instance, term 1
    assert first["db-0"] == "primary term 1"
    assert first["db-1"] == first["db-2"] == "standby of db-0 term 1"
    assert first["app-0"] == "10.0.0.2"
    after = files({"db": (2, 3)})
    assert after["db-2"] == "primary term 3" and after["db-0"] == "standby of db-2 term 3"
    assert after["app-0"] == "10.0.0.4"
    assert ipaddress.ip_address(after["app-0"])


def test_a_primary_role_self_fences_and_refuses_fence_false() -> None:
    assert spec().role("db").self_fences
    with pytest.raises(Exception, match="fence"):
        load_stack_text(SPEC.replace("{primary: true}", "{primary: true, fence: false}"),
                        "stack.yaml")


@dataclass
class Fleet:
    """What the promoter asks of the fleet: the lost instances, the hosts, what runs."""

    records: dict[str, HostRecord]
    placed: dict[InstanceKey, str]
    down: set[str] = field(default_factory=set)
    liveness: Liveness = field(default_factory=lambda: Liveness(ttl=3.0))

    @property
    def registry(self) -> Any:
        return self

    def hosts(self) -> list[HostRecord]:
        return list(self.records.values())

    def lost(self, stack: str) -> dict[InstanceKey, str]:
        return {k: h for k, h in self.placed.items() if h in self.down}

    def observe(self, stack: str) -> list[InstanceFacts]:
        return [InstanceFacts(k, InstanceState.RUNNING, RuntimeKind.PROCESS, h)
                for k, h in self.placed.items() if h not in self.down]


def host(name: str, last_seen: float, state: HostState = HostState.READY) -> HostRecord:
    facts = HostFacts(HostCapacity(2.0, 1 << 30, 1 << 30), (RuntimeKind.PROCESS,), 0, 0,
                      interval=0.5)
    return HostRecord(name, (), facts, state, 0.0, last_seen, "", "", 1)


def keys(*idx: int) -> list[InstanceKey]:
    return [InstanceKey("s", "db", i) for i in idx]


def test_promoted_only_after_the_fence_then_once(tmp_path: Path) -> None:
    now = time.time()
    store = Store(tmp_path / "db")
    db0, db1, db2 = keys(0, 1, 2)
    fleet = Fleet({"h1": host("h1", now - 3.5), "h2": host("h2", now), "h3": host("h3", now)},
                  {db0: "h1", db1: "h2", db2: "h3"}, down={"h1"})
    ready = {db2}  # db-1 runs but does not pass its check
    promoter = Promoter(store, fleet, lambda spec, facts: ready)  # type: ignore[arg-type]
    wait = promoter.run(spec())
    # Lost (its lease lapsed) but not fenced yet: nobody is promoted, look again then.
    assert store.primaries.of_stack("s") == {}
    assert wait is not None and 0 < wait <= 1.5
    fleet.records["h1"] = host("h1", now - 10)  # its fence deadline passed
    assert promoter.run(spec()) is None
    [(role, p)] = store.primaries.of_stack("s").items()
    assert (role, p.index, p.term) == ("db", 2, 2)  # the ready one, not the first
    events = [e for e in store.events("s") if e.action == "promote"]
    assert len(events) == 1 and "db-2 is the primary in term 2" in events[0].reason
    assert promoter.run(spec()) is None  # its primary is fine: nothing more
    assert len([e for e in store.events("s") if e.action == "promote"]) == 1


def test_no_ready_standby_looks_again_and_an_operator_fence_is_at_once(tmp_path: Path) -> None:
    now = time.time()
    store = Store(tmp_path / "db")
    db0, db1, db2 = keys(0, 1, 2)
    fleet = Fleet({"h1": host("h1", now - 1, HostState.FENCED), "h2": host("h2", now),
                   "h3": host("h3", now)}, {db0: "h1", db1: "h2", db2: "h3"}, down={"h1"})
    ready: set[InstanceKey] = set()
    promoter = Promoter(store, fleet, lambda spec, facts: ready)  # type: ignore[arg-type]
    assert promoter.run(spec()) == AGAIN and store.primaries.of_stack("s") == {}
    ready |= {db1, db2}
    promoter.run(spec())
    assert store.primaries.of_stack("s")["db"] == Primary(1, 2, store.primaries.of_stack(
        "s")["db"].since)
    # A promotion that lost a race (another term came first) changes nothing.
    assert not store.primaries.promote("s", "db", 2, 2, now)
