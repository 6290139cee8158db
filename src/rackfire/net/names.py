"""Deterministic names for everything rackfire creates in a host's network stack.

Invariants: a name depends only on the stack or instance id, so a restarted agent finds its
links and namespaces again and a GC pass recognises orphans by prefix. Link names fit IFNAMSIZ
(15 characters), which is why they are hashed rather than spelled out.
"""

from __future__ import annotations

import hashlib
import os
import re

from rackfire.errors import PrereqError

BRIDGE_PREFIX = "rfb"
VETH_PREFIX = "rfv"
VXLAN_PREFIX = "rfx"
NETNS_PREFIX = "rf-"
LINK_PREFIXES = (BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX)
PREFIXES = (*LINK_PREFIXES, NETNS_PREFIX)

IFNAMSIZ = 15  # usable characters; the kernel's IFNAMSIZ of 16 includes the NUL
VNI_MAX = (1 << 24) - 1  # VXLAN network identifiers are 24 bits

# Instance ids become file names under /run/netns: no slashes, no leading dot.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
# /run/netns is the machine's, not a host's: on the test bed several agents (simulated
# hosts) share one, and each names its instances' namespaces in a scope of its own (what a
# host that died leaves there must not be taken over by another). Unset on a real host.
SCOPE_ENV = "RACKFIRE_NETNS_SCOPE"
_SCOPE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:10]


def bridge_name(stack: str) -> str:
    """The stack's bridge on every host: `rfb` + 10 hex digits of sha1(stack)."""
    return BRIDGE_PREFIX + _digest(stack)


def veth_name(instance_id: str) -> str:
    """The host side of an instance's veth pair: `rfv` + 10 hex digits of sha1(id)."""
    return VETH_PREFIX + _digest(instance_id)


def vxlan_name(stack: str) -> str:
    """The stack's VXLAN device on every host: `rfx` + 10 hex digits of sha1(stack)."""
    return VXLAN_PREFIX + _digest(stack)


def stack_vni(stack: str) -> int:
    """The stack's default VXLAN network identifier, the same on every host: 24 bits of
    sha1(stack) in 1..2**24-2 (0 and all-ones are reserved by some implementations).

    Two stacks can collide (birthday odds ~n**2 / 2**25: 1 in 3,400 for 100 stacks), and a
    collision would join their networks, so a controller should store the VNI it hands out
    and pick another on collision; this is only the deterministic first choice.
    """
    digest = hashlib.sha1(stack.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:3], "big") % (VNI_MAX - 1) + 1


def cgroup_name(instance_id: str, scope: str | None = None) -> str:
    """The instance's cgroup under `/rackfire/` in each hierarchy: its id, or in a scope
    (SCOPE_ENV: simulated hosts sharing one kernel) `SCOPE_id`, so that one host's
    `runc delete` of its copy never empties another host's cgroup of the same id."""
    scope = _scope(scope)
    return (f"{scope}_" if scope else "") + instance_id


def _scope(scope: str | None) -> str:
    scope = os.environ.get(SCOPE_ENV, "") if scope is None else scope
    if scope and not _SCOPE.fullmatch(scope):
        raise PrereqError(f"{SCOPE_ENV}={scope!r} is not a scope name",
                          hint="lowercase letters, digits and '-'")
    return scope


def netns_name(instance_id: str, scope: str | None = None) -> str:
    """The instance's named network namespace (`/run/netns/rf-shop.web.3`; in a scope,
    `rf-SCOPE_shop.web.3`). `scope` None: this process's (SCOPE_ENV)."""
    if not _ID.fullmatch(instance_id):
        raise PrereqError(f"instance id {instance_id!r} cannot name a network namespace")
    scope = _scope(scope)
    return NETNS_PREFIX + (f"{scope}_" if scope else "") + instance_id
