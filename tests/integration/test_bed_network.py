"""A stack network across three simulated hosts: VXLAN between the hosts' stack bridges.

Each host is a netns of the test bed (bed.py). What a host's agent would do is done by this
file run as a script inside the host's netns (`driver`), with rackfire.net, so the calls act
on the host's own network stack exactly as on a real host. Checks then run from the test
process: sockets made inside instance namespaces (instance namespaces are global names in
/run/netns, hence a unique stack per test). The stack subnet exists only inside the bed, so
every test can use the same one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rackfire.errors import PrereqError
from rackfire.net import links, vxlan
from rackfire.net.names import bridge_name, netns_name, stack_vni, veth_name, vxlan_name
from rackfire.net.nsenter import run_in_netns as call_in_netns
from rackfire.net.nsenter import socket_in_netns
from rackfire.testbed.bed import Bed, Host, run_in_netns
from rackfire.testbed.ping import icmp_ping

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (runs anyway when CI=true)"),
]

SUBNET = "10.86.5.0/24"
GATEWAY = "10.86.5.1"
PREFIX = 24


# ---------------------------------------------------------------- the driver, on a host

def driver(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One host's part, run inside the host's netns by `python this_file OP JSON`."""
    stack, out = args["stack"], {}
    t0 = time.perf_counter()
    if op == "up":
        # Every host's bridge gets the same gateway address (and the same MAC): an anycast
        # gateway, each instance's being its own host; see rackfire.net.vxlan.
        links.ensure_bridge(stack, GATEWAY, PREFIX)
        t1 = time.perf_counter()
        vxlan.ensure_vxlan(stack, None, args["local_ip"], args["underlay_dev"])
        vxlan.set_vxlan_peers(stack, args["peers"])
        t2 = time.perf_counter()
        links.attach_instance(args["instance"], stack, args["ip"], PREFIX, GATEWAY)
        t3 = time.perf_counter()
        out = {"bridge_s": t1 - t0, "vxlan_s": t2 - t1, "attach_s": t3 - t2,
               "mtu_matches": _instance_mtu_matches(args["instance"], stack)}
    elif op == "peers":
        vxlan.set_vxlan_peers(stack, args["peers"])
        out = {"vxlan_s": time.perf_counter() - t0}
    elif op == "show":
        pass
    elif op == "down":
        links.detach_instance(args["instance"])
        vxlan.remove_vxlan(stack)
        links.delete_bridge(stack)
    out["peers"] = vxlan.vxlan_peers(stack)
    out["owned_links"] = links.owned_links()
    return out


def _instance_mtu_matches(instance_id: str, stack: str) -> bool:
    """Both ends of the instance's veth have the bridge's MTU, as attach_instance makes
    them (at 1500, full-size frames would vanish at the VXLAN device)."""
    from pyroute2 import IPRoute

    host = IPRoute(groups=0)
    inner = IPRoute(use_socket=socket_in_netns(netns_name(instance_id), socket.AF_NETLINK,
                                               socket.SOCK_DGRAM, socket.NETLINK_ROUTE),
                    groups=0)
    try:
        (br,) = host.link("get", ifname=bridge_name(stack))
        mtu = int(br.get("IFLA_MTU"))
        return all(int(ipr.link("get", ifname=name)[0].get("IFLA_MTU")) == mtu
                   for ipr, name in ((host, veth_name(instance_id)), (inner, links.PEER_NAME)))
    finally:
        host.close()
        inner.close()


# ---------------------------------------------------------------- the test side

@dataclass
class StackOnBed:
    bed: Bed
    stack: str

    def instance(self, n: int) -> str:
        return f"{self.stack}.web.{n}"

    def ns(self, n: int) -> str:
        return netns_name(self.instance(n))

    def ip(self, n: int) -> str:
        return str(ipaddress.ip_network(SUBNET).network_address + 10 + n)

    def run(self, host: Host, op: str, **args: Any) -> dict[str, Any]:
        result = self.bed.run_in(host, [sys.executable, __file__, op,
                                        json.dumps({"stack": self.stack, **args})])
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def up(self, n: int) -> dict[str, Any]:
        """Host n (1-based) joins the stack network with instance n at .1n."""
        host = self.bed.hosts[n - 1]
        self.bed.track_netns(self.ns(n))
        return self.run(host, "up", local_ip=host.ip, underlay_dev=host.underlay_dev,
                        peers=[h.ip for h in self.bed.hosts], instance=self.instance(n),
                        ip=self.ip(n))

    def up_all(self) -> list[dict[str, Any]]:
        return [self.up(n) for n in range(1, len(self.bed.hosts) + 1)]


@pytest.fixture
def bed() -> Iterator[Bed]:
    b = Bed(3)
    try:
        yield b.create()
    finally:
        b.destroy()


@pytest.fixture
def net(bed: Bed) -> StackOnBed:
    return StackOnBed(bed, f"bednet{secrets.token_hex(4)}")


def _exchange(server_ns: str, server_ip: str, client_ns: str, *, nbytes: int = 4,
              timeout: float = 5) -> tuple[str, float]:
    """Send `nbytes` from a client in `client_ns` to a listener in `server_ns`, get them
    back as an acknowledgement of the count; the client's address and the seconds taken."""
    with socket_in_netns(server_ns) as srv:
        srv.settimeout(timeout)
        srv.bind((server_ip, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        got: list[int] = []

        def serve() -> None:
            try:
                conn, _ = srv.accept()
            except OSError:
                return  # the client failed (and says so); the listener timed out or closed
            with conn:
                total = 0
                while total < nbytes and (chunk := conn.recv(1 << 20)):
                    total += len(chunk)
                got.append(total)
                conn.sendall(total.to_bytes(8, "big"))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with socket_in_netns(client_ns) as client:
            client.settimeout(timeout)
            start = time.perf_counter()
            client.connect((server_ip, port))
            block = b"x" * min(nbytes, 1 << 20)
            left = nbytes
            while left:
                left -= client.send(block[:left])
            assert int.from_bytes(client.recv(8), "big") == nbytes
            elapsed = time.perf_counter() - start
            server.join(timeout)
            assert got == [nbytes]
            return str(client.getsockname()[0]), elapsed


def _answered(rtts: list[float | None]) -> int:
    return sum(r is not None for r in rtts)


def test_instances_reach_each_other_across_hosts(net: StackOnBed) -> None:
    results = net.up_all()
    assert all(r["mtu_matches"] for r in results), results  # attach_instance's own doing
    assert [r["peers"] for r in results] == [
        sorted((h.ip for h in net.bed.hosts if h != me), key=ipaddress.IPv4Address)
        for me in net.bed.hosts]

    # TCP across hosts, from the instance's own address, both ways.
    assert _exchange(net.ns(2), net.ip(2), net.ns(1))[0] == net.ip(1)
    assert _exchange(net.ns(3), net.ip(3), net.ns(1))[0] == net.ip(1)
    assert _exchange(net.ns(1), net.ip(1), net.ns(3))[0] == net.ip(3)

    # Each instance's gateway answers: its own host's bridge.
    for n in (1, 2, 3):
        assert _answered(icmp_ping(net.ns(n), GATEWAY, count=2)) == 2

    # MTU: 1450 inside. A 1400-byte ping crosses, so does one filling the MTU exactly
    # (1422 + 8 ICMP + 20 IP), and one byte more is refused at the instance, not lost.
    assert _answered(icmp_ping(net.ns(1), net.ip(3), size=1400)) == 3
    assert _answered(icmp_ping(net.ns(1), net.ip(3), size=1422)) == 3
    with pytest.raises(OSError, match="too long"):
        icmp_ping(net.ns(1), net.ip(3), size=1423, count=1)
    # Full-size TCP segments (MSS 1410) in bulk: a wrong MTU anywhere would stall this.
    nbytes = 64 << 20
    _, seconds = _exchange(net.ns(3), net.ip(3), net.ns(1), nbytes=nbytes, timeout=30)

    rtts = [r for r in icmp_ping(net.ns(1), net.ip(3), count=20) if r is not None]
    print(f"\nhost setup on h1: bridge {results[0]['bridge_s'] * 1e3:.1f} ms, "
          f"ensure_vxlan+peers {results[0]['vxlan_s'] * 1e3:.1f} ms, "
          f"attach {results[0]['attach_s'] * 1e3:.1f} ms, "
          f"instance MTU as the bridge's: {results[0]['mtu_matches']}; "
          f"RTT h1->h3 instance: median {sorted(rtts)[len(rtts) // 2] * 1e6:.0f} us; "
          f"TCP h1->h3: {nbytes * 8 / seconds / 1e9:.2f} Gbit/s")


def test_a_removed_peer_is_unreachable_and_comes_back(net: StackOnBed) -> None:
    net.up_all()
    h1, h2, h3 = net.bed.hosts
    assert _answered(icmp_ping(net.ns(1), net.ip(3))) == 3  # h1 has also learned h3's MACs

    # h1 leaves h3's peers, then h3 h1's: a VXLAN device takes frames from any host and
    # learns from them, so a one-sided removal would be undone by h3's next broadcast, and
    # h1 drops last to forget what h3 sent in between.
    assert net.run(h3, "peers", peers=[h2.ip])["peers"] == [h2.ip]
    assert net.run(h1, "peers", peers=[h2.ip])["peers"] == [h2.ip]
    # Gone at once, learned entries included (they would otherwise live 300 s).
    assert _answered(icmp_ping(net.ns(1), net.ip(3), count=2, timeout=0.5)) == 0
    with pytest.raises(OSError):
        _exchange(net.ns(3), net.ip(3), net.ns(1), timeout=1)
    assert _answered(icmp_ping(net.ns(1), net.ip(2))) == 3
    assert _answered(icmp_ping(net.ns(3), net.ip(2))) == 3

    assert net.run(h1, "peers", peers=[h2.ip, h3.ip])["peers"] == [h2.ip, h3.ip]
    assert net.run(h3, "peers", peers=[h1.ip, h2.ip])["peers"] == [h1.ip, h2.ip]
    assert _answered(icmp_ping(net.ns(1), net.ip(3))) == 3
    assert _exchange(net.ns(3), net.ip(3), net.ns(1))[0] == net.ip(1)


def _arp_targets_seen(host: Host, dev: str, action: Any, wait: float = 0.3) -> list[str]:
    """Target addresses of ARP frames that arrive on `dev` of `host` while `action` runs."""
    eth_p_all = 0x0003  # bridge ports' frames reach only ETH_P_ALL taps, before the bridge
    with socket_in_netns(host.netns, socket.AF_PACKET, socket.SOCK_RAW,
                         socket.htons(eth_p_all)) as tap:
        tap.bind((dev, 0))
        tap.settimeout(0.05)
        action()
        seen, deadline = [], time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                frame, (_, _, kind, *_) = tap.recvfrom(2048)
            except TimeoutError:
                continue
            if kind != socket.PACKET_OUTGOING and frame[12:14] == b"\x08\x06":
                seen.append(socket.inet_ntoa(frame[38:42]))
        return seen


def test_gateway_arp_stays_on_its_host(net: StackOnBed) -> None:
    net.up_all()
    h2 = net.bed.hosts[1]

    def resolve(ip: str) -> None:
        run_in_netns(net.ns(1), ["ip", "neigh", "flush", "all"])
        assert _answered(icmp_ping(net.ns(1), ip, count=1)) == 1

    # A broadcast request for another instance is replicated to the peers, as it must be;
    # one for the gateway is answered by the local bridge alone and never leaves the host.
    assert net.ip(3) in _arp_targets_seen(h2, vxlan_name(net.stack), lambda: resolve(net.ip(3)))
    assert GATEWAY not in _arp_targets_seen(h2, vxlan_name(net.stack), lambda: resolve(GATEWAY))


def _link_json(bed: Bed, host: Host, dev: str) -> dict[str, Any]:
    out = bed.run_in(host, ["ip", "-d", "-j", "link", "show", "dev", dev]).stdout
    (link,) = json.loads(out)
    assert isinstance(link, dict)
    return link


def test_ensure_vxlan_converges_and_refuses_before_changing(bed: Bed) -> None:
    # In-process this time: the test thread steps into h1's netns for each call.
    h1, h2, h3 = bed.hosts
    stack, other = f"bedvx{secrets.token_hex(4)}", f"bedvx{secrets.token_hex(4)}"
    name = vxlan_name(stack)

    def on_h1(fn: Any) -> Any:
        return call_in_netns(h1.netns, fn)

    def ensure(s: str = stack, vni: int | None = None, local: str = h1.ip) -> str:
        return str(on_h1(lambda: vxlan.ensure_vxlan(s, vni, local, h1.underlay_dev)))

    def peers(ips: list[str]) -> list[str]:
        on_h1(lambda: vxlan.set_vxlan_peers(stack, ips))
        return list(on_h1(lambda: vxlan.vxlan_peers(stack)))

    with pytest.raises(PrereqError, match="no bridge"):
        ensure()
    on_h1(lambda: links.ensure_bridge(stack, GATEWAY, PREFIX))
    on_h1(lambda: links.ensure_bridge(other, "10.86.6.1", PREFIX))
    with pytest.raises(PrereqError, match="not an address of eth0"):
        ensure(local="172.31.255.1")
    with pytest.raises(PrereqError, match="outside"):
        ensure(vni=0)

    assert ensure() == name
    link = _link_json(bed, h1, name)
    index = link["ifindex"]
    data, port = link["linkinfo"]["info_data"], link["linkinfo"]["info_slave_data"]
    assert (data["id"], data["local"], data["port"], data["learning"]) == (
        stack_vni(stack), h1.ip, 4789, True)
    assert (link["master"], link["mtu"], port["neigh_suppress"]) == (
        bridge_name(stack), 1450, True)
    assert "UP" in link["flags"]
    assert _link_json(bed, h1, bridge_name(stack))["mtu"] == 1450
    assert ensure() == name and _link_json(bed, h1, name)["ifindex"] == index

    # Peers: exactly the list, own address ignored, stale ones (e.g. a host gone) removed.
    assert peers([h1.ip, h3.ip, h2.ip, h2.ip]) == [h2.ip, h3.ip]
    bed.run_in(h1, ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", name,
                    "dst", "172.31.255.9"])
    assert peers([h2.ip, h3.ip]) == [h2.ip, h3.ip]
    assert peers([h3.ip]) == [h3.ip]
    assert peers([]) == []

    # Damage is repaired: in place when it can be, by replacement when it cannot.
    bed.run_in(h1, ["ip", "link", "set", name, "nomaster", "down", "mtu", "1300"])
    ensure()
    link = _link_json(bed, h1, name)
    assert (link["ifindex"], link["master"], link["mtu"]) == (index, bridge_name(stack), 1450)
    assert "UP" in link["flags"]
    bed.run_in(h1, ["ip", "link", "del", name])
    bed.run_in(h1, ["ip", "link", "add", name, "type", "vxlan", "id", "7", "dstport", "4789",
                    "local", h1.ip])
    ensure()
    assert _link_json(bed, h1, name)["linkinfo"]["info_data"]["id"] == stack_vni(stack)

    # A VNI another device holds is refused before anything is made.
    with pytest.raises(PrereqError, match=f"already used by {name}"):
        ensure(other, vni=stack_vni(stack))
    assert vxlan_name(other) not in on_h1(links.owned_links)

    on_h1(lambda: vxlan.remove_vxlan(stack))
    on_h1(lambda: vxlan.remove_vxlan(stack))  # missing is fine
    assert on_h1(lambda: vxlan.vxlan_peers(stack)) == []
    with pytest.raises(PrereqError, match="has no vxlan"):
        peers([h2.ip])
    assert name not in on_h1(links.owned_links)


def test_destroy_leaves_nothing(net: StackOnBed) -> None:
    net.up_all()
    ours = {bridge_name(net.stack), vxlan_name(net.stack)}
    for n, host in enumerate(net.bed.hosts, start=1):
        assert ours <= set(net.run(host, "show")["owned_links"])
        assert not ours & set(net.run(host, "down", instance=net.instance(n))["owned_links"])
        assert not os.path.exists(f"/run/netns/{net.ns(n)}")

    net.bed.destroy()
    root_links = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True,
                                text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True,
                            text=True).stdout
    for name in (net.bed.bridge, *ours, *(veth_name(net.instance(n)) for n in (1, 2, 3))):
        assert name not in root_links
    for name in (f"rfh-{net.bed.id}", f"rf-{net.stack}"):
        assert name not in spaces
    assert net.bed.leftovers() == []
    net.bed.destroy()  # a second time is fine


def test_two_beds_never_share_an_underlay() -> None:
    a, b = Bed(1), Bed(1)
    try:
        a.create()
        b.create()
        assert a.subnet is not None and b.subnet is not None
        assert not a.subnet.overlaps(b.subnet)
        assert {a.bridge, a.hosts[0].netns}.isdisjoint({b.bridge, b.hosts[0].netns})
    finally:
        a.destroy()
        b.destroy()
    assert a.leftovers() == b.leftovers() == []


if __name__ == "__main__":
    print(json.dumps(driver(sys.argv[1], json.loads(sys.argv[2]))))
