"""Stack bridges and instance network namespaces on this host, through netlink (pyroute2).

Per stack: one bridge `bridge_name(stack)` holding the gateway address. Per instance: a named
netns `netns_name(id)` holding `lo` and `eth0`, the peer of the host-side veth `veth_name(id)`,
which is a port of the stack's bridge.

Invariants:
- Every function converges: it reads what exists and changes only what differs, so calling it
  again (or after a crash half-way) is safe. A working instance namespace is never recreated,
  so a container already running inside it keeps its network.
- A refusal before any change is a PrereqError; a netlink failure while changing is an
  ExecError (the next reconcile repairs it). A missing part on delete is success.
- Every netlink socket is closed before the function returns (the agent runs for weeks), and
  nothing forks: sockets inside a netns come from `nsenter`.
- These calls block and pyroute2 runs its own event loop in them: from async code, call them
  through `asyncio.to_thread`. Calls for the same instance must not run concurrently.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rackfire.errors import ExecError, PrereqError
from rackfire.net.names import (
    BRIDGE_PREFIX,
    LINK_PREFIXES,
    NETNS_PREFIX,
    bridge_name,
    netns_name,
    veth_name,
)
from rackfire.net.nsenter import (
    NETNS_DIR,
    create_netns,
    is_netns,
    netns_path,
    remove_netns,
    socket_in_netns,
)

PEER_NAME = "eth0"
_IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class _Link:
    index: int
    kind: str
    up: bool
    master: int | None
    peer: int | None  # a veth's peer index, in the peer's namespace
    mac: str = ""
    mtu: int = 1500


@contextmanager
def _rtnl(netns: str | None = None) -> Iterator[Any]:
    """An IPRoute on the host namespace or inside `netns`, closed on the way out."""
    # groups=0: these sockets only make requests; event subscriptions would just queue noise.
    if netns is None:
        ipr = IPRoute(groups=0)
    else:
        sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_DGRAM,
                               socket.NETLINK_ROUTE)
        try:
            ipr = IPRoute(use_socket=sock, groups=0)
        except BaseException:
            sock.close()
            raise
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _changing(what: str) -> Iterator[None]:
    try:
        yield
    except (NetlinkError, OSError) as e:
        raise ExecError(f"{what}: {e}") from e


def _link_msg(ipr: Any, ifname: str) -> Any | None:
    """The link's netlink message, or None if there is no such link."""
    try:
        (msg,) = ipr.link("get", ifname=ifname)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    return msg


def _link(ipr: Any, ifname: str) -> _Link | None:
    msg = _link_msg(ipr, ifname)
    if msg is None:
        return None
    master, peer = msg.get("IFLA_MASTER"), msg.get("IFLA_LINK")
    return _Link(index=int(msg["index"]), kind=str(msg.get(("linkinfo", "kind")) or ""),
                 up=bool(int(msg["flags"]) & _IFF_UP),
                 master=None if master is None else int(master),
                 peer=None if peer is None else int(peer),
                 mac=str(msg.get("IFLA_ADDRESS") or ""),
                 mtu=int(msg.get("IFLA_MTU") or 1500))


def _delete_link(ipr: Any, ifname: str) -> None:
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise


def _set_up(ipr: Any, link: _Link) -> None:
    if not link.up:
        ipr.link("set", index=link.index, state="up")


def _set_address(ipr: Any, index: int, ip: str, prefix: int) -> None:
    """Make `ip/prefix` the link's only IPv4 address."""
    present = {(str(a.get("address")), int(a["prefixlen"]))
               for a in ipr.get_addr(index=index, family=socket.AF_INET)}
    # Remove strays before adding: deleting a primary address also deletes its secondaries.
    for address, length in present - {(ip, prefix)}:
        ipr.addr("del", index=index, address=address, prefixlen=length)
    if (ip, prefix) not in present:
        ipr.addr("add", index=index, address=ip, prefixlen=prefix)


def _check_address(ip: str, prefix: int) -> None:
    try:
        ipaddress.IPv4Interface(f"{ip}/{prefix}")
    except ValueError as e:
        raise PrereqError(f"not an IPv4 address with prefix: {ip}/{prefix}") from e


def _bridge_mac(name: str) -> str:
    # A fixed, locally administered MAC: otherwise a bridge takes the lowest MAC of its ports
    # and changes it as ports come and go, leaving stale gateway entries in instance ARP caches.
    digits = name[len(BRIDGE_PREFIX):][:10]
    return "02:" + ":".join(digits[i:i + 2] for i in range(0, 10, 2))


def instance_mac(ip: str) -> str:
    """The MAC of an instance's eth0, from its IP: a replacement that keeps the IP keeps the
    MAC, so the host's and peers' neighbour entries stay right (with a random MAC they point
    at the old instance until they expire, and connections hang meanwhile)."""
    return "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))


def ensure_bridge(stack: str, gateway: str, prefix: int) -> str:
    """Make the stack's bridge exist, hold exactly `gateway/prefix` and be up; its name."""
    _check_address(gateway, prefix)
    name = bridge_name(stack)
    with _rtnl() as ipr, _changing(f"bridge {name} of stack {stack}"):
        bridge = _link(ipr, name)
        if bridge is None:
            try:
                ipr.link("add", ifname=name, kind="bridge", address=_bridge_mac(name))
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # EEXIST: a concurrent call made it
                    raise
            bridge = _link(ipr, name)
        if bridge is None or bridge.kind != "bridge":
            raise ExecError(f"{name} exists but is not a bridge")
        _set_address(ipr, bridge.index, gateway, prefix)
        _set_up(ipr, bridge)
    return name


def delete_bridge(stack: str) -> None:
    """Delete the stack's bridge; a missing bridge is fine. Ports left on it are released."""
    with _rtnl() as ipr, _changing(f"delete bridge of stack {stack}"):
        _delete_link(ipr, bridge_name(stack))


def attach_instance(instance_id: str, stack: str, ip: str, prefix: int, gateway: str) -> str:
    """Give the instance its netns wired to the stack bridge; the netns path, for runc.

    In the netns: `lo` up, `eth0` up with exactly `ip/prefix`, default route via `gateway`.
    Leftovers of an interrupted attach are repaired: a veth without a live netns or a veth
    pair that does not join the two is deleted and made again; an intact pair is kept.
    """
    _check_address(ip, prefix)
    _check_address(gateway, prefix)
    ns, veth, bridge = netns_name(instance_id), veth_name(instance_id), bridge_name(stack)
    path = netns_path(ns)
    with _rtnl() as host:
        br = _link(host, bridge)
        if br is None:
            raise PrereqError(f"stack {stack} has no bridge {bridge} on this host",
                              hint="call ensure_bridge first")
        with _changing(f"attach {instance_id}"):
            if not is_netns(path):
                _delete_link(host, veth)  # its peer is in a namespace nobody can find again
                remove_netns(ns)  # maybe a bare file left by a crash before the mount
                create_netns(ns)
                _wire_new(host, br, ns, veth, ip, prefix, gateway)
                return path
            with _rtnl(ns) as inner:
                outside, inside = _link(host, veth), _link(inner, PEER_NAME)
                if not _paired(outside, inside):
                    # Delete explicitly and synchronously: a veth dying with its namespace
                    # goes asynchronously, and its name stays taken ("File exists") meanwhile.
                    _delete_link(host, veth)
                    _delete_link(inner, PEER_NAME)
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        host.link("add", ifname=veth, kind="veth",
                                  peer={"ifname": PEER_NAME, "net_ns_fd": fd,
                                        "address": instance_mac(ip)})
                    finally:
                        os.close(fd)
                    outside, inside = _link(host, veth), _link(inner, PEER_NAME)
                if outside is None or inside is None:
                    raise ExecError(f"veth {veth} vanished while attaching {instance_id}")
                # The bridge's MTU: lower than 1500 when a VXLAN port carries the stack
                # across hosts (its 50 bytes of headers), and then the instance's must be too.
                if outside.mtu != br.mtu:
                    host.link("set", index=outside.index, mtu=br.mtu)
                if inside.mtu != br.mtu:
                    inner.link("set", index=inside.index, mtu=br.mtu)
                if outside.master != br.index or not outside.up:
                    host.link("set", index=outside.index, master=br.index, state="up")
                loopback = _link(inner, "lo")
                if loopback is not None:
                    _set_up(inner, loopback)
                if inside.mac != instance_mac(ip):
                    inner.link("set", index=inside.index, address=instance_mac(ip))
                _set_address(inner, inside.index, ip, prefix)
                _set_up(inner, inside)
                inner.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=inside.index)
    return path


def _wire_new(host: Any, br: _Link, ns: str, veth: str, ip: str, prefix: int,
              gateway: str) -> None:
    """Wire a netns made a moment ago, which holds only `lo`: the veth is made already a
    port of the bridge, up and at its MTU, its peer with the instance's MAC, so that the
    first start of an instance takes half the netlink round trips of the converging path
    (a burst of 50 starts waits on them)."""
    fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        host.link("add", ifname=veth, kind="veth", mtu=br.mtu, master=br.index, state="up",
                  peer={"ifname": PEER_NAME, "net_ns_fd": fd, "address": instance_mac(ip),
                        "mtu": br.mtu})
    finally:
        os.close(fd)
    with _rtnl(ns) as inner:
        index = {str(m.get("IFLA_IFNAME")): int(m["index"]) for m in inner.get_links()}
        if PEER_NAME not in index:
            raise ExecError(f"veth {veth} has no peer {PEER_NAME} in netns {ns}")
        inner.link("set", index=index["lo"], state="up")
        inner.addr("add", index=index[PEER_NAME], address=ip, prefixlen=prefix)
        inner.link("set", index=index[PEER_NAME], state="up")
        inner.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index[PEER_NAME])


def _paired(outside: _Link | None, inside: _Link | None) -> bool:
    return (outside is not None and inside is not None
            and outside.kind == inside.kind == "veth"
            and outside.peer == inside.index and inside.peer == outside.index)


def detach_instance(instance_id: str) -> None:
    """Remove the instance's veth pair, then its netns; missing parts are fine."""
    with _rtnl() as host, _changing(f"detach {instance_id}"):
        # The veth first, explicitly: left to the netns teardown it dies asynchronously and
        # a quick re-attach would find its name still taken.
        _delete_link(host, veth_name(instance_id))
        remove_netns(netns_name(instance_id))


def netns_exists(instance_id: str) -> bool:
    """Whether the instance's netns is mounted."""
    return is_netns(netns_path(netns_name(instance_id)))


def owned_links() -> list[str]:
    """Host links with rackfire's prefixes (bridges and host-side veths), sorted."""
    with _rtnl() as ipr:
        names = [str(m.get("ifname")) for m in ipr.get_links()]
    return sorted(n for n in names if n.startswith(LINK_PREFIXES))


def owned_netns() -> list[str]:
    """Named network namespaces with rackfire's prefix, sorted."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX))
    except FileNotFoundError:
        return []
