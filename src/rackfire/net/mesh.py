"""The routing mesh's plumbing: a host's own address in a stack network that spans hosts.

Every host's stack bridge is the same anycast gateway, same IP and same MAC (net/vxlan.py),
so a connection from the gateway to an instance on another host never comes back: the
instance answers the gateway's MAC, which is its own host's bridge. A second address on the
bridge does not help (the reply is addressed by MAC: measured on netns, the ARP reply for the
instance never reaches the asking host). So the host's address gets an interface with a MAC
of its own: a veth pair `mesh_names(stack)`, one end a port of the stack's bridge, the other
holding `host_ip/32`, and a policy rule `from host_ip lookup mesh_table(stack)` whose table
routes the stack's subnet out of that end. A program that connects from `host_ip` (HAProxy's
`source`) then reaches every instance of the stack on any host, and the replies find their
way back over VXLAN to the unique MAC. The bridge gets `arp_ignore=1`, so only the veth end
answers ARP for `host_ip` (a bridge answers for any address of the host by default, with the
gateway's MAC, and a remote instance would then again send to its own host).

Invariants (as in `links`): every call converges and can be repeated after a crash; a
refusal before any change is a PrereqError, a netlink failure while changing an ExecError;
everything happens in the calling thread's network namespace, the host's; nothing forks.
Both ends are named with the veth prefix, so `links.owned_links` (and the tests' leak
checks) see a forgotten one; `owned_mesh_rules` lists the rules.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from rackfire.errors import ExecError, PrereqError
from rackfire.net.links import _changing, _delete_link, _link, _paired, _rtnl
from rackfire.net.names import VETH_PREFIX, bridge_name

MESH_TABLE_BASE = 0x52460000  # "RF": one routing table per stack, 0x5246_0000 + 16 bits
MESH_RULE_PRIORITY = 1000  # before `main` (32766): a host address's traffic is the stack's
_SCOPE_LINK = 253


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def mesh_names(stack: str) -> tuple[str, str]:
    """(the end holding the host address, the bridge's port): `rfv` + 10 hex digits each."""
    d = _digest(f"mesh:{stack}")
    return VETH_PREFIX + d[:10], VETH_PREFIX + d[10:20]


def mesh_table(stack: str) -> int:
    """The stack's routing table for its host address (a collision of two stacks on one
    host only matters if both span hosts here: 1 in 65,536 per pair)."""
    return MESH_TABLE_BASE + int(_digest(f"mesh:{stack}")[:4], 16)


def mesh_mac(host_ip: str) -> str:
    """The host end's MAC, from the address (as instances' are: `links.instance_mac`)."""
    return "02:43:" + ":".join(f"{int(octet):02x}" for octet in host_ip.split("."))


def _rules(ipr: Any, table: int) -> list[tuple[str, int, int]]:
    """(source, source prefix, priority) of the IPv4 rules that look up `table`."""
    out = []
    for msg in ipr.get_rules(family=socket.AF_INET):
        if msg.get("FRA_TABLE") == table:
            out.append((str(msg.get("FRA_SRC") or ""), int(msg["src_len"]),
                        int(msg.get("FRA_PRIORITY") or 0)))
    return out


def ensure_mesh_port(stack: str, host_ip: str, subnet: str) -> str:
    """Make `host_ip` this host's own address in the stack's `subnet` (see the module
    docstring); the name of the end holding it. The stack's bridge must exist. A different
    address given before is replaced (its rule goes too)."""
    try:
        ip = ipaddress.IPv4Address(host_ip)
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as e:
        raise PrereqError(f"not an IPv4 address and subnet: {host_ip} in {subnet}") from e
    if ip not in net:
        raise PrereqError(f"host address {host_ip} is outside the stack's subnet {subnet}")
    outer, port = mesh_names(stack)
    bridge, table = bridge_name(stack), mesh_table(stack)
    with _rtnl() as ipr:
        br = _link(ipr, bridge)
        if br is None:
            raise PrereqError(f"stack {stack} has no bridge {bridge} on this host",
                              hint="call ensure_bridge first")
        with _changing(f"host address {host_ip} of stack {stack}"):
            end, peer = _link(ipr, outer), _link(ipr, port)
            if not _paired(end, peer):
                _delete_link(ipr, outer)
                _delete_link(ipr, port)
                ipr.link("add", ifname=outer, kind="veth", address=mesh_mac(host_ip),
                         peer={"ifname": port})
                end, peer = _link(ipr, outer), _link(ipr, port)
            if end is None or peer is None:
                raise ExecError(f"veth {outer} vanished while being made")
            if end.mac != mesh_mac(host_ip):
                ipr.link("set", index=end.index, address=mesh_mac(host_ip))
            for link in (end, peer):
                if link.mtu != br.mtu:
                    ipr.link("set", index=link.index, mtu=br.mtu)
            if peer.master != br.index or not peer.up:
                ipr.link("set", index=peer.index, master=br.index, state="up")
            if not end.up:
                ipr.link("set", index=end.index, state="up")
            present = {(str(a.get("address")), int(a["prefixlen"]))
                       for a in ipr.get_addr(index=end.index, family=socket.AF_INET)}
            for address, length in present - {(str(ip), 32)}:
                ipr.addr("del", index=end.index, address=address, prefixlen=length)
            if (str(ip), 32) not in present:
                ipr.addr("add", index=end.index, address=str(ip), prefixlen=32)
            ipr.route("replace", dst=str(net), table=table, oif=end.index,
                      prefsrc=str(ip), scope=_SCOPE_LINK)
            rules = _rules(ipr, table)
            if (str(ip), 32, MESH_RULE_PRIORITY) not in rules:
                _add_rule(ipr, str(ip), table)
            for src, length, priority in rules:
                if (src, length, priority) != (str(ip), 32, MESH_RULE_PRIORITY):
                    _del_rule(ipr, src, length, priority, table)
            _sysctl(f"/proc/sys/net/ipv4/conf/{bridge}/arp_ignore", "1")
    return outer


def remove_mesh_port(stack: str) -> None:
    """Remove the host address of the stack (veth, its route, its rule); missing is fine.
    Before `links.delete_bridge` or after: either order works."""
    outer, port = mesh_names(stack)
    table = mesh_table(stack)
    with _rtnl() as ipr, _changing(f"remove host address of stack {stack}"):
        _delete_link(ipr, outer)  # the route goes with it
        _delete_link(ipr, port)  # normally gone with its peer already
        for src, length, priority in _rules(ipr, table):
            _del_rule(ipr, src, length, priority, table)


def mesh_address(stack: str) -> str:
    """The host address of the stack on this host, or ""."""
    with _rtnl() as ipr:
        end = _link(ipr, mesh_names(stack)[0])
        if end is None:
            return ""
        found = [str(a.get("address"))
                 for a in ipr.get_addr(index=end.index, family=socket.AF_INET)]
    return found[0] if found else ""


def owned_mesh_rules() -> list[str]:
    """The host's policy rules into rackfire's mesh tables, as `from SRC lookup TABLE`."""
    with _rtnl() as ipr:
        rules = [(str(m.get("FRA_SRC") or ""), int(m.get("FRA_TABLE") or 0))
                 for m in ipr.get_rules(family=socket.AF_INET)]
    return sorted(f"from {src} lookup {table}" for src, table in rules
                  if MESH_TABLE_BASE <= table < MESH_TABLE_BASE + 0x10000)


def _add_rule(ipr: Any, src: str, table: int) -> None:
    try:
        ipr.rule("add", family=socket.AF_INET, src=src, src_len=32, table=table,
                 priority=MESH_RULE_PRIORITY)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def _del_rule(ipr: Any, src: str, length: int, priority: int, table: int) -> None:
    match = {"src": src, "src_len": length} if src else {}
    try:
        ipr.rule("del", family=socket.AF_INET, table=table, priority=priority, **match)
    except NetlinkError as e:
        if e.code != errno.ENOENT:
            raise


def _sysctl(path: str, value: str) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:  # a sysctl ignores a write after a read (not at offset 0)
        f.write(value)
