"""The peers rackfire's instance start is compared with: bare runc, LXC, podman and docker,
each starting the same busybox rootfs with the same command and a 32 MiB memory limit, each
with an IP on a network of its own.

Every peer has the same shape: `setup()` (untimed: images, networks, daemons), `start(i)`
(returns once container i runs and has its IP), `start_one(i)` / `start_many(n)` (timed
wrappers), `clear()` (removes the containers started so far, untimed), `teardown()` (removes
everything `setup` made; safe after a failed or partial setup) and `leftovers()`.

Invariants: everything a peer makes carries the workspace's prefix (`rfs<6 hex>`): container
names, bridges, netns, cgroup parents, dirs under /var/tmp/<prefix> and /run/<prefix>. What
the tools insist on putting elsewhere (podman's netns in /run/netns, the veths dockerd and
CNI name themselves, LXC's lock dir, host-wide dirs such as /run/containerd) is recorded and
checked by `leftovers()` or `HostPaths`. Daemons are stopped by pid. Nothing uses a shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute

from rackfire.model.instance import InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import Resources, RuntimeKind
from rackfire.net.nsenter import create_netns, remove_netns, socket_in_netns
from rackfire.runtime.oci import oci_config

PACKAGES = ("lxc", "podman", "docker.io", "busybox-static", "uidmap")
BUSYBOX = Path("/bin/busybox")  # busybox-static's: no shared libraries to carry along
COMMAND = ("/bin/sleep", "3600")
MEMORY = 32 * 1024 * 1024
CGROUP = Path("/sys/fs/cgroup")
DOCKER_CLI = "/usr/bin/docker"  # Debian's docker.io client, not whatever is on PATH
DOCKERD = "/usr/sbin/dockerd"


# -- installing and small helpers ------------------------------------------------------------


def sh(args: list[str], *, check: bool = True, timeout: float = 120,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that starts nothing long-lived (those would hold the pipes open)."""
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: "
                           f"{(proc.stderr.strip() or proc.stdout.strip())[-1500:]}")
    return proc


def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        status = sh(["dpkg-query", "-W", "-f", "${Status}", pkg], check=False).stdout
        if status.strip() != "install ok installed":
            missing.append(pkg)
    return missing


def ensure_installed() -> list[str]:
    """apt-get install what is missing of PACKAGES; what was installed."""
    missing = missing_packages()
    if not missing:
        return []
    print(f"   installing {' '.join(missing)} (apt-get, --no-install-recommends)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # docker.io and lxc ship services: their postinst must not start a system dockerd (with
    # docker0 and iptables rules) or lxc-net here. policy-rc.d 101 = "not allowed".
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if sh(install, check=False, timeout=1800, env=env).returncode != 0:
            sh(["apt-get", "update"], timeout=600, env=env)  # a fresh machine has no lists
            sh(install, timeout=1800, env=env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    return missing


def has_address(pid: int, ip: str) -> bool:
    """Whether the network namespace of `pid` holds `ip` as a local address."""
    try:
        lines = Path(f"/proc/{pid}/net/fib_trie").read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() == f"|-- {ip}" and "host LOCAL" in lines[k + 1]
               for k, line in enumerate(lines[:-1]))


def concurrently(fn: Callable[[int], None], n: int) -> float:
    """fn(0..n-1) on n threads released at once; seconds from the release to the last one
    done. The threads exist before the clock starts; the first error is raised."""
    go = threading.Event()
    done = [0.0] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        go.wait()
        try:
            fn(i)
        except BaseException as e:  # reported below, after every thread has finished
            errors.append(e)
        finally:
            done[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} failed; first: {errors[0]}") from errors[0]
    return max(done) - t0


# -- the host: links, mounts, cgroups, processes ---------------------------------------------


def make_bridge(name: str, gateway: str, prefix: int) -> None:
    with IPRoute(groups=0) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        (index,) = ipr.link_lookup(ifname=name)
        ipr.addr("add", index=index, address=gateway, prefixlen=prefix)
        ipr.link("set", index=index, state="up")


def delete_link(name: str) -> None:
    with IPRoute(groups=0) as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


def link_names() -> dict[int, tuple[str, int | None]]:
    """index -> (name, master index) of every link of the host namespace."""
    with IPRoute(groups=0) as ipr:
        return {int(m["index"]): (str(m.get("IFLA_IFNAME")), m.get("IFLA_MASTER"))
                for m in ipr.get_links()}


def bridge_ports(bridge: str) -> list[str]:
    links = link_names()
    index = next((i for i, (name, _) in links.items() if name == bridge), None)
    return [] if index is None else sorted(n for n, m in links.values() if m == index)


def mounts_under(prefix: str) -> list[str]:
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [t for t in targets if t.startswith(prefix)]


def unmount_under(prefix: str) -> None:
    for target in sorted(mounts_under(prefix), key=len, reverse=True):
        subprocess.run(["umount", "-l", "--", target], capture_output=True, check=False)


def remove_cgroups(name: str) -> None:
    """rmdir /sys/fs/cgroup/<ctrl>/<name> and everything below it, deepest first; a cgroup
    that still holds a process stays (and shows up in the leftovers)."""
    for ctrl in CGROUP.iterdir():
        top = ctrl / name
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def cgroups_with(text: str) -> list[str]:
    found = []
    for ctrl in CGROUP.iterdir():
        for parent in (ctrl, ctrl / "rackfire"):
            if parent.is_dir():
                found += [f"{ctrl.name}/{p.relative_to(ctrl)}" for p in parent.iterdir()
                          if text in p.name and p.is_dir()]
    return found


def processes_with(text: str) -> list[str]:
    """Live processes whose command line mentions `text` (ours excepted)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in args and int(proc.name) != os.getpid():
                found.append(f"{proc.name} {args.strip()[:160]}")
    return found


def runc_ids(root: Path) -> list[str]:
    """Containers runc still knows under `root` (none if the root is gone)."""
    if not root.is_dir():
        return []
    return sh(["runc", "--root", str(root), "list", "-q"], check=False).stdout.split()


def alive(pid: int) -> bool:
    """Running, not a zombie (detached processes end up under PID 1, which reaps late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# Host-wide paths the peers create however they are configured (containerd's shim sockets,
# dockerd's plugin dir, podman's image blob cache and CNI result cache, LXC's pivot cgroups).
# What was not there before the run is removed after it, if only empty dirs and those caches.
GLOBAL_PATHS = ("/run/containerd", "/run/docker", "/run/runc", "/run/libpod", "/var/lib/cni",
                "/var/lib/containers", "/var/lib/docker", "/dev/shm/libpod_lock")
CACHE_FILES = ("blob-info-cache-v1.boltdb",)


class HostPaths:
    def __init__(self) -> None:
        self.before = {p for p in self._candidates() if p.exists()}

    @staticmethod
    def _candidates() -> list[Path]:
        return [Path(p) for p in GLOBAL_PATHS] + sorted(CGROUP.glob("*/lxc.pivot"))

    def new(self) -> list[Path]:
        return [p for p in self._candidates() if p.exists() and p not in self.before]

    def tidy(self) -> None:
        for path in self.new():
            if path.is_dir():
                for root, dirs, files in os.walk(path, topdown=False):
                    for f in files:
                        if f in CACHE_FILES:
                            (Path(root) / f).unlink()
                    for d in dirs:
                        with contextlib.suppress(OSError):
                            (Path(root) / d).rmdir()
                with contextlib.suppress(OSError):
                    path.rmdir()
            elif path.name == "libpod_lock":
                path.unlink()

    def leftovers(self) -> list[str]:
        return [f"host path {p} (made during the run)" for p in self.new()]


# -- the workspace and the busybox rootfs ----------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    prefix: str  # rfs<6 hex>

    @property
    def work(self) -> Path:
        return Path("/var/tmp") / self.prefix

    @property
    def run(self) -> Path:
        return Path("/run") / self.prefix

    @property
    def rootfs(self) -> Path:
        return self.work / "rootfs"

    @property
    def tarball(self) -> Path:
        return self.work / "busybox.tar"

    @property
    def hosts(self) -> Path:
        return self.work / "hosts"

    def create(self) -> None:
        self.work.mkdir(mode=0o700)
        self.run.mkdir(mode=0o700)
        self.hosts.write_text("127.0.0.1\tlocalhost\n")
        build_rootfs(self.rootfs)
        build_tarball(self.rootfs, self.tarball)

    def remove(self) -> None:
        unmount_under(f"{self.work}/")
        unmount_under(f"{self.run}/")
        for d in (self.work, self.run):
            if not mounts_under(f"{d}/"):
                shutil.rmtree(d, ignore_errors=True)


def build_rootfs(dest: Path) -> None:
    """/bin/busybox (static) with a symlink per applet, and the few files in /etc that
    container tools expect to find."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
              "run", "var"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in sh([str(BUSYBOX), "--list-full"]).stdout.split():
        link = dest / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/hostname": "busybox\n",
        "etc/resolv.conf": "",
    }
    for name, text in files.items():
        (dest / name).write_text(text)


def build_tarball(rootfs: Path, tar: Path) -> None:
    """An uncompressed tar of rootfs, owned by root, with relative member names."""
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for child in sorted(rootfs.iterdir()):
            t.add(child, arcname=child.name, filter=as_root)


# -- the peers -------------------------------------------------------------------------------


class Subject(Protocol):
    """What bench/start.py times: rackfire (there) and every peer (here)."""

    name: str

    def setup(self) -> None: ...
    def start_one(self, i: int = 0) -> float: ...
    def start_many(self, n: int) -> float: ...
    def clear(self) -> None: ...
    def teardown(self) -> None: ...
    def leftovers(self) -> list[str]: ...
    def describe(self) -> str: ...


class Peer(ABC):
    """The common part of the peers: timing, and which containers a clear removes."""

    name = ""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.started: list[int] = []  # indexes started (or tried) since the last clear
        self._lock = threading.Lock()

    def _track(self, i: int) -> None:
        with self._lock:
            self.started.append(i)

    def _cid(self, i: int) -> str:
        return f"{self.ws.prefix}-{self.name.replace(' ', '')}-{i}"

    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def start(self, i: int) -> None:
        """Start container i; return once it runs and has its IP."""

    @abstractmethod
    def clear(self) -> None: ...

    @abstractmethod
    def teardown(self) -> None: ...

    @abstractmethod
    def describe(self) -> str: ...

    def leftovers(self) -> list[str]:
        return []

    def start_one(self, i: int = 0) -> float:
        t0 = time.perf_counter()
        self.start(i)
        return time.perf_counter() - t0

    def start_many(self, n: int) -> float:
        return concurrently(self.start, n)


class BareRunc(Peer):
    """`runc run -d` of an OCI bundle: an overlay of the busybox dir, rackfire's own OCI
    config (same capabilities, masked paths, rlimits, 32 MiB memory+swap), and a netns made
    here with a veth on a bridge of its own (pyroute2)."""

    name = "bare runc"
    SUBNET, GATEWAY, PREFIX = "10.98.0", "10.98.0.1", 24

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.bridge = f"{ws.prefix}br"
        self.root = ws.run / "runc"
        self.base = ws.work / "runc"

    def setup(self) -> None:
        self.root.mkdir(mode=0o700)
        self.base.mkdir()
        make_bridge(self.bridge, self.GATEWAY, self.PREFIX)

    def _veth(self, i: int) -> str:
        return f"{self.ws.prefix}r{i}"

    def start(self, i: int) -> None:
        self._runc(i, "run", "--detach", "--bundle", str(self._bundle(i)))
        self._check(i)

    def start_warm(self) -> float:
        """`runc create` beforehand (untimed), then `runc start` timed to running with its
        IP: what a warm instance's start is measured against."""
        i = 0
        self._runc(i, "create", "--bundle", str(self._bundle(i)))
        t0 = time.perf_counter()
        self._runc(i, "start")
        self._check(i)
        return time.perf_counter() - t0

    def _bundle(self, i: int) -> Path:
        self._track(i)
        cid, ip = self._cid(i), f"{self.SUBNET}.{i + 2}"
        netns = self._attach(cid, self._veth(i), ip)
        bundle = self.base / cid
        for d in ("rootfs", "upper", "work"):
            (bundle / d).mkdir(parents=True)
        sh(["mount", "-t", "overlay", "-o", f"lowerdir={self.ws.rootfs},upperdir={bundle}/upper,"
            f"workdir={bundle}/work", "--", "overlay", str(bundle / "rootfs")])
        (bundle / "config.json").write_text(json.dumps(self._config(i, cid, ip, netns)))
        return bundle

    def _runc(self, i: int, *args: str) -> None:
        # Never a pipe: the container would inherit it and keep it open.
        with open(self.base / self._cid(i) / "runc.log", "ab") as log:
            subprocess.run(["runc", "--root", str(self.root), *args, "--", self._cid(i)],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
                           timeout=60)

    def _check(self, i: int) -> None:
        cid, ip = self._cid(i), f"{self.SUBNET}.{i + 2}"
        state = json.loads(sh(["runc", "--root", str(self.root), "state", "--", cid]).stdout)
        if state.get("status") != "running" or not has_address(int(state["pid"]), ip):
            raise RuntimeError(f"runc {cid}: {state.get('status')}, address {ip} not seen")

    def _attach(self, netns: str, veth: str, ip: str) -> str:
        path = create_netns(netns)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute(groups=0) as host:
                host.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0",
                                                                 "net_ns_fd": fd})
                (bridge,) = host.link_lookup(ifname=self.bridge)
                (index,) = host.link_lookup(ifname=veth)
                host.link("set", index=index, master=bridge, state="up")
        finally:
            os.close(fd)
        sock = socket_in_netns(path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        with IPRoute(use_socket=sock, groups=0) as inner:
            (lo,) = inner.link_lookup(ifname="lo")
            (eth,) = inner.link_lookup(ifname="eth0")
            inner.link("set", index=lo, state="up")
            inner.addr("add", index=eth, address=ip, prefixlen=self.PREFIX)
            inner.link("set", index=eth, state="up")
            inner.route("add", dst="0.0.0.0/0", gateway=self.GATEWAY)
        return path

    def _config(self, i: int, cid: str, ip: str, netns: str) -> dict[str, object]:
        net = NetworkConfig(stack=self.ws.prefix, subnet=f"{self.SUBNET}.0/24",
                            gateway=self.GATEWAY, prefix=self.PREFIX)
        req = InstanceRequest(
            key=InstanceKey(self.ws.prefix, "runc", i), action_id="", runtime=RuntimeKind.CONTAINER,
            image_digest="", command=COMMAND, env=(), resources=Resources(memory=MEMORY),
            files=(), ip=ip, network=net, spec_hash="", spec_fields=(), config_hash="")
        config = oci_config(req, (), self.ws.hosts, netns)
        config["hostname"] = cid
        config["linux"]["cgroupsPath"] = f"/{self.ws.prefix}/{cid}"
        return config

    def clear(self) -> None:
        for i in self.started:
            cid = self._cid(i)
            sh(["runc", "--root", str(self.root), "kill", "--", cid, "KILL"], check=False)
            sh(["runc", "--root", str(self.root), "delete", "--force", "--", cid], check=False)
            unmount_under(f"{self.base / cid}/")
            # The veth explicitly: dying with its netns it goes asynchronously, and the next
            # round's veth of the same name would find the name taken.
            delete_link(self._veth(i))
            remove_netns(cid)
            shutil.rmtree(self.base / cid, ignore_errors=True)
        self.started.clear()

    def teardown(self) -> None:
        ids = runc_ids(self.root)
        self.started = sorted({*self.started, *(int(c.rsplit("-", 1)[1]) for c in ids)})
        self.clear()
        delete_link(self.bridge)
        remove_cgroups(self.ws.prefix)

    def leftovers(self) -> list[str]:
        return [f"runc container {c}" for c in runc_ids(self.root)]

    def describe(self) -> str:
        return ("bare runc: per container, a netns made with setns/unshare and a veth on a "
                f"bridge of its own ({self.SUBNET}.0/24, pyroute2), eth0 with its IP and a "
                "default route, an overlay of the busybox dir (`mount`), rackfire's own OCI "
                "config (its capabilities, masked paths, nofile 4096, memory+swap 32 MiB), "
                "`runc run -d` (its own --root), then `runc state` and the address read from "
                "the container's /proc/PID/net/fib_trie; 50 at once on 50 threads")


LXC_CONFIG = """\
lxc.uts.name = {name}
lxc.rootfs.path = overlay:{lower}:{upper}
lxc.init.cmd = {command}
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.pty.max = 0
lxc.tty.max = 0
lxc.console.path = none
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.veth.pair = {veth}
lxc.net.0.flags = up
lxc.net.0.ipv4.address = {ip}/24
lxc.net.0.ipv4.gateway = {gateway}
lxc.cgroup.memory.limit_in_bytes = {memory}
lxc.cgroup.memory.memsw.limit_in_bytes = {memory}
lxc.apparmor.profile = unconfined
lxc.log.level = WARN
lxc.log.file = {log}
"""


class Lxc(Peer):
    """`lxc-start -d` of the busybox dir under an overlay, a veth on a bridge made here with
    a static IPv4, `sleep` as init."""

    name = "lxc"
    SUBNET, GATEWAY = "10.97.0", "10.97.0.1"

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.bridge = f"{ws.prefix}bl"
        self.path = ws.work / "lxc"
        # LXC keeps its locks in /run/lxc/lock/<lxcpath>, whatever -P says.
        self.locks = Path("/run/lxc/lock") / str(ws.work).lstrip("/")

    def setup(self) -> None:
        self.path.mkdir()
        make_bridge(self.bridge, self.GATEWAY, 24)

    def start(self, i: int) -> None:
        self._track(i)
        name, ip = self._cid(i), f"{self.SUBNET}.{i + 2}"
        d = self.path / name
        (d / "delta0").mkdir(parents=True)
        (d / "config").write_text(LXC_CONFIG.format(
            name=name, lower=self.ws.rootfs, upper=d / "delta0", command=" ".join(COMMAND),
            bridge=self.bridge, veth=f"{self.ws.prefix}l{i}", ip=ip, gateway=self.GATEWAY,
            memory=MEMORY, log=d / "lxc.log"))
        sh(["lxc-start", "-d", "-n", name, "-P", str(self.path)])
        out = sh(["lxc-info", "-s", "-p", "-H", "-n", name, "-P", str(self.path)]).stdout
        info = {k.strip(): v.strip() for k, _, v in
                (line.partition(":") for line in out.splitlines())}
        if info.get("State") != "RUNNING" or not has_address(int(info.get("PID", 0)), ip):
            raise RuntimeError(f"lxc {name}: {info}, address {ip} not seen")

    def clear(self) -> None:
        for i in self.started:
            name = self._cid(i)
            sh(["lxc-stop", "-k", "-n", name, "-P", str(self.path)], check=False)
            shutil.rmtree(self.path / name, ignore_errors=True)
        self.started.clear()

    def teardown(self) -> None:
        if self.path.is_dir():
            self.started = sorted({*self.started, *(int(p.name.rsplit("-", 1)[1])
                                                     for p in self.path.iterdir())})
        self.clear()
        delete_link(self.bridge)
        shutil.rmtree(self.locks, ignore_errors=True)

    def leftovers(self) -> list[str]:
        return [f"lxc lock dir {self.locks}"] if self.locks.exists() else []

    def describe(self) -> str:
        return ("lxc: `lxc-start -d` (own -P) of a config naming an overlay of the busybox dir, "
                f"a veth on a bridge made here ({self.SUBNET}.0/24) with a static IPv4 and "
                "gateway, `lxc.init.cmd` = sleep, memory+swap 32 MiB, the full default "
                "capability set and no masked /proc paths; then `lxc-info -s -p` and the "
                "address read from /proc/PID/net/fib_trie; 50 at once on 50 threads")


class Podman(Peer):
    """`podman run -d` of the imported tarball on a network of its own; everything podman
    keeps (storage, state, runc root, locks, events, network config) under the prefix."""

    name = "podman"
    SUBNET = "10.96.0.0/24"

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.home = ws.work / "podman"
        self.network = f"{ws.prefix}-net"
        self.bridge = f"{ws.prefix}bp"
        self.image = f"{ws.prefix}-bb"
        self.sandboxes: set[str] = set()  # podman's netns are /run/netns/netns-<uuid>
        self.runc_root = ws.run / "podman-runc"
        self.stale = 0  # containers `podman rm -f` forgot in runc (see clear)
        run = ws.run
        self.globals = [
            "--root", str(self.home / "root"), "--runroot", str(run / "podman"),
            "--tmpdir", str(run / "podman-tmp"), "--network-config-dir", str(self.home / "net"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc",
            "--runtime-flag", f"root={self.runc_root}", "--storage-driver", "overlay"]
        # File locks under --tmpdir, not the host-wide /dev/shm/libpod_lock that another
        # podman's state would share.
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.home / "containers.conf")}
        # Explicit rlimits (rackfire's nofile): podman asks for more than the machine's hard
        # limits by default, which fails where CAP_SYS_RESOURCE is missing.
        self.ulimits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(["podman", *self.globals, *args], env=self.env, check=check)

    def setup(self) -> None:
        (self.home / "net").mkdir(parents=True)
        (self.home / "containers.conf").write_text('[engine]\nlock_type = "file"\n')
        self.podman("import", "--", str(self.ws.tarball), self.image)
        self.podman("network", "create", "--internal", "--subnet", self.SUBNET, self.network)
        self._trim_network()

    def _trim_network(self) -> None:
        """podman 4.3 cannot name the bridge (no --interface-name) and its CNI config adds the
        portmap and firewall plugins (iptables) even to an internal network: name the bridge
        with the prefix, keep IPAM's state under it, and keep only bridge + tuning, so that,
        like dockerd with --iptables=false, it touches no firewall rules."""
        path = self.home / "net" / f"{self.network}.conflist"
        conf = json.loads(path.read_text())
        bridge = conf["plugins"][0]
        bridge["bridge"] = self.bridge
        bridge["ipam"]["dataDir"] = str(self.home / "ipam")
        conf["plugins"] = [p for p in conf["plugins"] if p["type"] in ("bridge", "tuning")]
        path.write_text(json.dumps(conf, indent=1))

    def start(self, i: int) -> None:
        self._track(i)
        name = self._cid(i)
        self.podman("run", "-d", "--name", name, "--network", self.network, "--memory", "32m",
                    "--memory-swap", "32m", "--cgroup-parent", f"/{self.ws.prefix}-podman",
                    *self.ulimits, "--", self.image, *COMMAND)
        fmt = ("{{.State.Running}} {{(index .NetworkSettings.Networks "
               + json.dumps(self.network) + ").IPAddress}} {{.NetworkSettings.SandboxKey}}")
        out = self.podman("inspect", "-f", fmt, "--", name).stdout.split()
        if len(out) == 3:
            self.sandboxes.add(out[2])
        if len(out) != 3 or out[0] != "true" or not out[1]:
            raise RuntimeError(f"podman {name}: inspect says {out}")

    def clear(self) -> None:
        if self.started:
            self.podman("rm", "-f", "-t", "0", "-i", "--",
                        *(self._cid(i) for i in self.started), check=False)
        self._delete_stale()
        self.started.clear()

    def _delete_stale(self) -> None:
        """After `podman rm -f` of many containers at once, a few stay in podman's runc root,
        stopped (podman's own record of them is gone): runc delete them."""
        for cid in runc_ids(self.runc_root):
            self.stale += 1
            sh(["runc", "--root", str(self.runc_root), "delete", "--force", "--", cid],
               check=False)

    def teardown(self) -> None:
        self.started.clear()
        if (self.home / "root").is_dir():
            self.podman("rm", "-a", "-f", "-t", "0", check=False)
            self.podman("network", "rm", "-f", self.network, check=False)
            self.podman("rmi", "-a", "-f", check=False)
        self._delete_stale()
        delete_link(self.bridge)
        remove_cgroups(f"{self.ws.prefix}-podman")

    def leftovers(self) -> list[str]:
        return ([f"podman netns {p}" for p in sorted(self.sandboxes) if os.path.exists(p)]
                + [f"podman's runc container {c}" for c in runc_ids(self.runc_root)])

    def describe(self) -> str:
        return ("podman: `podman import` of the tarball; `podman run -d` with runtime runc, "
                "cgroupfs, file events and file locks, its own --root/--runroot/--tmpdir and "
                f"runc root, on a network of its own (`network create --internal`, "
                f"{self.SUBNET}, CNI; bridge renamed with the prefix and the CNI chain cut to "
                "bridge + tuning, so no iptables rules, like docker here), --memory and "
                "--memory-swap 32m, nofile/nproc ulimits within the hard limits; then "
                "`podman inspect` for running + IP; timed from the first CLI call; 50 at once "
                "= 50 `podman run -d` on 50 threads; after each sample `podman rm -f -t 0` of "
                f"them all (it left {self.stale} containers stopped in its runc root over the "
                "run, deleted with `runc delete` before the next sample)")


class Docker(Peer):
    """`docker run -d` against a dockerd started here, on a bridge made here."""

    name = "docker"
    GATEWAY = "10.95.0.1"

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        self.home = ws.work / "docker"
        self.exec_root = ws.run / "docker"
        self.sock = ws.run / "docker.sock"
        self.bridge = f"{ws.prefix}bd"
        self.image = f"{ws.prefix}-bb:latest"
        self.cgroup = f"{ws.prefix}-docker"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.containerd: int | None = None
        self.env = {**os.environ, "DOCKER_CONFIG": str(self.home / "cli")}
        self.ports: list[str] = []

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh([DOCKER_CLI, "-H", f"unix://{self.sock}", *args], env=self.env, check=check)

    def setup(self) -> None:
        (self.home / "cli").mkdir(parents=True)
        (self.home / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json
        # dockerd refuses -b with --bip; given a bridge, it takes the gateway and subnet from
        # the bridge's address.
        make_bridge(self.bridge, self.GATEWAY, 24)
        with open(self.home / "dockerd.log", "ab") as log:
            self.daemon = subprocess.Popen(
                [DOCKERD, "--config-file", str(self.home / "daemon.json"),
                 "--data-root", str(self.home / "root"), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.ws.run / "docker.pid"), "-H", f"unix://{self.sock}",
                 "--bridge", self.bridge, "--iptables=false", "--ip6tables=false",
                 "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
                 "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent",
                 f"/{self.cgroup}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not start: "
                                   + (self.home / "dockerd.log").read_text()[-1500:])
            time.sleep(0.2)
        self.containerd = self._child("containerd")
        self.docker("import", "--", str(self.ws.tarball), self.image)

    def _child(self, comm: str) -> int | None:
        assert self.daemon is not None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                name, rest = stat.read_text().split(") ", 1)
                if name.endswith(f"({comm}") and int(rest.split()[1]) == self.daemon.pid:
                    return int(stat.parent.name)
        return None

    def start(self, i: int) -> None:
        self._track(i)
        name = self._cid(i)
        self.docker("run", "-d", "--name", name, "--memory", "32m", "--memory-swap", "32m",
                    "--", self.image, *COMMAND)
        out = self.docker("inspect", "-f", "{{.State.Running}} {{.NetworkSettings.IPAddress}}",
                          "--", name).stdout.split()
        if len(out) != 2 or out[0] != "true" or not out[1]:
            raise RuntimeError(f"docker {name}: inspect says {out}")

    def clear(self) -> None:
        if self.started:
            self.docker("rm", "-f", "--", *(self._cid(i) for i in self.started), check=False)
        self.started.clear()

    def teardown(self) -> None:
        self.started.clear()
        if self.daemon is not None and self.daemon.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", "--", *ids, check=False)
            self.docker("rmi", "-f", "--", self.image, check=False)
            self.ports = bridge_ports(self.bridge)  # dockerd's own veths, named veth<hex>
            self.daemon.terminate()
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(10)
        if self.containerd is not None:  # dockerd stops it; this is for when it did not
            stop_pid(self.containerd, timeout=10)
        delete_link(self.bridge)
        remove_cgroups(self.cgroup)

    def leftovers(self) -> list[str]:
        runc = self.exec_root / "runtime-runc" / "moby"
        return ([f"docker veth {p} (was on {self.bridge})" for p in self.ports]
                + [f"docker's runc container {c}" for c in runc_ids(runc)])

    def describe(self) -> str:
        return ("docker: a dockerd (Debian's docker.io) started here, stopped by pid at the "
                "end with its containerd: own --data-root, --exec-root, --pidfile, -H socket and "
                "config file, cgroupfs, --iptables=false, --ip-forward=false, --ip-masq=false, "
                f"the default bridge network on a bridge made here ({self.GATEWAY}/24 via "
                "--bridge: dockerd refuses --bip with -b); `docker import` of the tarball; "
                "`docker run -d` with --memory and --memory-swap 32m (Debian's /usr/bin/docker "
                "with -H), then `docker inspect` for running + IP; timed from the first CLI "
                "call; 50 at once = 50 `docker run -d` on 50 threads")


PEERS: tuple[type[Peer], ...] = (BareRunc, Lxc, Podman, Docker)
