"""The routing mesh's plumbing on the test bed (net/mesh.py): a host's own address in a stack
network that spans hosts reaches the stack's instances on other hosts, where the anycast
gateway cannot. As in test_bed_network.py, a host's part runs as this file inside the host's
netns (`driver`); the listeners are sockets made in the instances' namespaces."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rackfire.net import egress, links, mesh, vxlan
from rackfire.net.names import netns_name
from rackfire.net.nsenter import socket_in_netns
from rackfire.testbed.bed import Bed, Host

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (runs anyway when CI=true)"),
]

SUBNET = "10.95.7.0/24"  # only inside the bed's hosts
GATEWAY = "10.95.7.1"
PREFIX = 24


def driver(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One host's part, run inside the host's netns by `python this_file OP JSON`."""
    stack, out = args["stack"], {}
    if op == "up":
        links.ensure_bridge(stack, GATEWAY, PREFIX)
        vxlan.ensure_vxlan(stack, None, args["local_ip"], args["underlay_dev"])
        vxlan.set_vxlan_peers(stack, args["peers"])
        links.attach_instance(args["instance"], stack, args["ip"], PREFIX, GATEWAY)
        egress.ensure_egress(stack, SUBNET, ())  # as an agent has it: NAT, forward filter
    elif op == "mesh":
        mesh.ensure_mesh_port(stack, args["host_ip"], SUBNET)
    elif op == "probe":  # connect from `src` (the host's) to `dst`: what HAProxy does
        s = socket.socket()
        s.settimeout(args.get("timeout", 2.0))
        try:
            s.bind((args["src"], 0))
            s.connect((args["dst"], args["port"]))
            out["answer"] = s.recv(100).decode()
        except OSError as e:
            out["error"] = str(e)
        finally:
            s.close()
    elif op == "down":
        egress.remove_egress(stack)
        mesh.remove_mesh_port(stack)
        links.detach_instance(args["instance"])
        vxlan.remove_vxlan(stack)
        links.delete_bridge(stack)
    out["address"] = mesh.mesh_address(stack)
    out["rules"] = mesh.owned_mesh_rules()
    out["owned_links"] = links.owned_links()
    return out


class Mesh:
    def __init__(self, bed: Bed) -> None:
        self.bed, self.stack = bed, f"mesh{secrets.token_hex(4)}"

    def instance(self, n: int) -> str:
        return f"{self.stack}.web.{n}"

    def run(self, host: Host, op: str, **args: Any) -> dict[str, Any]:
        result = self.bed.run_in(host, [sys.executable, __file__, op,
                                        json.dumps({"stack": self.stack, **args})])
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def up(self, n: int) -> None:
        host = self.bed.hosts[n - 1]
        self.bed.track_netns(netns_name(self.instance(n)))
        self.run(host, "up", local_ip=host.ip, underlay_dev=host.underlay_dev,
                 peers=[h.ip for h in self.bed.hosts], instance=self.instance(n),
                 ip=f"10.95.7.{10 + n}")


@pytest.fixture
def net() -> Iterator[Mesh]:
    b = Bed(2)
    try:
        m = Mesh(b.create())
        yield m
        for n, host in enumerate(b.hosts, start=1):
            m.run(host, "down", instance=m.instance(n))
    finally:
        b.destroy()
    assert b.leftovers() == []


def _listen(ns: str, ip: str) -> tuple[int, threading.Thread]:
    """A listener in `ns` that answers each connection with its peer's address."""
    srv = socket_in_netns(ns)
    srv.settimeout(10)
    srv.bind((ip, 0))
    srv.listen(8)

    def serve() -> None:
        with srv:
            while True:
                try:
                    conn, peer = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(f"{peer[0]}".encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return int(srv.getsockname()[1]), t


def test_a_host_address_reaches_instances_on_other_hosts(net: Mesh) -> None:
    h1, h2 = net.bed.hosts
    net.up(1)
    net.up(2)
    port, _ = _listen(netns_name(net.instance(2)), "10.95.7.12")
    # From the gateway, the remote instance's reply goes to its own host's gateway: lost.
    blind = net.run(h1, "probe", src=GATEWAY, dst="10.95.7.12", port=port, timeout=1.0)
    assert "error" in blind, blind
    before = net.run(h1, "show")
    got = net.run(h1, "mesh", host_ip="10.95.7.254")
    assert got["address"] == "10.95.7.254"
    assert got["rules"] == [f"from 10.95.7.254 lookup {mesh.mesh_table(net.stack)}"]
    assert set(mesh.mesh_names(net.stack)) <= set(got["owned_links"])
    assert net.run(h1, "mesh", host_ip="10.95.7.254") == got  # converged: nothing new
    far = net.run(h1, "probe", src="10.95.7.254", dst="10.95.7.12", port=port)
    assert far.get("answer") == "10.95.7.254", far
    # the host's own instance too, and from the other host's address likewise
    port1, _ = _listen(netns_name(net.instance(1)), "10.95.7.11")
    near = net.run(h1, "probe", src="10.95.7.254", dst="10.95.7.11", port=port1)
    assert near.get("answer") == "10.95.7.254", near
    net.run(h2, "mesh", host_ip="10.95.7.253")
    back = net.run(h2, "probe", src="10.95.7.253", dst="10.95.7.11", port=port1)
    assert back.get("answer") == "10.95.7.253", back
    # a new address replaces the old one, rule and all; removal leaves nothing
    moved = net.run(h1, "mesh", host_ip="10.95.7.250")
    assert moved["address"] == "10.95.7.250" and len(moved["rules"]) == 1
    assert "10.95.7.250" in moved["rules"][0]
    down = net.run(h1, "down", instance=net.instance(1))
    assert down["rules"] == [] and down["address"] == ""
    assert not set(mesh.mesh_names(net.stack)) & set(down["owned_links"])
    assert not set(before["owned_links"]) & set(down["owned_links"])


if __name__ == "__main__":
    print(json.dumps(driver(sys.argv[1], json.loads(sys.argv[2]))))
