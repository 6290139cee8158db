"""IPv4 address management for stack networks: pure functions over what is already used.

Persistence is the caller's job (the store records each stack's subnet and each instance's
address); these functions only answer "what is the lowest free one". Invariants: results are
deterministic for the same inputs, never overlap anything in `used`, and an instance address
is never the network, gateway (first host) or broadcast address. Every refusal is a
PrereqError: nothing has been allocated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from rackfire.errors import PrereqError

DEFAULT_POOL = "10.88.0.0/16"


def _any_network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise PrereqError(f"not an IP network: {text!r}") from e


def _network(text: str) -> IPv4Network:
    net = _any_network(text)
    if not isinstance(net, IPv4Network):
        raise PrereqError(f"only IPv4 networks are supported: {text!r}")
    return net


def _subnet(text: str) -> IPv4Network:
    """A stack subnet: IPv4, and big enough for a gateway plus at least one instance."""
    net = _network(text)
    if net.prefixlen > 30:
        raise PrereqError(f"subnet {text} is too small: a /30 or larger is needed")
    return net


def allocate_subnet(pool: str, used: Collection[str], prefix: int = 24) -> str:
    """The first /`prefix` in `pool` that overlaps none of the `used` networks (or addresses)."""
    base = _network(pool)
    if not base.prefixlen <= prefix <= 30:
        raise PrereqError(f"cannot cut /{prefix} subnets out of {pool}")
    taken = [_any_network(u) for u in used]  # IPv6 entries never overlap: harmless
    for candidate in base.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise PrereqError(f"address pool {pool} has no free /{prefix} left",
                      hint="use a larger pool or delete unused stacks")


def gateway_of(subnet: str) -> str:
    """The host's (bridge's) address in a stack subnet: its first host address."""
    return str(_subnet(subnet).network_address + 1)


def subnet_prefix(instances: int) -> int:
    """The prefix of a new stack's subnet: a /24, or larger when the stack needs it, with
    room for twice its instances (it can scale up or surge without running out)."""
    return min(24, 32 - (2 * instances + 2).bit_length())


def allocate_ips(subnet: str, used: Collection[str], count: int) -> list[str]:
    """The `count` lowest free host addresses of `subnet` (never the gateway), in one pass:
    a stack of 10,000 instances gets its addresses at once, not one scan each. `used` holds
    addresses, with or without a /prefix; ones outside the subnet are ignored."""
    net = _subnet(subnet)
    taken = {int(a) for a in map(_address, used) if a.version == 4}
    first = int(net.network_address) + 2  # +1 is the gateway
    last = int(net.broadcast_address) - 1
    out: list[str] = []
    for candidate in range(first, last + 1):
        if len(out) == count:
            break
        if candidate not in taken:
            out.append(str(IPv4Address(candidate)))
    if len(out) < count:
        raise PrereqError(f"subnet {subnet} full: {count} more address(es) needed, "
                          f"{len(out)} free",
                          hint="a stack's subnet is sized when the stack is created (room "
                          "for twice its instances); scale less, or destroy and apply it again")
    return out


def allocate_host_ips(subnet: str, hosts: Collection[str], used: Collection[str],
                      kept: dict[str, str]) -> dict[str, str]:
    """Each host's own address in a stack subnet spanning hosts (the routing mesh's source
    address, beside the anycast gateway), by host name. A host keeps its address from `kept`;
    a new one gets the highest free address, counting down from the broadcast, so these meet
    the instances' (counting up, `allocate_ips`) only in a full subnet: the caller passes
    them to `allocate_ips` as used too. `used` holds the instances' addresses. Hosts not in
    `hosts` lose theirs. Deterministic for the same inputs."""
    net = _subnet(subnet)
    taken = {int(a) for a in map(_address, used) if a.version == 4}
    first = int(net.network_address) + 2  # +1 is the gateway
    out: dict[str, str] = {}
    for host in sorted(hosts):
        ip = kept.get(host)
        if ip is not None:
            addr = _address(ip)
            if addr in net and int(addr) >= first and int(addr) not in taken:
                out[host] = str(addr)
    mine = {int(IPv4Address(ip)) for ip in out.values()}
    candidate = int(net.broadcast_address) - 1
    for host in sorted(set(hosts) - set(out)):
        while candidate >= first and (candidate in taken or candidate in mine):
            candidate -= 1
        if candidate < first:
            raise PrereqError(f"subnet {subnet} full: no address left for host {host}",
                              hint="a stack's subnet is sized when the stack is created; "
                              "destroy and apply it again")
        out[host] = str(IPv4Address(candidate))
        mine.add(candidate)
    return dict(sorted(out.items()))


def _address(text: str) -> IPv4Address | IPv6Address:
    try:
        return ipaddress.ip_interface(text).ip
    except ValueError as e:
        raise PrereqError(f"not an IP address: {text!r}") from e
