"""Egress through the host (net/egress.py): an instance reaches a network beyond its stack,
NATed to the host's address; a role with `egress: false` reaches only its stack and its
host; flipping it is live; the stack's nftables table is rewritten after a server restart
and gone after destroy.

"Outside" is a network namespace the test makes, joined to the host by a veth on the last
/30 of this suite's pool: no traffic leaves the machine. Its listener runs in this process
(a socket made inside that netns), so nothing is left running.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from rackfire.net import egress
from rackfire.net.nsenter import create_netns, netns_path, remove_netns, socket_in_netns

from harness import Server, host_traces, runc_exec, unique, wait_for, write_stack

pytestmark = pytest.mark.root

POOL = ipaddress.IPv4Network(os.environ.get("RACKFIRE_TEST_POOL", "10.89.0.0/16"))
LINK = list(POOL.subnets(new_prefix=30))[-1]  # far from the stacks' subnets, at the start
HOST_IP, OUTSIDE_IP = str(LINK.network_address + 1), str(LINK.network_address + 2)

STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]
    resources: {{memory: 64M, disk: 32M}}
  jail:
    image: base
    egress: {egress}
    command: ["sleep", "100000"]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
"""

# Prints what the listener answered (the address it saw us from), or the connect's errno.
CONNECT = ("import socket,sys\n"
           "try:\n"
           "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
           "    print(s.recv(64).decode().strip())\n"
           "except OSError as e:\n"
           "    print('error', e.errno)\n")


@dataclass
class Listener:
    """Answers each connection with the peer's address, on a thread, until closed."""

    sock: socket.socket
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, (peer, _) = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(f"{peer}\n".encode())

    def close(self) -> None:
        # shutdown wakes the accept; close alone would leave the thread blocked in it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@dataclass
class Outside:
    netns: str
    outside: Listener  # in the outside netns, on OUTSIDE_IP
    host: Listener  # on the host's own address on the link


def _listener(sock: socket.socket, ip: str) -> Listener:
    sock.bind((ip, 0))
    return Listener(sock)


@pytest.fixture
def outside() -> Iterator[Outside]:
    tag = secrets.token_hex(3)
    ns, veth = f"egt-{tag}", f"egt{tag}"
    create_netns(ns)
    listeners: list[Listener] = []
    try:
        with IPRoute() as ipr:
            fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname=veth, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": fd})
            finally:
                os.close(fd)
            (idx,) = ipr.link_lookup(ifname=veth)
            ipr.addr("add", index=idx, address=HOST_IP, prefixlen=LINK.prefixlen)
            ipr.link("set", index=idx, state="up")
        for argv in (["link", "set", "lo", "up"],
                     ["addr", "add", f"{OUTSIDE_IP}/{LINK.prefixlen}", "dev", "eth0"],
                     ["link", "set", "eth0", "up"],
                     # A way back to the whole pool, so that "nothing opens a connection
                     # into the stack" is the host's rule, not a missing route.
                     ["route", "add", str(POOL), "via", HOST_IP]):
            subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)
        listeners += [_listener(socket_in_netns(ns), OUTSIDE_IP), _listener(socket.socket(),
                                                                            HOST_IP)]
        yield Outside(ns, *listeners)
    finally:
        for listener in listeners:
            listener.close()
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=veth):
                ipr.link("del", ifname=veth)
        remove_netns(ns)


def connect(instance_id: str, ip: str, port: int) -> str:
    out = runc_exec(instance_id, "python3", "-c", CONNECT, ip, str(port))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def table(stack: str) -> dict[str, object]:
    out = subprocess.run(["nft", "-j", "list", "table", "inet", egress.table_name(stack)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {}
    items = json.loads(out.stdout)["nftables"]
    (no_egress,) = [i["set"] for i in items if i.get("set", {}).get("name") == "no_egress"]
    return {"no_egress": no_egress.get("elem", []),
            "rules": sum(1 for i in items if "rule" in i)}


def rows(server: Server, stack: str) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in server.ps(stack)}


def test_egress_is_nated_through_the_host_and_a_role_can_opt_out_live(
        server: Server, outside: Outside, tmp_path: Path) -> None:
    stack = unique("eg")
    f = write_stack(tmp_path, STACK.format(stack=stack, egress="false"))
    server.cli("apply", "-f", str(f), "-y")
    before = rows(server, stack)
    web, jail = f"{stack}.web.0", f"{stack}.jail.0"
    made = table(stack)
    assert made["rules"] == 6
    # jail-0's address, and its rollout surge's (reserved already), never web's.
    assert isinstance(made["no_egress"], list) and before["jail-0"]["ip"] in made["no_egress"]
    assert before["web-0"]["ip"] not in made["no_egress"]

    # Out through the host: the outside sees the host's address, not the instance's.
    assert connect(web, OUTSIDE_IP, outside.outside.port) == HOST_IP
    # Opted out: refused at once by the host (EHOSTUNREACH, not a 3 s timeout) ...
    assert connect(jail, OUTSIDE_IP, outside.outside.port) == "error 113"
    # ... but its host and its stack are still there, the host seeing it as itself.
    assert connect(jail, HOST_IP, outside.host.port) == before["jail-0"]["ip"]
    peer = runc_exec(jail, "python3", "-c", "import urllib.request as u;"
                     "print(u.urlopen('http://web-0:8000/', timeout=3).status)")
    assert peer.stdout.strip() == "200", peer.stderr

    # Nothing outside opens a connection into the stack, though it has a route there.
    with socket_in_netns(outside.netns) as s:
        s.settimeout(1)
        with pytest.raises(OSError):
            s.connect((str(before["web-0"]["ip"]), 8000))

    # egress: true again, live: the same instance, now out through the host.
    server.cli("apply", "-f", str(write_stack(tmp_path, STACK.format(
        stack=stack, egress="true"), "again.yaml")), "-y")
    wait_for(lambda: table(stack).get("no_egress") == [], 30, "the table to be rewritten")
    assert connect(jail, OUTSIDE_IP, outside.outside.port) == HOST_IP
    assert {n: r["pid"] for n, r in rows(server, stack).items()} == {
        n: r["pid"] for n, r in before.items()}

    server.cli("destroy", stack, "-y")
    assert table(stack) == {}
    assert host_traces(stack) == []


def test_a_restarted_server_rewrites_a_table_changed_behind_its_back(
        server: Server, outside: Outside, tmp_path: Path) -> None:
    stack = unique("er")
    f = write_stack(tmp_path, STACK.format(stack=stack, egress="false"))
    server.cli("apply", "-f", str(f), "-y")
    before = rows(server, stack)
    want = table(stack)
    server.cli("server", "stop")
    # Someone flushed the firewall meanwhile: no NAT, no opt-out.
    subprocess.run(["nft", "delete", "table", "inet", egress.table_name(stack)], check=True)
    server.start()
    wait_for(lambda: table(stack) == want, 30, "the table to be written again")
    assert connect(f"{stack}.jail.0", OUTSIDE_IP, outside.outside.port) == "error 113"
    assert connect(f"{stack}.web.0", OUTSIDE_IP, outside.outside.port) == HOST_IP
    assert {n: r["pid"] for n, r in rows(server, stack).items()} == {
        n: r["pid"] for n, r in before.items()}
    server.cli("destroy", stack, "-y")
    assert host_traces(stack) == []
