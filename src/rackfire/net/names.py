"""Deterministic names for everything rackfire creates in a host's network stack.

Invariants: a name depends only on the stack or instance id, so a restarted agent finds its
links and namespaces again and a GC pass recognises orphans by prefix. Link names fit IFNAMSIZ
(15 characters), which is why they are hashed rather than spelled out.
"""

from __future__ import annotations

import hashlib
import re

from rackfire.errors import PrereqError

BRIDGE_PREFIX = "rfb"
VETH_PREFIX = "rfv"
NETNS_PREFIX = "rf-"
LINK_PREFIXES = (BRIDGE_PREFIX, VETH_PREFIX)
PREFIXES = (*LINK_PREFIXES, NETNS_PREFIX)

IFNAMSIZ = 15  # usable characters; the kernel's IFNAMSIZ of 16 includes the NUL

# Instance ids become file names under /run/netns: no slashes, no leading dot.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:10]


def bridge_name(stack: str) -> str:
    """The stack's bridge on every host: `rfb` + 10 hex digits of sha1(stack)."""
    return BRIDGE_PREFIX + _digest(stack)


def veth_name(instance_id: str) -> str:
    """The host side of an instance's veth pair: `rfv` + 10 hex digits of sha1(id)."""
    return VETH_PREFIX + _digest(instance_id)


def netns_name(instance_id: str) -> str:
    """The instance's named network namespace (`/run/netns/rf-shop.web.3`)."""
    if not _ID.fullmatch(instance_id):
        raise PrereqError(f"instance id {instance_id!r} cannot name a network namespace")
    return NETNS_PREFIX + instance_id
