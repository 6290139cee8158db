"""The bed itself (the package's docstring draws it): a netns per simulated host, a veth from
each into the underlay bridge in the root netns, and commands run inside a host or any named
netns with `nsenter --net`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rackfire.agent import watchdog
from rackfire.net.names import NETNS_PREFIX, SCOPE_ENV
from rackfire.net.nsenter import (
    NETNS_DIR,
    create_netns,
    netns_path,
    remove_netns,
    socket_in_netns,
)

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
    agent_dirs: list[str] = field(default_factory=list)  # of the agents start_agent ran

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

    def netns_scope(self, host: Host | str) -> str:
        """The scope the host's agent names its instances' netns in (net/names.py): the
        hosts share one /run/netns."""
        name = host if isinstance(host, str) else host.name
        return f"{self.id}-{self.host(name).name}"

    def start_agent(self, host: Host | str, join: str, token: str, data_dir: str,
                    labels: dict[str, str], *, interval: float = 0.5,
                    log: str | None = None) -> subprocess.Popen[bytes]:
        """A real `rackfire agent` inside the host, joining the server at `join` (an
        address on the underlay); `destroy` ends it. Started again after a kill, it carries
        on with the credential in its data dir."""
        h = self.host(host) if isinstance(host, str) else host
        if data_dir not in self.agent_dirs:  # its watchdog outlives it: destroy stops it
            self.agent_dirs.append(data_dir)
        out = open(log or os.devnull, "ab")  # noqa: SIM115 - handed to the child
        try:
            return self.spawn_in(h, [
                sys.executable, "-m", "rackfire", "agent", "--join", join, "--token", token,
                "--name", h.name, *[a for k, v in labels.items() for a in ("--label",
                                                                          f"{k}={v}")],
                "--data-dir", data_dir, "--interval", str(interval),
                "--runc-root", self.runc_root(h)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, start_new_session=True,
                env={**os.environ, SCOPE_ENV: self.netns_scope(h)})
        finally:
            out.close()

    def kill_watchdog(self, data_dir: str) -> bool:
        """Stop the self-fencing watchdog of the agent with `data_dir` (a host's death, or
        teardown), by its pid file; whether one ran. Its agent starts one again."""
        return watchdog.stop(Path(data_dir))

    def kill_all(self, host: Host | str) -> list[int]:
        """SIGKILL every process left in the host's netns (what dies with a host: its agent,
        watchdog, published-port HAProxy), and return their pids. Instances are in netns
        of their own: runc kills those."""
        h = self.host(host) if isinstance(host, str) else host
        pids = pids_in_netns(h.netns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def cut(self, host: Host | str, up: bool = False) -> None:
        """Take the host's underlay link down (a partition, or part of a host's death);
        `up` brings it back."""
        name = host if isinstance(host, str) else host.name
        n = next(i for i, h in enumerate(self.hosts, 1) if h.name == name)
        with _rtnl() as root:
            root.link("set", index=_index(root, self._uplink(n)), state="up" if up else "down")

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
        for data_dir in self.agent_dirs:  # started detached by each agent, by its pid file
            self.kill_watchdog(data_dir)
        self.agent_dirs.clear()
        for h in self.hosts:  # a netns outlives its removal while a process is in it
            self.kill_all(h)
        for name in self.tracked_netns + self._scoped_netns():
            remove_netns(name)
        with _rtnl() as root:
            for n in range(1, self.n + 1):
                # The root-side veth first, explicitly: dying with its netns it would go
                # asynchronously, and a quick re-run could find its name still taken.
                _delete(root, self._uplink(n))
                remove_netns(f"{HOST_NETNS_PREFIX}{self.id}-{n}")
            _delete(root, self.bridge)
        atexit.unregister(self.destroy)

    def _scoped_netns(self) -> list[str]:
        """What the bed's agents named in their scopes and left (a host that died)."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(f"{NETNS_PREFIX}{self.id}-"))

    def leftovers(self) -> list[str]:
        """This bed's links and namespaces still present (for a check after `destroy`)."""
        return [x for x in leftovers() if self.id in x] + [
            f"netns {n}" for n in self._scoped_netns()]


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


def pids_in_netns(netns: str) -> list[int]:
    """The processes whose network namespace is `netns` (as `ip netns pids`)."""
    try:
        want = os.stat(netns_path(netns))
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a kernel thread
            continue
        if (ns.st_dev, ns.st_ino) == (want.st_dev, want.st_ino):
            out.append(int(entry))
    return out


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
