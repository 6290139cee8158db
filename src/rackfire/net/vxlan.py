"""A stack's network across hosts: the stack's bridge on each host joined by VXLAN.

Per stack and host: one VXLAN device `vxlan_name(stack)` (VNI `stack_vni(stack)` unless the
controller hands out another, UDP 4789, source learning on) as a port of the stack's bridge,
and one all-zeros FDB entry per other host of the stack ("head-end replication": broadcast,
unknown unicast and multicast are sent once to every peer; no multicast underlay needed).
Every host's bridge is the same anycast gateway: `ensure_bridge` gives it the same address
and, derived from the stack name, the same MAC everywhere, so an instance's gateway is always
its own host, and stays valid under the same MAC when the instance moves. Frames from the
gateway must not cross the tunnel: every host would answer, and each bridge would see its own
MAC arrive from another host ("received packet with own address as source address"). So ARP
and ND for the gateway stay local (`neigh_suppress` on the VXLAN port), and the bridge loses
what makes it talk on its own: IPv6 (the gateway is IPv4 only; link-local RS and MLD are
multicast) and multicast snooping (it reports the snoopers' groups). Turning snooping off
sends one IGMP leave, once per host; a bridge made without both would send nothing.
Consequence: a host's own stack reaches only its local instances through the bridge (a remote
instance answers the gateway MAC, which is its own host); instance to instance works across
hosts.

Peers are one-sided: a VXLAN device accepts frames for its VNI from any host and learns from
them. Removing B from A's peers stops A sending to B, but A learns B's MACs again from B's
next broadcast unless B drops A too; every host of the stack must get the same peer set.
Nothing authenticates VXLAN: the underlay must be trusted (or filtered to the stack's hosts).

MTU: VXLAN over IPv4 adds 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14), so
the device and the bridge get the underlay's MTU minus 50 (1450 on a 1500 underlay). Every
instance's veth, both ends, must not exceed the bridge's MTU: a bigger frame is dropped
silently where the bridge forwards it to the VXLAN device (a black hole for full-size TCP
segments, while small pings pass). `links.attach_instance` creates veths at 1500, so it has
to create and converge both ends at the bridge's MTU.

Invariants (as in `links`): every call converges and can be repeated after a crash; a
refusal before any change is a PrereqError, a netlink failure while changing an ExecError;
everything happens in the calling thread's network namespace, the host's; nothing forks.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from rackfire.errors import ExecError, PrereqError
from rackfire.net.links import _changing, _delete_link, _link, _link_msg, _rtnl
from rackfire.net.names import VNI_MAX, bridge_name, stack_vni, vxlan_name

VXLAN_PORT = 4789  # IANA
VXLAN_OVERHEAD = 50  # over an IPv4 underlay; see the module docstring
_DEFAULT_DST = "00:00:00:00:00:00"  # the FDB entry used for every MAC without its own
_NTF_SELF = 0x02  # an entry of the VXLAN device itself, not of the bridge above it
_IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class _Vxlan:
    index: int
    kind: str
    vni: int | None
    local: str | None
    port: int | None
    learning: bool
    underlay: int | None
    mtu: int
    master: int | None
    up: bool


def _vxlan(ipr: Any, ifname: str) -> _Vxlan | None:
    msg = _link_msg(ipr, ifname)
    if msg is None:
        return None
    data = msg.get(("linkinfo", "data")) or {}

    def attr(name: str) -> Any:
        return data.get(name) if data else None

    master = msg.get("IFLA_MASTER")
    return _Vxlan(index=int(msg["index"]), kind=str(msg.get(("linkinfo", "kind")) or ""),
                  vni=attr("IFLA_VXLAN_ID"), local=attr("IFLA_VXLAN_LOCAL"),
                  port=attr("IFLA_VXLAN_PORT"), learning=bool(attr("IFLA_VXLAN_LEARNING")),
                  underlay=attr("IFLA_VXLAN_LINK"), mtu=int(msg.get("IFLA_MTU") or 0),
                  master=None if master is None else int(master),
                  up=bool(int(msg["flags"]) & _IFF_UP))


def _ipv4(ip: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError as e:
        raise PrereqError(f"{what} is not an IPv4 address: {ip!r}") from e


def _vni_owner(ipr: Any, vni: int, mine: str) -> str | None:
    """Another VXLAN device on this host already using `vni` (the kernel refuses a second)."""
    for msg in ipr.get_links():
        data = msg.get(("linkinfo", "data"))
        if (msg.get(("linkinfo", "kind")) == "vxlan" and msg.get("IFLA_IFNAME") != mine
                and data and data.get("IFLA_VXLAN_ID") == vni):
            return str(msg.get("IFLA_IFNAME"))
    return None


def ensure_vxlan(stack: str, vni: int | None, local_ip: str, underlay_dev: str) -> str:
    """Make the stack's VXLAN device a working port of its bridge; the device's name.

    `vni` None means `stack_vni(stack)`. `local_ip` must be an address of `underlay_dev`.
    A device with other parameters (VNI, local address, underlay) is replaced, which drops
    its peers: call `set_vxlan_peers` after this, every time.
    """
    vni = stack_vni(stack) if vni is None else vni
    if not 0 < vni < VNI_MAX:
        raise PrereqError(f"VNI {vni} is outside 1..{VNI_MAX - 1}")
    local_ip = _ipv4(local_ip, "local address")
    name, bridge = vxlan_name(stack), bridge_name(stack)
    with _rtnl() as ipr:
        br, under = _link(ipr, bridge), _link(ipr, underlay_dev)
        if br is None:
            raise PrereqError(f"stack {stack} has no bridge {bridge} on this host",
                              hint="call ensure_bridge first")
        if under is None:
            raise PrereqError(f"underlay device {underlay_dev} does not exist")
        own = {str(a.get("address")) for a in ipr.get_addr(index=under.index,
                                                             family=socket.AF_INET)}
        if local_ip not in own:
            raise PrereqError(f"{local_ip} is not an address of {underlay_dev}",
                              hint=f"{underlay_dev} has {', '.join(sorted(own)) or 'none'}")
        (under_msg,) = ipr.link("get", index=under.index)
        mtu = int(under_msg.get("IFLA_MTU")) - VXLAN_OVERHEAD
        with _changing(f"vxlan {name} of stack {stack}"):
            vx = _vxlan(ipr, name)
            if vx is not None and (vx.kind, vx.vni, vx.local, vx.port, vx.learning,
                                   vx.underlay) != ("vxlan", vni, local_ip, VXLAN_PORT,
                                                    True, under.index):
                _delete_link(ipr, name)  # these cannot be changed in place
                vx = None
            if vx is None:
                other = _vni_owner(ipr, vni, name)
                if other is not None:
                    raise PrereqError(f"VNI {vni} of stack {stack} is already used by {other}",
                                      hint="give the stack another VNI")
                try:
                    ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni,
                             vxlan_local=local_ip, vxlan_port=VXLAN_PORT, vxlan_learning=1,
                             vxlan_link=under.index, mtu=mtu)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:  # EEXIST: a concurrent call made it
                        raise
                vx = _vxlan(ipr, name)
                if vx is None:
                    raise ExecError(f"vxlan {name} vanished while being made")
            if vx.mtu != mtu:
                ipr.link("set", index=vx.index, mtu=mtu)
            if vx.master != br.index:
                ipr.link("set", index=vx.index, master=br.index)
            # Explicitly, not left to the kernel's min-of-ports: the bridge keeps it when the
            # VXLAN port goes down or away, so the instances' MTU never has to grow back.
            (br_msg,) = ipr.link("get", index=br.index)
            if int(br_msg.get("IFLA_MTU")) != mtu:
                ipr.link("set", index=br.index, mtu=mtu)
            ipr.brport("set", index=vx.index, neigh_suppress=1)
            _disable_ipv6(bridge)
            if br_msg.get(("linkinfo", "data", "IFLA_BR_MCAST_SNOOPING")) != 0:
                # A snooping bridge joins the snoopers' groups (224.0.0.106, ff02::6a) and
                # reports them, from the gateway's MAC. With head-end replication every
                # multicast goes to every peer anyway, so snooping buys nothing here.
                ipr.link("set", index=br.index, kind="bridge", br_mcast_snooping=0)
            if not vx.up:
                ipr.link("set", index=vx.index, state="up")
    return name


def underlay_device(local_ip: str) -> str:
    """The device that holds `local_ip`: the host's underlay, for `ensure_vxlan`."""
    local_ip = _ipv4(local_ip, "local address")
    with _rtnl() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            if a.get("address") == local_ip:
                (msg,) = ipr.link("get", index=a["index"])
                return str(msg.get("IFLA_IFNAME"))
    raise PrereqError(f"{local_ip} is not an address of this host",
                      hint="the agent's --listen address must be its underlay address")


def _disable_ipv6(ifname: str) -> None:
    # No netlink attribute for this; /proc/sys/net follows the calling thread's netns.
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    if not os.path.exists(path):
        return  # a kernel without IPv6: nothing to turn off
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:  # a sysctl ignores a write after a read (not at offset 0)
        f.write("1")


def _remotes(ipr: Any, index: int) -> list[tuple[str, str]]:
    """(MAC, remote host) of the device's own FDB entries: defaults and learned ones."""
    return [(str(m.get("NDA_LLADDR")), str(m.get("NDA_DST")))
            for m in ipr.fdb("dump", ifindex=index)
            if int(m["ifindex"]) == index and int(m["flags"]) & _NTF_SELF
            and m.get("NDA_DST") is not None]


def set_vxlan_peers(stack: str, peers: list[str]) -> None:
    """Make the stack's VXLAN device replicate to exactly `peers` (underlay IPs of the other
    hosts of the stack; this host's own address is ignored, so every host can be given the
    same list). Entries learned from hosts no longer listed are removed as well, so traffic
    to them stops now rather than when the entries age out (300 s)."""
    wanted = {_ipv4(p, "peer") for p in peers}
    name = vxlan_name(stack)
    with _rtnl() as ipr:
        vx = _vxlan(ipr, name)
        if vx is None or vx.kind != "vxlan":
            raise PrereqError(f"stack {stack} has no vxlan {name} on this host",
                              hint="call ensure_vxlan first")
        wanted.discard(str(vx.local))  # replicating to ourselves would loop frames back in
        with _changing(f"peers of vxlan {name} of stack {stack}"):
            entries = _remotes(ipr, vx.index)
            defaults = {dst for mac, dst in entries if mac == _DEFAULT_DST}
            # Add before removing: a changed peer set never passes through an empty one.
            for dst in sorted(wanted - defaults):
                try:
                    ipr.fdb("append", ifindex=vx.index, lladdr=_DEFAULT_DST, dst=dst)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            for mac, dst in entries:
                if dst not in wanted:
                    try:
                        ipr.fdb("del", ifindex=vx.index, lladdr=mac, dst=dst)
                    except NetlinkError as e:
                        if e.code != errno.ENOENT:  # ENOENT: a learned entry aged out
                            raise


def vxlan_peers(stack: str) -> list[str]:
    """The hosts the stack's VXLAN device replicates to, sorted; [] without a device."""
    with _rtnl() as ipr:
        vx = _vxlan(ipr, vxlan_name(stack))
        if vx is None:
            return []
        return sorted({dst for mac, dst in _remotes(ipr, vx.index) if mac == _DEFAULT_DST},
                      key=ipaddress.IPv4Address)


def remove_vxlan(stack: str) -> None:
    """Delete the stack's VXLAN device (its FDB goes with it); a missing one is fine."""
    with _rtnl() as ipr, _changing(f"delete vxlan of stack {stack}"):
        _delete_link(ipr, vxlan_name(stack))
