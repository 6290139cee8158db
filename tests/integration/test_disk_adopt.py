"""The agent side of a cold migration, between two agents on this machine (each its own data
dir and runc root): an instance's disks streamed from one to the other, adopted by a create
there with the same IP, its data intact, a gratuitous announce sent, and the source left
with nothing of it. Once in-process, once through the agents' HTTP API with RemoteAgent.

Both agents share this machine's network namespace, /run/netns and cgroups, where an
instance's names are global: the source copy is destroyed before the target one starts
(a real migration removes it only once the target is healthy, on another host)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn

from rackfire.agent.hostside import HostSide
from rackfire.agent.local import LocalAgent
from rackfire.agent.remote import RemoteAgent
from rackfire.agent.rpc import serve_agent
from rackfire.errors import ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState, NetworkConfig
from rackfire.model.stack import DataDisk, ImageSource, ImageSpec, Resources, RuntimeKind
from rackfire.net import garp, links, names
from rackfire.runtime import diskcopy
from rackfire.runtime.base import inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.testbed.bed import Bed, run_in_netns

from harness import free_port, host_traces, unique, wait_for

pytestmark = pytest.mark.root

MiB = 1 << 20
ETH_P_ALL = 0x0003


@dataclass
class Pair:
    a: LocalAgent
    b: LocalAgent
    stack: str
    net: NetworkConfig
    image_digest: str

    def request(self, action_id: str, *, adopt: bool = False) -> InstanceRequest:
        return InstanceRequest(
            key=InstanceKey(self.stack, "db", 0), action_id=action_id,
            runtime=RuntimeKind.CONTAINER, image_digest=self.image_digest,
            command=("sleep", "100000"), env=(),
            resources=Resources(memory=64 * MiB, disk=32 * MiB, pids=50),
            files=(("/etc/db.conf", "port 1\n"),),
            ip=str(ipaddress.ip_network(self.net.subnet).network_address + 7),
            network=self.net, spec_hash="s", spec_fields=(), config_hash="c",
            stop_timeout=1.0, data=DataDisk("/var/lib/db", 32 * MiB), adopt_disks=adopt)


def _agents(tmp_path: Path, subnet: int) -> Iterator[Pair]:
    run = uuid.uuid4().hex[:6]
    roots = [Path(f"/run/rackfire/runc-adopt-{run}-{h}") for h in "ab"]
    a, b = (LocalAgent(tmp_path / h, host=h, runtimes=(RuntimeKind.CONTAINER,), runc_root=r)
            for h, r in zip("ab", roots, strict=True))
    stack = unique("mv")
    net = NetworkConfig(stack, f"10.89.{subnet}.0/24", f"10.89.{subnet}.1", 24)
    try:
        digests = {agent.ensure_image(ImageSpec("base", ImageSource.HOST)).digest
                   for agent in (a, b)}
        assert len(digests) == 1  # the same image on both hosts, as the controller ensures
        for agent in (a, b):
            agent.ensure_network(net)
        yield Pair(a, b, stack, net, digests.pop())
    finally:
        for agent in (a, b):
            for f in agent.observe(stack):
                agent.destroy(f.key, 1.0)
        for agent in (a, b):
            agent.teardown_stack(stack)  # the bridge (shared here) and the data disks
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)
        assert host_traces(stack) == []


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    yield from _agents(tmp_path, 246)


def _sh(agent: LocalAgent, key: InstanceKey, script: str) -> str:
    handle = agent.exec(key, ["sh", "-c", script], tty=False)
    out, err = handle.proc.communicate(timeout=30)
    assert handle.proc.returncode == 0, err
    return out.decode()


def _leaves_nothing(agent: LocalAgent, key: InstanceKey) -> None:
    assert agent.observe(key.stack) == []
    assert not (agent.data_dir / "instances" / key.id).exists()
    assert not (agent.data_dir / "volumes" / key.stack / f"{key.name}.img").exists()
    assert not [p for p in (agent.data_dir / "incoming").glob(f"{key.id}*")]


class _Tap:
    """Frames arriving at the stack's bridge (broadcasts from its ports reach it)."""

    def __init__(self, stack: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((names.bridge_name(stack), 0))
        self.sock.settimeout(0.1)

    def announced(self, ip: str, wait: float = 2.0) -> set[str]:
        """Which kinds of announcement for `ip` arrived: "arp", "announce"."""
        mac, seen = bytes.fromhex(links.instance_mac(ip).replace(":", "")), set()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and len(seen) < 2:
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            (kind,) = struct.unpack("!H", frame[12:14])
            if frame[6:12] != mac:
                continue
            if kind == garp.ETH_P_ARP and frame[28:32] == frame[38:42] == socket.inet_aton(ip):
                seen.add("arp")
            if kind == garp.ETH_P_ANNOUNCE and f"announce {ip}".encode() in frame:
                seen.add("announce")
        return seen

    def close(self) -> None:
        self.sock.close()


def test_disks_move_between_agents_and_are_adopted(pair: Pair) -> None:
    a, b = pair.a, pair.b
    req = pair.request("c1")
    key = req.key
    a.create(req)
    _sh(a, key, "echo kept > /var/lib/db/data && echo mine > /rootfile")

    with pytest.raises(PrereqError, match="copied only while it is stopped"):
        a.send_disks(key)
    with pytest.raises(PrereqError, match="exists on host a"):
        a.discard_disks(key)
    with pytest.raises(NotFound, match=f"the disks of {key} have not arrived on host b"):
        b.create(pair.request("m1", adopt=True))
    assert b.observe(pair.stack) == []  # refused before anything was made

    a.stop(key, 1.0)
    b.receive_disks(key, a.send_disks(key))
    received = b.data_dir / "incoming" / key.id
    assert sorted(p.name for p in received.iterdir()) == ["data.img", "disk.img",
                                                          "manifest.json"]
    # Sparse on arrival too: a 4 GiB ceiling holding a fresh ext4.
    assert (received / "disk.img").stat().st_blocks * 512 < 64 * MiB
    a_disk = a.data_dir / "instances" / key.id / "disk.img"
    assert diskcopy.disk_digest(received / "disk.img") == diskcopy.disk_digest(a_disk)

    a.destroy(key, 1.0)
    tap = _Tap(pair.stack)
    try:
        moved = replace(req, action_id="m1", adopt_disks=True)
        b.create(moved)
        # Bridges learn where it is now: the ARP stays local (neigh_suppress on VXLAN
        # ports), the announce frame crosses to the other hosts.
        assert tap.announced(req.ip) == {"arp", "announce"}
    finally:
        tap.close()
    [f] = b.observe(pair.stack)
    assert (f.state, f.ip, f.host) == (InstanceState.RUNNING, req.ip, "b")
    assert _sh(b, key, "cat /var/lib/db/data /rootfile /etc/db.conf") == "kept\nmine\nport 1\n"
    assert not received.exists() and not (b.data_dir / "instances" / key.id / "adopting"
                                          ).exists()

    # A retried create of the same action is a no-op; the source's leftovers go.
    pid = f.pid
    b.create(moved)
    assert b.observe(pair.stack)[0].pid == pid
    a.discard_disks(key)
    _leaves_nothing(a, key)


def test_an_interrupted_adopt_carries_on_and_keeps_the_disks(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair.a, pair.b
    req = pair.request("c1")
    key = req.key
    a.create(req)
    _sh(a, key, "echo kept > /var/lib/db/data")
    a.stop(key, 1.0)
    b.receive_disks(key, a.send_disks(key))
    a.destroy(key, 1.0)

    ct = b.runtime(RuntimeKind.CONTAINER)
    start = ContainerRuntime._start

    def crash(self: ContainerRuntime, *args: object, **kw: object) -> None:
        raise ExecError("the agent died here")

    # The disks are moved, then the agent "dies" before the container starts.
    monkeypatch.setattr(ContainerRuntime, "_start", crash)
    moved = replace(req, action_id="m1", adopt_disks=True)
    with pytest.raises(ExecError, match="died"):
        b.create(moved)
    assert not (b.data_dir / "incoming" / key.id).exists()  # adopted already
    assert [f.state for f in b.observe(pair.stack)] == [InstanceState.PARTIAL]

    monkeypatch.setattr(ContainerRuntime, "_start", start)
    b.create(moved)  # the same action again: carries on, does not start clean
    assert _sh(b, key, "cat /var/lib/db/data") == "kept\n"
    # Another action with nothing received is refused, and changes nothing.
    with pytest.raises(NotFound, match="have not arrived"):
        ct.create(replace(moved, action_id="m2"), *inputs(
            ct, moved, b.store.by_digest(pair.image_digest),  # type: ignore[arg-type]
            b.data_dir / "stacks" / pair.stack / "hosts"))
    assert _sh(b, key, "cat /var/lib/db/data") == "kept\n"

    # Rolled back: the target's copy goes, with its disks.
    with pytest.raises(PrereqError, match="exists on host b"):
        b.discard_disks(key)
    b.destroy(key, 1.0)
    b.discard_disks(key)
    _leaves_nothing(b, key)
    a.discard_disks(key)
    _leaves_nothing(a, key)


# through the agents' HTTP API -------------------------------------------------------------

class _Served:
    """An agent's API (agent/rpc.py) on a loopback port, in a thread of this process."""

    def __init__(self, agent: LocalAgent, key: str) -> None:
        self.port = free_port()
        app = serve_agent(HostSide(agent), key)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the agent API to listen")
        self.remote = RemoteAgent(agent.host, f"127.0.0.1:{self.port}", key)

    def close(self) -> None:
        self.remote.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Pair, _Served, _Served]]:
    for pair in _agents(tmp_path, 245):
        sa, sb = _Served(pair.a, "key-a"), _Served(pair.b, "key-b")
        try:
            yield pair, sa, sb
        finally:
            sa.close()
            sb.close()


def test_disks_move_through_the_agent_api(served: tuple[Pair, _Served, _Served]) -> None:
    pair, sa, sb = served
    a, b = sa.remote, sb.remote
    req = pair.request("c1")
    key = req.key
    a.create(req)
    _sh(pair.a, key, "echo kept > /var/lib/db/data")

    # The agent's refusals come back as the same errors, before any byte.
    with pytest.raises(PrereqError, match="copied only while it is stopped"):
        a.send_disks(key)
    with pytest.raises(NotFound, match="has no disks on host b"):
        b.send_disks(key)
    with pytest.raises(PrereqError, match="invalid instance"):
        sa.remote._call.download("/agent/v1/disks/Bad.Name/db/0")
    wrong = RemoteAgent("a", f"127.0.0.1:{sa.port}", "not-the-key")
    with pytest.raises(RackfireError, match="wrong agent key"):
        wrong.send_disks(key)
    with pytest.raises(RackfireError, match="wrong agent key"):
        wrong.receive_disks(key, [b"x"])
    wrong.close()

    a.stop(key, 1.0)
    stream = b"".join(a.send_disks(key))
    # A corrupt copy is refused whole (the rest of it is read, so the answer arrives).
    i = stream.index(b"kept\n")
    corrupt = stream[:i] + b"KEPT\n" + stream[i + 5:]
    with pytest.raises(PrereqError, match="does not match its digest"):
        b.receive_disks(key, (corrupt[j:j + 65536] for j in range(0, len(corrupt), 65536)))
    assert not [p for p in (pair.b.data_dir / "incoming").glob(f"{key.id}*")]

    # A source that fails half-way: the target keeps nothing of it.
    def broken() -> Iterator[bytes]:
        yield stream[:len(stream) // 2]
        raise ConnectionError("the source went away")

    with pytest.raises(ConnectionError):
        b.receive_disks(key, broken())
    wait_for(lambda: not [p for p in (pair.b.data_dir / "incoming").glob(f"{key.id}*")], 10,
             "the target to drop the half-received copy")

    # The controller relays one agent's stream into the other's, never whole in memory.
    b.receive_disks(key, a.send_disks(key))
    a.destroy(key, 1.0)
    b.create(replace(req, action_id="m1", adopt_disks=True))
    [f] = b.observe(pair.stack)
    assert (f.state, f.ip, f.host) == (InstanceState.RUNNING, req.ip, "b")
    assert _sh(pair.b, key, "cat /var/lib/db/data") == "kept\n"
    a.discard_disks(key)
    _leaves_nothing(pair.a, key)


# the announce, across hosts ----------------------------------------------------------------

_HOST_SETUP = """
import json, sys
from rackfire.net import links, vxlan
a = json.loads(sys.argv[1])
links.ensure_bridge(a["stack"], a["gateway"], 24)
vxlan.ensure_vxlan(a["stack"], None, a["local"], "eth0")
vxlan.set_vxlan_peers(a["stack"], a["peers"])
if a["instance"]:
    links.attach_instance(a["instance"], a["stack"], a["ip"], 24, a["gateway"])
"""
_ANNOUNCE = "import sys; from rackfire.net.garp import announce; announce(*sys.argv[1:])"


def test_an_announce_teaches_the_other_hosts_where_the_instance_is() -> None:
    """The other hosts' bridges learn the instance's MAC behind its (new) host at once, not
    when their entries for the old host age out (300 s). Gratuitous ARP alone would not do:
    the VXLAN port's neigh_suppress keeps it on the host."""
    bed = Bed(2)
    stack, ip, gateway = unique("ann"), "10.86.9.7", "10.86.9.1"
    instance = f"{stack}.db.0"
    mac = links.instance_mac(ip)
    try:
        bed.create()
        h1, h2 = bed.hosts
        bed.track_netns(names.netns_name(instance))
        for host, inst in ((h1, instance), (h2, "")):
            bed.run_in(host, [sys.executable, "-c", _HOST_SETUP, json.dumps({
                "stack": stack, "gateway": gateway, "local": host.ip,
                "peers": [h.ip for h in bed.hosts], "instance": inst, "ip": ip})])

        def where() -> str | None:
            """The host h2's VXLAN device sends the instance's MAC to, if it knows one."""
            out = bed.run_in(h2, ["bridge", "fdb", "show", "dev", names.vxlan_name(stack)])
            for line in out.stdout.splitlines():
                if line.startswith(mac) and " dst " in line:
                    return line.split(" dst ")[1].split()[0]
            return None

        # Quiet: its IPv6 (DAD, router solicitations) would teach h2 too, now and then.
        run_in_netns(names.netns_name(instance),
                     ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
        time.sleep(0.3)
        for table in ("master", "self"):  # forget it, as if it had been learned elsewhere
            bed.run_in(h2, ["bridge", "fdb", "del", mac, "dev", names.vxlan_name(stack),
                            table], check=False)
        time.sleep(1.0)
        assert where() is None  # nothing else teaches it
        bed.run_in(h1, [sys.executable, "-c", _ANNOUNCE, names.netns_name(instance), "eth0",
                        ip])
        assert wait_for(where, 2, "h2 to learn the instance's MAC") == h1.ip
    finally:
        bed.destroy()
