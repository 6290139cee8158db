"""Deterministic names: stable, short enough for the kernel, recognisable by prefix."""

from __future__ import annotations

import hashlib

import pytest

from rackfire.errors import PrereqError
from rackfire.net.names import (
    IFNAMSIZ,
    LINK_PREFIXES,
    NETNS_PREFIX,
    PREFIXES,
    bridge_name,
    netns_name,
    veth_name,
)


def test_bridge_name_is_prefix_plus_sha1() -> None:
    assert bridge_name("shop") == "rfb" + hashlib.sha1(b"shop").hexdigest()[:10]


def test_veth_name_is_prefix_plus_sha1() -> None:
    assert veth_name("shop.web.3") == "rfv" + hashlib.sha1(b"shop.web.3").hexdigest()[:10]


@pytest.mark.parametrize("text", ["a", "shop", "a-very-long-stack-name-" * 10, "ünïcode"])
def test_link_names_fit_ifnamsiz_and_are_stable(text: str) -> None:
    for name in (bridge_name(text), veth_name(text)):
        assert len(name) <= IFNAMSIZ
        assert name.isascii() and name.isalnum()
    assert bridge_name(text) == bridge_name(text)
    assert veth_name(text) == veth_name(text)


def test_names_differ_between_objects_and_kinds() -> None:
    assert veth_name("shop.web.0") != veth_name("shop.web.1")
    assert bridge_name("shop") != bridge_name("blog")
    assert bridge_name("x")[3:] == veth_name("x")[3:]  # same hash, told apart by prefix
    assert bridge_name("x") != veth_name("x")


def test_netns_name() -> None:
    assert netns_name("shop.web.3") == "rf-shop.web.3"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "x y", "a\0b"])
def test_netns_name_refuses_ids_that_are_not_file_names(bad: str) -> None:
    with pytest.raises(PrereqError):
        netns_name(bad)


def test_prefixes_cover_every_kind_of_name() -> None:
    made = [bridge_name("s"), veth_name("s.r.0"), netns_name("s.r.0")]
    assert all(name.startswith(PREFIXES) for name in made)
    assert bridge_name("s").startswith(LINK_PREFIXES)
    assert netns_name("s.r.0").startswith(NETNS_PREFIX)


def test_a_scoped_netns_name_is_apart_from_every_other_scope(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # The bed's hosts share /run/netns: each agent names its instances' in its own scope.
    assert netns_name("s.r.0", "abc123-h1") == "rf-abc123-h1_s.r.0"
    assert netns_name("s.r.0", "abc123-h1") != netns_name("s.r.0", "abc123-h2")
    monkeypatch.setenv("RACKFIRE_NETNS_SCOPE", "abc123-h2")
    assert netns_name("s.r.0") == "rf-abc123-h2_s.r.0"
    assert netns_name("s.r.0", "") == "rf-s.r.0"
    with pytest.raises(PrereqError):
        netns_name("s.r.0", "Bad Scope")


def test_a_scoped_cgroup_is_apart_from_every_other_scope(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # And one kernel's cgroups: a host's `runc delete` of its copy must not empty another's.
    from rackfire.net.names import cgroup_name

    monkeypatch.delenv("RACKFIRE_NETNS_SCOPE", raising=False)
    assert cgroup_name("s.r.0") == "s.r.0"  # a real host: as before
    assert cgroup_name("s.r.0", "abc123-h1") == "abc123-h1_s.r.0"
    monkeypatch.setenv("RACKFIRE_NETNS_SCOPE", "abc123-h2")
    assert cgroup_name("s.r.0") == "abc123-h2_s.r.0"
    with pytest.raises(PrereqError):
        cgroup_name("s.r.0", "Bad Scope")
