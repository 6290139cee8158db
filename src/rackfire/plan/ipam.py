"""Address allocation for stack networks. Pure: what is used goes in, a choice comes out;
the store makes choices stick (an instance keeps its IP across restarts and re-applies)."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from rackfire.errors import PrereqError

DEFAULT_POOL = "10.88.0.0/16"


def allocate_subnet(pool: str, used: Collection[str], prefix: int = 24) -> str:
    taken = {ipaddress.ip_network(u) for u in used}
    for net in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise PrereqError(f"no free /{prefix} left in the stack network pool {pool}",
                      hint="destroy a stack, or start the server with a larger --subnet-pool")


def gateway_of(subnet: str) -> str:
    return str(next(ipaddress.ip_network(subnet).hosts()))


def allocate_ip(subnet: str, used: Collection[str]) -> str:
    net = ipaddress.ip_network(subnet)
    taken = {*used, gateway_of(subnet)}
    for host in net.hosts():
        if str(host) not in taken:
            return str(host)
    raise PrereqError(f"subnet {subnet} is full", hint="lower a role's count")
