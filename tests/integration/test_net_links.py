"""Real bridges, veths and network namespaces: instances talk, attach converges, nothing leaks.

Traffic stays between the host's own test bridge and namespaces made here. Every test's stack
and instances are removed by a fixture finalizer, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from rackfire.errors import NotFound, PrereqError
from rackfire.net import links
from rackfire.net.names import bridge_name, netns_name, veth_name
from rackfire.net.nsenter import create_netns, netns_path, run_in_netns, socket_in_netns
from rackfire.plan import ipam

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (runs anyway when CI=true)"),
]

PREFERRED_SUBNET = "10.88.250.0/24"


def _host_networks() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], check=True, capture_output=True,
                         text=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
            for a in link.get("addr_info", [])]


def _free_subnet() -> str:
    used = _host_networks()
    preferred = ipaddress.ip_network(PREFERRED_SUBNET)
    if not any(preferred.overlaps(ipaddress.ip_network(u, strict=False)) for u in used):
        return PREFERRED_SUBNET
    return ipam.allocate_subnet("10.88.192.0/18", used)


def _ip_json(netns: str | None, *args: str) -> list[dict[str, object]]:
    cmd = ["ip", "-j", *(["-n", netns] if netns else []), *args]
    result: list[dict[str, object]] = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout or "[]")
    return result


def _ipv4_of(netns: str | None, dev: str) -> list[str]:
    (link,) = _ip_json(netns, "-4", "addr", "show", "dev", dev)
    infos = link["addr_info"]
    assert isinstance(infos, list)
    return [f"{a['local']}/{a['prefixlen']}" for a in infos]


def _ifindex(netns: str | None, dev: str) -> int:
    (link,) = _ip_json(netns, "link", "show", "dev", dev)
    return int(str(link["ifindex"]))


def _exchange(server_ns: str, server_ip: str, client_ns: str | None) -> str:
    """Send bytes both ways between a listener in `server_ns` and a client; the client's IP."""
    with socket_in_netns(server_ns) as srv:
        srv.settimeout(5)
        srv.bind((server_ip, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        client = socket_in_netns(client_ns) if client_ns else socket.socket()
        with client:
            client.settimeout(5)
            client.connect((server_ip, port))
            conn, _ = srv.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
                conn.sendall(b"pong")
                assert client.recv(4) == b"pong"
            return str(client.getsockname()[0])


@dataclass
class StackNet:
    """One test stack's network; remembers what it attached so cleanup can find it."""

    stack: str
    subnet: str
    attached: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def gateway(self) -> str:
        return ipam.gateway_of(self.subnet)

    def bridge(self) -> str:
        return links.ensure_bridge(self.stack, self.gateway, self.prefix)

    def ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address + 10 + index)

    def instance(self, index: int) -> str:
        iid = f"{self.stack}.web.{index}"
        if iid not in self.attached:
            self.attached.append(iid)
        return iid

    def attach(self, index: int, ip: str | None = None) -> tuple[str, str]:
        iid = self.instance(index)
        ip = ip or self.ip(index)
        path = links.attach_instance(iid, self.stack, ip, self.prefix, self.gateway)
        assert path == f"/run/netns/{netns_name(iid)}"
        return netns_name(iid), ip

    def names(self) -> set[str]:
        return {bridge_name(self.stack), *map(veth_name, self.attached),
                *map(netns_name, self.attached)}

    def cleanup(self) -> None:
        for iid in self.attached:
            links.detach_instance(iid)
        links.delete_bridge(self.stack)


@pytest.fixture
def net() -> Iterator[StackNet]:
    sn = StackNet(stack=f"nettest{secrets.token_hex(4)}", subnet=_free_subnet())
    try:
        yield sn
    finally:
        sn.cleanup()
        assert not sn.names() & {*links.owned_links(), *links.owned_netns()}


def test_instances_talk_to_each_other_and_to_the_host(net: StackNet) -> None:
    assert net.bridge() == bridge_name(net.stack)
    ns_a, ip_a = net.attach(0)
    ns_b, ip_b = net.attach(1)

    assert _exchange(ns_a, ip_a, ns_b) == ip_b  # B -> A over the bridge, from B's own address
    assert _exchange(ns_a, ip_a, None) == net.gateway  # host -> A through the bridge
    assert _exchange(ns_b, ip_b, ns_a) == ip_a

    # Loopback is per namespace: the health-check path (127.0.0.1 inside the instance).
    assert _exchange(ns_a, "127.0.0.1", ns_a) == "127.0.0.1"
    assert _ipv4_of(ns_a, "eth0") == [f"{ip_a}/{net.prefix}"]
    routes = _ip_json(ns_a, "-4", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(net.gateway, "eth0")]


def test_ensure_bridge_is_idempotent_and_keeps_its_mac(net: StackNet) -> None:
    name = net.bridge()
    mac = _ip_json(None, "link", "show", "dev", name)[0]["address"]
    assert net.bridge() == name
    net.attach(0)
    net.attach(1)
    assert _ipv4_of(None, name) == [f"{net.gateway}/{net.prefix}"]
    # Ports came and went; the gateway's MAC (in every instance's ARP cache) did not move.
    assert _ip_json(None, "link", "show", "dev", name)[0]["address"] == mac


def test_attach_twice_keeps_the_working_pair(net: StackNet) -> None:
    net.bridge()
    ns_a, ip_a = net.attach(0)
    ns_b, _ = net.attach(1)
    before = (_ifindex(None, veth_name(net.instance(0))), os.stat(netns_path(ns_a)).st_ino)
    net.attach(0)
    after = (_ifindex(None, veth_name(net.instance(0))), os.stat(netns_path(ns_a)).st_ino)
    assert after == before  # converged in place: a running container would keep its network
    assert _exchange(ns_a, ip_a, ns_b)


def test_a_new_attach_is_wired_as_the_converging_path_would_leave_it(net: StackNet) -> None:
    """The first attach makes the veth in one request (a port of the bridge, up, at its
    MTU); what it leaves is what a re-attach would make, so the re-attach changes nothing."""
    bridge = net.bridge()
    subprocess.run(["ip", "link", "set", "dev", bridge, "mtu", "1450"], check=True)
    ns, ip = net.attach(0)
    (outside,) = _ip_json(None, "link", "show", "dev", veth_name(net.instance(0)))
    assert (outside["master"], outside["mtu"], outside["operstate"] != "DOWN") \
        == (bridge, 1450, True)
    (inside,) = _ip_json(ns, "link", "show", "dev", "eth0")
    assert (inside["mtu"], inside["address"]) == (1450, links.instance_mac(ip))
    assert "UP" in str(inside["flags"])
    (lo,) = _ip_json(ns, "link", "show", "dev", "lo")
    assert "UP" in str(lo["flags"])
    assert _ipv4_of(ns, "eth0") == [f"{ip}/{net.prefix}"]
    (route,) = _ip_json(ns, "-4", "route", "show", "default")
    assert (route["gateway"], route["dev"]) == (net.gateway, "eth0")
    before = (_ifindex(None, veth_name(net.instance(0))), _ifindex(ns, "eth0"))
    net.attach(0)
    assert (_ifindex(None, veth_name(net.instance(0))), _ifindex(ns, "eth0")) == before
    assert _exchange(ns, ip, None) == net.gateway


def test_attach_repairs_partial_leftovers(net: StackNet) -> None:
    net.bridge()
    ns_b, ip_b = net.attach(1)

    # 1. A netns without a veth (a crash right after creating the namespace).
    iid = net.instance(0)
    create_netns(netns_name(iid))
    assert links.netns_exists(iid)
    ns_a, ip_a = net.attach(0)
    assert _exchange(ns_b, ip_b, ns_a) == ip_a

    # 2. A host-side veth whose peer is not in the netns, and no netns at all.
    iid = net.instance(2)
    stray_peer = "rfx" + secrets.token_hex(5)
    subprocess.run(["ip", "link", "add", veth_name(iid), "type", "veth", "peer", "name",
                    stray_peer], check=True)
    try:
        ns_c, ip_c = net.attach(2)
    finally:
        subprocess.run(["ip", "link", "del", stray_peer], check=False, capture_output=True)
    assert stray_peer not in {link["ifname"] for link in _ip_json(None, "link", "show")}
    assert _exchange(ns_c, ip_c, ns_b) == ip_b

    # 3. A bare file where the netns should be mounted (a crash before the bind mount).
    iid = net.instance(3)
    open(netns_path(netns_name(iid)), "x").close()
    assert not links.netns_exists(iid)
    ns_d, ip_d = net.attach(3)
    assert _exchange(ns_d, ip_d, ns_a) == ip_a

    # 4. A new address converges in place: exactly one IPv4 address on eth0 afterwards.
    inode = os.stat(netns_path(ns_d)).st_ino
    _, new_ip = net.attach(3, ip=net.ip(40))
    assert _ipv4_of(ns_d, "eth0") == [f"{new_ip}/{net.prefix}"]
    assert os.stat(netns_path(ns_d)).st_ino == inode
    assert _exchange(ns_d, new_ip, None) == net.gateway


def test_attach_without_bridge_changes_nothing(net: StackNet) -> None:
    iid = net.instance(0)
    with pytest.raises(PrereqError, match="no bridge"):
        links.attach_instance(iid, net.stack, net.ip(0), net.prefix, net.gateway)
    assert not links.netns_exists(iid)
    assert veth_name(iid) not in links.owned_links()


def test_detach_and_delete_leave_nothing(net: StackNet) -> None:
    net.bridge()
    net.attach(0)
    net.attach(1)
    assert net.names() <= {*links.owned_links(), *links.owned_netns()}

    net.cleanup()
    assert not net.names() & {*links.owned_links(), *links.owned_netns()}
    for iid in net.attached:
        assert not os.path.exists(netns_path(netns_name(iid)))
        assert not links.netns_exists(iid)
    net.cleanup()  # missing parts are fine

    # A detach followed at once by an attach of the same id reuses the names cleanly.
    net.bridge()
    ns_a, ip_a = net.attach(0)
    links.detach_instance(net.instance(0))
    ns_a, ip_a = net.attach(0)
    assert _exchange(ns_a, ip_a, None) == net.gateway


def test_netns_calls_leave_the_thread_where_it_was(net: StackNet) -> None:
    def here() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    def fail() -> None:
        raise ZeroDivisionError

    own = here()
    with pytest.raises(NotFound):
        socket_in_netns("rf-does-not-exist-" + secrets.token_hex(4))
    assert here() == own

    net.bridge()
    ns_a, _ = net.attach(0)
    assert run_in_netns(ns_a, here) == os.stat(netns_path(ns_a)).st_ino != own
    assert here() == own
    with pytest.raises(ZeroDivisionError):
        run_in_netns(ns_a, fail)
    assert here() == own
