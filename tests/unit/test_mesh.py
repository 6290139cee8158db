"""The routing mesh's pure parts: each host's address in a stack subnet, and HAProxy
connecting to backends from it."""

from __future__ import annotations

import pytest

from rackfire.agent.proxy import render_config
from rackfire.errors import PrereqError
from rackfire.model.agent import PublishedPort
from rackfire.model.stack import PortMap
from rackfire.plan.ipam import allocate_host_ips, allocate_ips


def test_host_addresses_count_down_from_the_top_and_stay() -> None:
    got = allocate_host_ips("10.88.3.0/24", ["h2", "h1", "h3"], ["10.88.3.2"], {})
    assert got == {"h1": "10.88.3.254", "h2": "10.88.3.253", "h3": "10.88.3.252"}
    # h2 leaves, h4 joins: the others keep theirs, h4 takes the highest free one
    again = allocate_host_ips("10.88.3.0/24", ["h1", "h3", "h4"], ["10.88.3.2"], got)
    assert again == {"h1": "10.88.3.254", "h3": "10.88.3.252", "h4": "10.88.3.253"}
    # instances never get them when the caller passes them as used
    assert "10.88.3.254" not in allocate_ips("10.88.3.0/24", list(again.values()), 200)


def test_host_addresses_skip_used_and_refuse_a_full_subnet() -> None:
    got = allocate_host_ips("10.88.3.0/29", ["a", "b"], ["10.88.3.6"], {"a": "10.88.3.6"})
    assert got == {"a": "10.88.3.5", "b": "10.88.3.4"}  # a kept address now used moves
    with pytest.raises(PrereqError, match=r"no address left for host b"):
        allocate_host_ips("10.88.3.0/30", ["a", "b"], [], {})  # a /30 has one: .2


def test_haproxy_connects_from_the_host_address_only_when_given() -> None:
    port = PublishedPort(PortMap(host_port=8080, container_port=80),
                         ("10.88.3.2:80", "10.88.3.3:80"))
    plain = render_config("s", [port])
    assert "source" not in plain and "    server s0 10.88.3.2:80 check\n" in plain
    meshed = render_config("s", [port], source="10.88.3.254")
    assert "    server s1 10.88.3.3:80 source 10.88.3.254 check\n" in meshed
