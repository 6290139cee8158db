"""The failover benchmark's stack file is one rackfire accepts, and its result splits each
run into detection and restart and judges the targets on the worst run."""

from __future__ import annotations

from typing import Any

from bench.failover import SOLO_PORT, WEB_PORT, _result, stack_yaml

from rackfire.model.stack import PortMap
from rackfire.spec import load_stack_text


def one(victim: str, detection: float, web: dict[str, float], solo: float,
        held_vip: bool = False) -> dict[str, Any]:
    return {"victim": victim, "killed_in": 0.01, "detection": detection,
            "detection_polled": detection + 0.1,
            "placed": {**{k: detection for k in web}, "solo/0": detection + 2},
            "served": {**web, "solo/0": solo},
            "moved_to": {**{k: "h2" for k in web}, "solo/0": "h3"},
            "one_copy_after_back": 1.0, "web_lost": sorted(web),
            "vip": {**{k: t + 0.5 for k, t in web.items()}, "solo/0": solo + 0.5},
            "held_vip": held_vip, "vip_back": 3.2 if held_vip else None}


def test_the_stack_has_a_published_stateless_role_and_a_published_singleton() -> None:
    spec = load_stack_text(stack_yaml("172.31.0.100"), "fo.yaml")
    assert spec.vip == "172.31.0.100"
    roles = {r.name: r for r in spec.roles}
    assert roles["web"].count == 3 and not roles["web"].ha.singleton
    assert roles["solo"].count == 1 and roles["solo"].ha.singleton
    assert [p.host_port for p in roles["web"].ports] == [WEB_PORT]
    assert [p.host_port for p in roles["solo"].ports] == [SOLO_PORT]
    assert all(isinstance(p, PortMap) and r.health is not None
               for r in roles.values() for p in r.ports)


def test_detection_and_restart_apart_and_targets_on_the_max() -> None:
    runs = [one("h1", 3.0, {"web/0": 4.0}, 6.0, held_vip=True),
            one("h2", 2.5, {"web/1": 3.5, "web/2": 5.5}, 14.0),  # the later web counts
            one("h3", 2.0, {}, 7.0)]  # no web on it: no stateless figure
    r = _result(runs, {"lease": 3.0, "fence_after": 4.0, "grace": 1.0, "worst_case": 5.25})
    rows = {(x.case.split(":")[0], x.subject.split(":")[0]): x.samples for x in r.rows}
    assert rows["stateless", "rackfire"] == [4.0, 5.5]
    assert rows["stateless", "detection"] == [3.0, 2.5]
    assert rows["stateless", "restart"] == [1.0, 3.0]
    assert rows["singleton", "rackfire"] == [6.0, 14.0, 7.0]
    assert rows["singleton", "restart"] == [3.0, 11.5, 5.0]
    assert rows["stateless", "on the VIP (from the kill)"] == [4.5, 6.0]
    assert rows["the VIP's holder died", "the VIP answering again (any web)"] == [3.2]
    stateless, singleton, vip = r.targets
    assert (stateless.met, stateless.figure) == (False, "median 4.75 s, max 5.50 s")
    assert singleton.met is True
    assert vip.met is False  # web's 6.0 s on the VIP
    assert vip.figure == ("web max 6.00 s, solo max 14.50 s; the dead host held the VIP in 1 "
                          "of 3 runs")
    assert any("h2: solo/0 to h3, web/1 to h2, web/2 to h2" in n for n in r.notes)
