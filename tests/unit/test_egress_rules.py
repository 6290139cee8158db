"""Egress without root: the nftables ruleset is a pure value (net/egress.py `ruleset`), and
the controller tells the host which addresses opt out (NetworkConfig.no_egress), live."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.harness import harness

from rackfire.errors import PrereqError
from rackfire.model.stack import RoleSpec, StackSpec
from rackfire.net import egress
from rackfire.net.names import bridge_name


def _rules(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]


def test_the_ruleset_replaces_one_table_of_the_stack_at_once() -> None:
    cmds = egress.ruleset("shop", "10.88.3.0/24", ["10.88.3.9", "10.88.3.10"])
    table = {"family": "inet", "name": "rackfire-shop"}
    # add + delete + add: one transaction whether or not a table is there already.
    assert cmds[:3] == [{"add": {"table": table}}, {"delete": {"table": table}},
                        {"add": {"table": table}}]
    elements = [c["add"]["element"]["elem"] for c in cmds if "element" in c.get("add", {})]
    assert elements == [["10.88.3.9", "10.88.3.10"]]  # sorted as addresses, not as text
    masquerade = _rules(cmds)[-1]
    assert masquerade["chain"] == "postrouting"
    assert {"masquerade": None} in masquerade["expr"]
    assert bridge_name("shop") in str(masquerade["expr"])
    # Every rule says whose it is, with a digest of the whole ruleset.
    comments = [str(r["comment"]) for r in _rules(cmds)]
    assert len({c.split(":")[0] for c in comments}) == 1
    assert all(c.startswith("rackfire shop ") for c in comments)


def test_what_differs_is_what_the_digest_and_the_set_say() -> None:
    a = egress.ruleset("shop", "10.88.3.0/24", ["10.88.3.9"])
    assert egress._summary(a) == egress._summary(
        egress.ruleset("shop", "10.88.3.0/24", ["10.88.3.9"]))
    for other in (egress.ruleset("shop", "10.88.3.0/24", []),
                  egress.ruleset("shop", "10.88.4.0/24", []),
                  egress.ruleset("shop", "10.88.3.0/24", ["10.88.3.9", "10.88.3.11"])):
        assert egress._summary(other) != egress._summary(a)
    # A listing (`nft -j list table`) reads the same as the commands that made it.
    listing = [{"table": {"family": "inet", "name": "rackfire-shop", "handle": 3}},
               {"set": {"family": "inet", "name": "no_egress", "table": "rackfire-shop",
                        "type": "ipv4_addr", "handle": 1, "elem": ["10.88.3.9"]}},
               *({"rule": {**r, "handle": i}} for i, r in enumerate(_rules(a)))]
    assert egress._summary(listing) == egress._summary(a)


@pytest.mark.parametrize(("stack", "subnet", "denied"), [
    ("Shop;", "10.88.3.0/24", []),  # it names the table
    ("shop", "10.88.3.0/33", []),
    ("shop", "10.88.3.0/24", ["10.88.4.2"]),  # not the stack's own
    ("shop", "10.88.3.0/24", ["nope"]),
])
def test_a_bad_ruleset_is_refused_before_any_change(stack: str, subnet: str,
                                                   denied: list[str]) -> None:
    with pytest.raises(PrereqError):
        egress.ruleset(stack, subnet, denied)


def test_the_host_learns_which_addresses_opt_out_and_a_flip_restarts_nothing(
        tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        web = RoleSpec("web", "base", 2, ("serve",))
        jail = RoleSpec("jail", "base", 2, ("serve",), egress=False)
        spec = StackSpec("s", roles=(web, jail))
        h.controller.apply(spec, None, actor="test")
        assert h.converge("s").converged
        ips = {f.key: f.ip for f in h.host.instances("s").values()}
        net = h.host.networks["s"]
        assert {ips[k] for k in ips if k.role == "jail"} <= set(net.no_egress)
        assert not {ips[k] for k in ips if k.role == "web"} & set(net.no_egress)
        assert list(net.no_egress) == sorted(net.no_egress)

        made = len(h.host.calls())
        h.controller.apply(replace(spec, roles=(web, replace(jail, egress=True))), None,
                           actor="test")
        assert h.converge("s").converged
        assert h.host.networks["s"].no_egress == ()
        assert len(h.host.calls()) == made  # no instance created, replaced or restarted
    finally:
        h.close()
