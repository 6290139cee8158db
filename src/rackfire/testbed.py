"""A test bed of simulated hosts on this machine: one network namespace per host, all joined
by an underlay bridge in the root namespace, as a rack's hosts are by a switch. The
multi-host tests run on it, and `make demo-cluster` (`python -m rackfire.testbed up`) puts
a real agent in each host, joined to a server of its own.

    root netns   rfu<bed>          bridge, 172.31.X.254/24 (so a controller in the root netns
                 │                 reaches the hosts, and as this bed's claim on the /24)
                 ├─ rfu<bed>h1 ─── eth0 172.31.X.1/24 in netns rfh-<bed>-1
                 ├─ rfu<bed>h2 ─── eth0 172.31.X.2/24 in netns rfh-<bed>-2
                 └─ ...

Everything is named with `rfh-`/`rfu` and the bed's random id, so leftovers are findable and
two beds never share a name. X is chosen, under a lock, among the /24s of 172.31.0.0/16 that
no address or route of the root netns overlaps: the other beds' bridges hold theirs there.

Commands run inside a host with `nsenter --net` (see `run_in`). `destroy` removes everything
the bed made and is registered with atexit, so an interrupted run cleans up too (a SIGKILL
leaves leftovers; `leftovers()` finds them).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rackfire.errors import RackfireError
from rackfire.model.instance import InstanceKey
from rackfire.net.names import netns_name
from rackfire.net.nsenter import (
    create_netns,
    is_netns,
    netns_path,
    remove_netns,
    socket_in_netns,
)
from rackfire.runtime import mounts, runcstate

HOST_NETNS_PREFIX = "rfh-"
UNDERLAY_PREFIX = "rfu"
UNDERLAY_POOL = ipaddress.IPv4Network("172.31.0.0/16")
UNDERLAY_DEV = "eth0"  # each host's underlay device, inside its netns
_LOCK = "/run/rackfire-bed.lock"


@dataclass(frozen=True, slots=True)
class Host:
    name: str  # h1, h2, ...
    netns: str  # rfh-<bed>-<n>
    ip: str  # underlay address, on `UNDERLAY_DEV` inside `netns`
    underlay_dev: str = UNDERLAY_DEV


@contextlib.contextmanager
def _rtnl(netns: str | None = None) -> Iterator[Any]:
    sock = (None if netns is None else
            socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
    ipr = IPRoute(groups=0) if sock is None else IPRoute(use_socket=sock, groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _delete(ipr: Any, ifname: str) -> None:
    with contextlib.suppress(NetlinkError):  # missing is fine: destroy may run twice
        ipr.link("del", ifname=ifname)


@dataclass
class Bed:
    """N simulated hosts; `Bed(3).create()`, then `hosts`, `run_in`, `destroy`."""

    n: int
    mtu: int = 1500  # of the underlay, as a physical network's
    id: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: ipaddress.IPv4Network | None = None
    hosts: list[Host] = field(default_factory=list)
    tracked_netns: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return UNDERLAY_PREFIX + self.id

    @property
    def controller_ip(self) -> str:
        """The root netns's address on the underlay."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 254)

    def _uplink(self, n: int) -> str:
        return f"{self.bridge}h{n}"

    def create(self) -> Bed:
        assert 0 < self.n < 254
        atexit.register(self.destroy)  # before the first change: a crash half-way cleans up
        try:
            os.makedirs(os.path.dirname(_LOCK), exist_ok=True)
            with open(_LOCK, "a") as lock, _rtnl() as root:
                # Held from choosing the /24 until the bridge holds it: two beds made at the
                # same time then never pick the same one.
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.subnet = self._free_subnet(root)
                self._make(root)
        except BaseException:
            self.destroy()
            raise
        return self

    def _free_subnet(self, root: Any) -> ipaddress.IPv4Network:
        taken = [ipaddress.IPv4Network(f"{a.get('address')}/{a['prefixlen']}", strict=False)
                 for a in root.get_addr(family=socket.AF_INET)]
        for r in root.get_routes(family=socket.AF_INET, table=254):
            dst = r.get("RTA_DST")
            if dst is not None:
                taken.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
        for candidate in UNDERLAY_POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise RuntimeError(f"no free /24 left in {UNDERLAY_POOL} for a test bed")

    def _make(self, root: Any) -> None:
        assert self.subnet is not None
        root.link("add", ifname=self.bridge, kind="bridge", mtu=self.mtu)
        br = _index(root, self.bridge)
        root.addr("add", index=br, address=self.controller_ip, prefixlen=24)
        root.link("set", index=br, state="up")
        for n in range(1, self.n + 1):
            host = Host(name=f"h{n}", netns=f"{HOST_NETNS_PREFIX}{self.id}-{n}",
                        ip=str(self.subnet.network_address + n))
            create_netns(host.netns)
            self.hosts.append(host)
            fd = os.open(netns_path(host.netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                root.link("add", ifname=self._uplink(n), kind="veth", mtu=self.mtu,
                          peer={"ifname": UNDERLAY_DEV, "net_ns_fd": fd, "mtu": self.mtu})
            finally:
                os.close(fd)
            root.link("set", index=_index(root, self._uplink(n)), master=br, state="up")
            with _rtnl(host.netns) as inner:
                inner.link("set", index=_index(inner, "lo"), state="up")
                eth = _index(inner, UNDERLAY_DEV)
                inner.addr("add", index=eth, address=host.ip, prefixlen=24)
                inner.link("set", index=eth, state="up")

    def host(self, name: str) -> Host:
        (found,) = [h for h in self.hosts if name in (h.name, h.netns)]
        return found

    def run_in(self, host: Host | str, argv: Sequence[str], *, check: bool = True,
               timeout: float = 60, input: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the host's netns; stdout and stderr captured as text."""
        netns = self.host(host).netns if isinstance(host, str) else host.netns
        return run_in_netns(netns, argv, check=check, timeout=timeout, input=input)

    def spawn_in(self, host: Host | str, argv: Sequence[str], **popen: Any,
                 ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside the host (an agent, a server); `destroy` ends
        it, by its pid."""
        netns = self.host(host).netns if isinstance(host, str) else host.netns
        proc = subprocess.Popen(nsenter_argv(netns, argv), **popen)
        self.procs.append(proc)
        return proc

    def runc_root(self, host: Host | str) -> str:
        """The runc root of the host's agent: each its own (the hosts share one /run)."""
        name = host if isinstance(host, str) else host.name
        return f"/run/rackfire/runc-{self.id}-{self.host(name).name}"

    def start_agent(self, host: Host | str, join: str, token: str, data_dir: str,
                    labels: dict[str, str], *, interval: float = 0.5,
                    log: str | None = None) -> subprocess.Popen[bytes]:
        """A real `rackfire agent` inside the host, joining the server at `join` (an
        address on the underlay); `destroy` ends it. Started again after a kill, it carries
        on with the credential in its data dir."""
        h = self.host(host) if isinstance(host, str) else host
        out = open(log or os.devnull, "ab")  # noqa: SIM115 - handed to the child
        try:
            return self.spawn_in(h, [
                sys.executable, "-m", "rackfire", "agent", "--join", join, "--token", token,
                "--name", h.name, *[a for k, v in labels.items() for a in ("--label",
                                                                          f"{k}={v}")],
                "--data-dir", data_dir, "--interval", str(interval),
                "--runc-root", self.runc_root(h)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, start_new_session=True)
        finally:
            out.close()

    def track_netns(self, name: str) -> None:
        """Have `destroy` remove a namespace made by a test on a host, such as an instance's
        (/run/netns is one directory for every host: those names are global)."""
        if name not in self.tracked_netns:
            self.tracked_netns.append(name)

    def destroy(self) -> None:
        """Remove everything the bed made; missing parts are fine, so a second call is too."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()
        for name in self.tracked_netns:
            remove_netns(name)
        with _rtnl() as root:
            for n in range(1, self.n + 1):
                # The root-side veth first, explicitly: dying with its netns it would go
                # asynchronously, and a quick re-run could find its name still taken.
                _delete(root, self._uplink(n))
                remove_netns(f"{HOST_NETNS_PREFIX}{self.id}-{n}")
            _delete(root, self.bridge)
        atexit.unregister(self.destroy)

    def leftovers(self) -> list[str]:
        """This bed's links and namespaces still present (for a check after `destroy`)."""
        return [x for x in leftovers() if self.id in x]


def nsenter_argv(netns: str, argv: Sequence[str]) -> list[str]:
    # `nsenter --net` rather than `ip netns exec` or a setns in preexec_fn: `ip netns exec`
    # also enters a new mount namespace (slave of ours) to remount /sys, so a namespace the
    # command mounts under /run/netns (an instance's) would not be visible outside and would
    # vanish with it; preexec_fn is unsafe in a process with threads. nsenter switches only
    # the network namespace, so /run/netns, the venv and the test's files are shared as is.
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def run_in_netns(netns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside any named netns (a host's or an instance's)."""
    result = subprocess.run(nsenter_argv(netns, argv), capture_output=True, text=True,
                            timeout=timeout, input=input, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} in {netns} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def leftovers() -> list[str]:
    """Every test-bed link in the root netns and test-bed netns, from any bed."""
    with _rtnl() as root:
        names = [str(m.get("IFLA_IFNAME")) for m in root.get_links()]
    links = [f"link {n}" for n in names if n.startswith(UNDERLAY_PREFIX)]
    try:
        spaces = [f"netns {n}" for n in os.listdir("/run/netns")
                  if n.startswith(HOST_NETNS_PREFIX)]
    except FileNotFoundError:
        spaces = []
    return sorted(links + spaces)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(x) for x in struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_ping(netns: str, dst: str, *, size: int = 56, count: int = 3,
              timeout: float = 1.0) -> list[float | None]:
    """Echo requests of `size` payload bytes from `netns` with DF set (`ping -M do -s SIZE`),
    one at a time; the RTT of each in seconds, None for a lost one. (ping(8) is not installed
    here; a raw socket needs only root.) A packet over the path MTU raises OSError EMSGSIZE
    when this end knows the MTU, and is lost when a hop further on drops it."""
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ip_mtu_discover, ip_pmtudisc_do = 10, 2  # from <linux/in.h>; not in the socket module
    ident = secrets.randbits(16)
    rtts: list[float | None] = []
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, ip_mtu_discover, ip_pmtudisc_do)
        for seq in range(count):
            payload = secrets.token_bytes(size)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq)
            sent = time.perf_counter()
            sock.sendto(packet + payload, (dst, 0))
            rtts.append(_await_echo(sock, dst, ident, seq, sent, timeout))
    return rtts


def _await_echo(sock: socket.socket, dst: str, ident: int, seq: int, sent: float,
                timeout: float) -> float | None:
    while (left := sent + timeout - time.perf_counter()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, (src, _) = sock.recvfrom(65535)
        header = (data[0] & 0x0F) * 4  # a raw socket returns the IP header too
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[header:header + 8])
        if src == dst and kind == 0 and (rid, rseq) == (ident, seq):
            return time.perf_counter() - sent
    return None


# -- make demo-cluster -------------------------------------------------------------------------

STATE = "/run/rackfire/testbed.json"  # what `up` made, for `down`
CLUSTER_DATA = "/var/lib/rackfire-cluster"
CLUSTER_PORT = 7490
CGROUP_ROOT = "/sys/fs/cgroup"


def _cli(url: str, data_dir: str, *args: str,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RACKFIRE_URL": url, "RACKFIRE_DATA_DIR": data_dir}
    return subprocess.run([sys.executable, "-m", "rackfire", *args], env=env, text=True,
                          capture_output=True, check=True, timeout=timeout)


def up(n: int, *, data_dir: str = CLUSTER_DATA, port: int = CLUSTER_PORT,
       pool: str | None = None, state_path: str = STATE) -> None:
    """A bed of `n` hosts, a server listening on every address (port 7490, its own data
    dir) and an agent in each host (label rack=r<i>), left running until `down`."""
    if os.path.exists(state_path):
        raise SystemExit(f"a demo cluster is up already ({state_path}); "
                         "`make clean-cluster` first")
    data_dir = os.path.realpath(data_dir)  # as `down` compares it with command lines
    bed = Bed(n).create()
    atexit.unregister(bed.destroy)  # it outlives this process; `down` removes it
    url = f"http://127.0.0.1:{port}"
    os.makedirs(data_dir, exist_ok=True)
    args = [sys.executable, "-m", "rackfire", "server", "--data-dir", data_dir,
            "--listen", "0.0.0.0", "--port", str(port), "--no-local-host"]
    if pool:
        args += ["--subnet-pool", pool]
    with open(os.path.join(data_dir, "server.log"), "ab") as log:
        server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    state: dict[str, Any] = {"bed": bed.id, "n": n, "subnet": str(bed.subnet),
                             "hosts": [h.name for h in bed.hosts], "server": server.pid,
                             "agents": [], "data_dir": data_dir, "port": port}
    _save(state, state_path)
    for _ in range(100):
        if _cli_ok(url, data_dir, "hosts"):
            break
        time.sleep(0.3)
    token = _cli(url, data_dir, "token", "create", "--uses", str(n)).stdout.split()[0]
    join = f"http://{bed.controller_ip}:{port}"
    for i, h in enumerate(bed.hosts, 1):
        agent_dir = os.path.join(data_dir, f"agent-{h.name}")
        os.makedirs(agent_dir, exist_ok=True)
        proc = bed.start_agent(h, join, token, agent_dir, {"rack": f"r{i}"}, interval=2.0,
                               log=os.path.join(agent_dir, "agent.log"))
        state["agents"].append(proc.pid)
        _save(state, state_path)
    for _ in range(100):
        hosts = json.loads(_cli(url, data_dir, "hosts", "--json").stdout)
        if sum(1 for h in hosts if not h["local"] and h["state"] == "ready") == n:
            break
        time.sleep(0.3)
    print(_cli(url, data_dir, "hosts").stdout)
    print(f"{n} simulated hosts joined the server at {url}.\n"
          f"  export RACKFIRE_URL={url} RACKFIRE_DATA_DIR={data_dir}\n"
          "  rackfire hosts; rackfire capacity\n"
          "Stacks applied to it run on those hosts only (the server runs --no-local-host). "
          "`make clean-cluster` removes it all.")


def down(state_path: str = STATE) -> None:
    """Remove the demo cluster and everything its stacks made, in the order that leaves
    nothing behind: (1) every stack destroyed through the server, as a user would; (2) the
    agents and the server stopped; (3) on each host, whatever an instance or stack still
    has (a destroy that failed, an agent that had died) removed by the agent's own code;
    (4) any process of the bed still running (each host's HAProxies, an instance's), its
    runc state and cgroups; (5) the hosts' namespaces and links; (6) the data dirs and
    runc roots, unmounted before they are removed, never deleted through a mount.

    Exits non-zero, naming them, if some parts could not be removed; the state file is
    then kept, so `down` can be run again."""
    if not os.path.exists(state_path):
        print("no demo cluster is up")
        return
    with open(state_path) as f:
        state = json.load(f)
    data_dir = os.path.realpath(state.get("data_dir", CLUSTER_DATA))
    port = int(state.get("port", CLUSTER_PORT))
    bed = Bed(state["n"], id=state["bed"])
    bed.hosts = [Host(name, f"{HOST_NETNS_PREFIX}{state['bed']}-{i}", "")
                 for i, name in enumerate(state["hosts"], 1)]
    runc_roots = [bed.runc_root(h) for h in bed.hosts]
    problems: list[str] = []

    if _ours(state["server"], data_dir):
        # A failure here is not fatal: step (3) removes what a host's agent could not (its
        # agent had died, say); what is really left is judged at the end.
        for note in _destroy_stacks(f"http://127.0.0.1:{port}", data_dir):
            print(f"{note}\n  (removing it on the hosts instead)", file=sys.stderr)
    _terminate([p for p in [*state["agents"], state["server"]] if _ours(p, data_dir)])

    for h in bed.hosts:
        agent_dir = os.path.join(data_dir, f"agent-{h.name}")
        if os.path.isdir(agent_dir) and is_netns(netns_path(h.netns)):
            result = run_in_netns(h.netns, [sys.executable, "-m", "rackfire.testbed", "reap",
                                            agent_dir, h.name, bed.runc_root(h)],
                                  check=False, timeout=300)
            problems += [f"{h.name}: {line}" for line in result.stdout.splitlines()]
            if result.returncode != 0 and not result.stdout:
                problems.append(f"{h.name}: reap failed: {result.stderr.strip()[-500:]}")

    ids = _instance_ids(data_dir, runc_roots)
    spaces = [netns_path(h.netns) for h in bed.hosts]
    spaces += [netns_path(netns_name(i)) for i in ids]
    # Short grace: an instance's PID 1 without a handler never acts on SIGTERM.
    _terminate(_bed_processes(spaces, data_dir, runc_roots), timeout=2)
    for root in runc_roots:
        for cid in runcstate.containers(Path(root)):
            subprocess.run(["runc", "--root", root, "delete", "--force", cid],
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
    for i in ids:
        problems += _remove_cgroups(i)
        remove_netns(netns_name(i))
    bed.destroy()

    # Every mount under the dirs, deepest first (an overlay root before the disk under its
    # upper dir), then the disks of images under the data dir wherever else they are
    # mounted; only then the dirs' removal, which refuses while anything is mounted there.
    for d in [data_dir, *runc_roots]:
        for target in mounts.mounts_under(Path(d)):
            with contextlib.suppress(RackfireError):
                mounts.unmount(Path(target))
    try:
        mounts.release_under(Path(data_dir))
    except RackfireError as e:
        problems.append(str(e))
    for d in [data_dir, *runc_roots]:
        try:
            mounts.remove_tree(Path(d))
        except (RackfireError, OSError) as e:
            problems.append(str(e))
    problems += [f"left over: {x}" for x in bed.leftovers()]
    if problems:
        print("demo cluster not wholly removed:\n  " + "\n  ".join(problems), file=sys.stderr)
        print(f"(kept {state_path}: fix what is named above, then `make clean-cluster` again)",
              file=sys.stderr)
        raise SystemExit(1)
    os.unlink(state_path)
    print("demo cluster removed")


def _destroy_stacks(url: str, data_dir: str) -> list[str]:
    """Destroy every stack the server holds, each waited for (the CLI's own destroy)."""
    try:
        token = Path(data_dir, "token").read_text().strip()
        resp = httpx.get(url + "/v1/stacks", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        resp.raise_for_status()
        stacks = [str(s["name"]) for s in resp.json()]
    except (OSError, httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        return [f"could not list the server's stacks: {e}"]
    problems = []
    for name in stacks:
        print(f"destroying stack {name}", flush=True)
        try:
            _cli(url, data_dir, "destroy", name, "-y", timeout=300)
        except subprocess.CalledProcessError as e:
            said = [ln for ln in (e.stderr or e.stdout or "").splitlines() if ln.strip()]
            error = next((ln for ln in said if ln.startswith("error:")), said[-1] if said else "")
            problems.append(f"the server could not destroy {name}: {error.removeprefix('error: ')}")
        except subprocess.TimeoutExpired:
            problems.append(f"the server did not finish destroying {name} in 300 s")
    return problems


def reap(agent_dir: str, host: str, runc_root: str) -> list[str]:
    """Run inside a host's netns: destroy every instance the agent's data dir still holds
    and tear down every stack it has parts of, with the agent's own code (so its veths,
    bridges, netns, mounts, disks, cgroups and HAProxy go as a destroy removes them)."""
    from rackfire.agent.local import LocalAgent

    agent = LocalAgent(Path(agent_dir), host=host, runc_root=Path(runc_root))
    problems = []
    for f in agent.observe():
        try:
            agent.destroy(f.key, stop_timeout=2.0)
        except (RackfireError, OSError) as e:
            problems.append(f"destroy {f.key}: {e}")
    stacks = {p.name for sub in ("stacks", "volumes") if (Path(agent_dir) / sub).is_dir()
              for p in (Path(agent_dir) / sub).iterdir()}
    for stack in sorted(stacks):
        try:
            agent.teardown_stack(stack)
        except (RackfireError, OSError) as e:
            problems.append(f"teardown {stack}: {e}")
    return problems


def _ours(pid: int, data_dir: str) -> bool:
    """Whether `pid` is still the rackfire process `up` started (pids are reused)."""
    args = _cmdline(pid)
    return "rackfire" in args and any(_under(a, data_dir) for a in args)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _bed_processes(spaces: list[str], data_dir: str, runc_roots: list[str]) -> list[int]:
    """Processes of the bed: in one of its hosts' or instances' network namespaces, or a
    HAProxy or rackfire process named with a path of its data dir or runc roots (an
    HAProxy left by an earlier run, whose host's netns is gone, is still found so)."""
    inodes = set()
    for path in spaces:
        with contextlib.suppress(OSError):
            if is_netns(path):
                inodes.add(os.stat(path).st_ino)
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:  # never ourselves, nor what runs us
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            mine.add(pid)
            continue
        break
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        pid = int(entry)
        try:
            in_bed = os.stat(f"/proc/{pid}/ns/net").st_ino in inodes
        except OSError:
            continue
        args = _cmdline(pid)
        named = bool(args) and (os.path.basename(args[0]) == "haproxy"
                                or "rackfire" in " ".join(args)) and any(
            _under(a, d) for a in args for d in (data_dir, *runc_roots))
        if in_bed or named:
            found.append(pid)
    return found


def _terminate(pids: list[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL for what is left after `timeout`; waits until they are gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"  # a zombie is gone but for its reaper (PID 1 here, and late)
    return False


def _instance_ids(data_dir: str, runc_roots: list[str]) -> set[str]:
    """Every instance the bed's agents made that may have parts left: by its dir under an
    agent's data dir, its runc state, or a mount of it whose dir is already gone."""
    ids = set()
    for d in Path(data_dir).glob("agent-*/instances/*"):
        ids.add(d.name)
    for root in runc_roots:
        ids.update(runcstate.containers(Path(root)))
    for target in mounts.mounts_under(Path(data_dir)):
        rel = Path(target).relative_to(data_dir).parts
        if len(rel) > 2 and rel[1] == "instances":
            ids.add(rel[2])
    out = set()
    for i in ids:
        with contextlib.suppress(ValueError):
            out.add(InstanceKey.parse_id(i).id)
    return out


def _remove_cgroups(instance_id: str) -> list[str]:
    """The instance's cgroup (`/rackfire/<id>`) in every hierarchy, its processes killed."""
    problems = []
    for cg in [*Path(CGROUP_ROOT).glob(f"*/rackfire/{instance_id}"),
               Path(CGROUP_ROOT, "rackfire", instance_id)]:
        if not cg.is_dir():
            continue
        procs = cg / "cgroup.procs"
        with contextlib.suppress(OSError, ValueError):
            _terminate([int(p) for p in procs.read_text().split()], timeout=2)
        try:
            cg.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cgroup {cg}: {e.strerror}")
    return problems


def _cli_ok(url: str, data_dir: str, *args: str) -> bool:
    try:
        _cli(url, data_dir, *args)
    except subprocess.CalledProcessError:
        return False
    return True


def _save(state: dict[str, Any], path: str = STATE) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as f:
        json.dump(state, f)
    os.replace(path + ".new", path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rackfire.testbed")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--hosts", type=int, default=3)
    p_up.add_argument("--data-dir", default=CLUSTER_DATA)
    p_up.add_argument("--port", type=int, default=CLUSTER_PORT)
    p_up.add_argument("--subnet-pool", default=None, help="the server's stack networks")
    p_up.add_argument("--state", default=STATE, help="where `down` finds what was made")
    sub.add_parser("down").add_argument("--state", default=STATE)
    p_reap = sub.add_parser("reap", help="(run by `down` inside a host's netns)")
    for a in ("agent_dir", "host", "runc_root"):
        p_reap.add_argument(a)
    args = parser.parse_args()
    if args.cmd == "up":
        up(args.hosts, data_dir=os.path.realpath(args.data_dir), port=args.port,
           pool=args.subnet_pool, state_path=args.state)
    elif args.cmd == "down":
        down(args.state)
    else:
        for problem in reap(args.agent_dir, args.host, args.runc_root):
            print(problem)
