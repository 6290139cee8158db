"""IPAM: lowest free subnet / address, never the reserved ones, clear refusals."""

from __future__ import annotations

import ipaddress

import pytest

from rackfire.errors import PrereqError
from rackfire.plan.ipam import (
    DEFAULT_POOL,
    allocate_ips,
    allocate_subnet,
    gateway_of,
    subnet_prefix,
)


def allocate_ip(subnet: str, used: list[str]) -> str:
    return allocate_ips(subnet, used, 1)[0]


def test_first_subnet_of_an_empty_pool() -> None:
    assert allocate_subnet(DEFAULT_POOL, []) == "10.88.0.0/24"


def test_subnet_skips_used_and_fills_gaps() -> None:
    used = ["10.88.0.0/24", "10.88.2.0/24"]
    assert allocate_subnet(DEFAULT_POOL, used) == "10.88.1.0/24"
    assert allocate_subnet(DEFAULT_POOL, [*used, "10.88.1.0/24"]) == "10.88.3.0/24"


def test_subnet_avoids_overlaps_of_any_size() -> None:
    # A /23 in use covers two /24s; a single host address in use blocks its /24.
    assert allocate_subnet(DEFAULT_POOL, ["10.88.0.0/23", "10.88.2.7/32"]) == "10.88.3.0/24"
    assert allocate_subnet(DEFAULT_POOL, ["10.88.0.0/24", "fd00::/8"]) == "10.88.1.0/24"


def test_subnet_other_prefix_and_pool() -> None:
    assert allocate_subnet("192.168.0.0/24", ["192.168.0.0/26"], prefix=26) == "192.168.0.64/26"


def test_exhausted_pool_is_refused() -> None:
    with pytest.raises(PrereqError, match="no free /24"):
        allocate_subnet("10.88.0.0/23", ["10.88.0.0/24", "10.88.1.0/24"])
    with pytest.raises(PrereqError):
        allocate_subnet(DEFAULT_POOL, ["10.0.0.0/8"])


@pytest.mark.parametrize(("pool", "prefix"), [("10.88.0.0/16", 8), ("10.88.0.0/16", 31),
                                              ("not-a-net", 24), ("fd00::/64", 120)])
def test_bad_pool_or_prefix_is_refused(pool: str, prefix: int) -> None:
    with pytest.raises(PrereqError):
        allocate_subnet(pool, [], prefix)


def test_gateway_is_first_host() -> None:
    assert gateway_of("10.88.3.0/24") == "10.88.3.1"
    assert gateway_of("10.88.3.0/30") == "10.88.3.1"
    with pytest.raises(PrereqError):
        gateway_of("10.88.3.0/31")


def test_first_ip_skips_network_and_gateway() -> None:
    assert allocate_ip("10.88.3.0/24", []) == "10.88.3.2"


def test_ip_fills_lowest_gap_and_accepts_prefixed_entries() -> None:
    used = ["10.88.3.2", "10.88.3.3/24", "10.88.3.5", "10.99.0.4", "fd00::4"]
    assert allocate_ip("10.88.3.0/24", used) == "10.88.3.4"


def test_full_subnet_is_refused_and_broadcast_never_given() -> None:
    # A /29 has hosts .1-.6; .1 is the gateway, .7 the broadcast.
    subnet = "10.88.3.0/29"
    given: list[str] = []
    for _ in range(5):
        given.append(allocate_ip(subnet, given))
    assert given == [f"10.88.3.{i}" for i in range(2, 7)]
    with pytest.raises(PrereqError, match=r"subnet 10\.88\.3\.0/29 full"):
        allocate_ip(subnet, given)


def test_every_address_is_a_host_of_the_subnet() -> None:
    net = ipaddress.ip_network("10.88.7.0/26")
    given: list[str] = []
    while True:
        try:
            given.append(allocate_ip(str(net), given))
        except PrereqError:
            break
    hosts = [str(h) for h in net.hosts()]
    assert given == hosts[1:]  # every host but the gateway, in order, no duplicates


def test_a_stack_subnet_is_a_24_or_larger_with_room_to_double() -> None:
    assert [subnet_prefix(n) for n in (1, 126, 127, 500, 10_000)] == [24, 24, 23, 22, 17]
    for n in (1, 127, 500, 10_000):  # twice the instances fit beside gateway and broadcast
        assert 2 ** (32 - subnet_prefix(n)) - 3 >= 2 * n


def test_many_addresses_at_once_are_the_lowest_free_ones() -> None:
    got = allocate_ips("10.88.0.0/17", ["10.88.0.3", "10.88.0.5/17"], 10_000)
    assert got[:3] == ["10.88.0.2", "10.88.0.4", "10.88.0.6"] and len(set(got)) == 10_000
    assert got[-1] == "10.88.39.19"  # offset 2 + 10,000 - 1 + the 2 taken
    with pytest.raises(PrereqError, match=r"full: 254 more address\(es\) needed, 253 free"):
        allocate_ips("10.88.3.0/24", [], 254)
