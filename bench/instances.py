#!/usr/bin/env python3
"""How long N idle instances take to come and go, and what they cost, next to bare runc and LXC.

    .venv/bin/python -m bench.instances [--count N] [--runs R] [--no-lxc] [--out FILE]

Needs root, runc, and (for the LXC peer) the `lxc` package. Everything it makes carries one
random prefix (`rfb<6 hex>`) and lives under its own data dir (/var/tmp/<prefix>), API port,
subnet pool (10.90.0.0/16, and 10.90.250.0/24 for the step timings), runc root
(/run/<prefix>) and cgroup parent (/<prefix>); all of it is removed at the end, and what is
left, if anything, is printed and recorded in the result file.

Each round r = 1..R, back to back so that machine noise hits every subject alike:

1. rackfire: a real server subprocess; `rackfire apply -f stack.yaml -y` timed from the CLI
   call until it returns (converged), then `rackfire destroy STACK -y`; per-instance create
   and destroy times from the server's SQLite `actions` table; server RSS; each instance's
   cgroup memory.
2. steps: rackfire's own ContainerRuntime (no server, one instance at a time) with its
   mounts/links/runc calls wrapped in timers, to see which part of a create or destroy costs
   what.
3. bare runc: the same image skeleton under an overlay, the same OCI config (rackfire's
   `oci_config`, with a fresh loopback-only netns instead of a veth), `runc run -d` one after
   another, then `runc delete --force`.
4. LXC: `lxc-start -d` of the same rootfs (overlay), command and memory limit, then
   `lxc-stop -k`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.peers import sh
from bench.rfserver import BenchServer
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import Resources, RuntimeKind
from rackfire.net import links, names
from rackfire.runtime import container as container_mod
from rackfire.runtime import mounts
from rackfire.runtime.base import inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.oci import oci_config

RESULTS = Path(__file__).resolve().parent / "results"
RACKFIRE_RUNC_ROOT = "/run/rackfire/runc"
CGROUP = Path("/sys/fs/cgroup")
MEMORY = 32 * 1024 * 1024
DISK = 64 * 1024 * 1024
COMMAND = ("sleep", "infinity")
POOL = "10.90.0.0/16"
STEP_SUBNET, STEP_GATEWAY = "10.90.250.0/24", "10.90.250.1"
SETTLE = 3.0  # seconds to let a converged fleet and the server go quiet before sampling
MEMINFO_KEYS = ("MemAvailable", "Slab", "SUnreclaim", "KernelStack", "PageTables", "Cached")

STACK_YAML = """\
stack: {stack}
images:
  base: {{from: host}}
roles:
  box:
    image: base
    count: {count}
    command: [sleep, infinity]
    resources: {{memory: 32M, disk: 64M}}
"""

# -- small helpers ----------------------------------------------------------------------------


run = sh  # a command that starts nothing long-lived


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "p90": percentile(values, 0.9), "n": len(values)}



def vm_rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def meminfo_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMINFO_KEYS:
            out[key] = int(value.split()[0])
    return out


def cgroup_memory(path: Path) -> dict[str, int] | None:
    """usage, kmem usage and a few memory.stat counters of one v1 memory cgroup, in bytes."""
    try:
        usage = int((path / "memory.usage_in_bytes").read_text())
        limit = int((path / "memory.limit_in_bytes").read_text())
        kmem = int((path / "memory.kmem.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (path / "memory.stat").read_text().splitlines())
    except (OSError, ValueError):
        return None
    return {"usage": usage, "kmem": kmem, "limit": limit, "rss": int(stat.get("rss", 0)),
            "cache": int(stat.get("cache", 0))}


def kernel_threads() -> int:
    """Children of kthreadd: each ext4 loop disk adds its own (jbd2, a workqueue rescuer)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == "2":
                count += 1
    return count


def mounts_under(prefix: str) -> list[str]:
    targets = [line.split()[4] for line in
               Path("/proc/self/mountinfo").read_text().splitlines()]
    return [t for t in targets if t.startswith(prefix)]


def unmount_all_under(prefix: str) -> None:
    for target in sorted(mounts_under(prefix), key=len, reverse=True):
        subprocess.run(["umount", "-l", "--", target], capture_output=True, check=False)


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_total = meminfo_kib_all().get("MemTotal", 0)
    cgtypes = {line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
               if line.split()[1].startswith("/sys/fs/cgroup")}
    cgroup_mode = ("v1 hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)"
                   if {"cgroup", "cgroup2"} <= cgtypes else
                   "v2 unified" if cgtypes == {"cgroup2"} else "v1")
    lxc = run(["lxc-start", "--version"], check=False) if shutil.which("lxc-start") else None
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_total_mib": mem_total // 1024,
        "kernel": platform.release(),
        "debian": Path("/etc/debian_version").read_text().strip(),
        "cgroup": cgroup_mode,
        "runc": run(["runc", "--version"]).stdout.splitlines()[0],
        "lxc": lxc.stdout.strip() if lxc and lxc.returncode == 0 else None,
        "python": platform.python_version(),
        "root_fs": run(["findmnt", "-no", "FSTYPE,SOURCE", "--target", "/var/tmp"],
                       check=False).stdout.strip(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def meminfo_kib_all() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# -- 1. rackfire through its CLI and a real server --------------------------------------------


class RackfireServer(BenchServer):
    """rackfire's own server, with what this benchmark reads of it."""

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = super().cli(*args, timeout=timeout)
        if proc.returncode != 0:  # a benchmark of a failing command measures nothing
            raise RuntimeError(f"rackfire {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def actions(self, stack: str) -> list[dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.data_dir / 'rackfire.db'}?mode=ro", uri=True)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT kind, instance, state, created, finished, error "
                              "FROM actions WHERE stack=? ORDER BY created", (stack,))
            return [dict(r) for r in rows]
        finally:
            db.close()

    def rss_idle(self, samples: int = 5) -> dict[str, int]:
        """The last of a few samples half a second apart (the server has nothing to do)."""
        rss: dict[str, int] = {}
        for _ in range(samples):
            time.sleep(0.5)
            rss = vm_rss_kib(self.pid)
        return rss


def new_server(data_dir: Path) -> RackfireServer:
    return RackfireServer(data_dir, POOL)


def rackfire_round(srv: RackfireServer, stack: str, count: int, work: Path) -> dict[str, Any]:
    stack_file = work / f"{stack}.yaml"
    stack_file.write_text(STACK_YAML.format(stack=stack, count=count))
    mem_before, kthreads_before = meminfo_kib(), kernel_threads()
    t0 = time.time()
    apply_s = timed(lambda: srv.cli("apply", "-f", str(stack_file), "-y"))
    rows = json.loads(srv.cli("ps", stack, "--json").stdout)
    running = [r for r in rows if r.get("state") == "running" and r.get("runtime") == "container"]
    if len(running) != count:
        raise RuntimeError(f"{stack}: expected {count} running containers, ps says {rows}")
    time.sleep(SETTLE)
    mem_after, kthreads_after = meminfo_kib(), kernel_threads()
    rss = vm_rss_kib(srv.pid)
    cgroups = {r["name"]: cgroup_memory(CGROUP / "memory" / "rackfire"
                                        / f"{stack}.{r['role']}.{r['index']}")
               for r in running}
    cli_ps_s = [timed(lambda: srv.cli("ps", stack, "--json")) for _ in range(3)]
    t1 = time.time()
    destroy_s = timed(lambda: srv.cli("destroy", stack, "-y"))
    left = host_traces(stack)
    actions = srv.actions(stack)
    creates = [a for a in actions if a["kind"] == "create" and a["created"] >= t0]
    destroys = [a for a in actions if a["kind"] == "destroy" and a["created"] >= t1]
    if any(a["state"] != "done" for a in creates + destroys):
        raise RuntimeError(f"{stack}: some actions failed: {actions}")
    return {
        "stack": stack,
        "apply_s": apply_s,
        "destroy_s": destroy_s,
        "cli_ps_s": statistics.median(cli_ps_s),
        "create_s": [a["finished"] - a["created"] for a in creates],
        "destroy_action_s": [a["finished"] - a["created"] for a in destroys],
        # The apply's timeline, from the CLI's start (t0): first create journalled, last done.
        "first_create_at_s": min(a["created"] for a in creates) - t0,
        "last_create_done_at_s": max(a["finished"] for a in creates) - t0,
        "first_destroy_at_s": min(a["created"] for a in destroys) - t1,
        "last_destroy_done_at_s": max(a["finished"] for a in destroys) - t1,
        "server_rss_kib": rss,
        "cgroup_memory": cgroups,
        "meminfo_delta_kib": {k: mem_after[k] - mem_before[k] for k in MEMINFO_KEYS},
        "kernel_threads_delta": kthreads_after - kthreads_before,
        "leftovers": left,
    }


def host_traces(stack: str) -> list[str]:
    """What on this host still carries the stack's name (empty after a clean destroy)."""
    found = [f"netns {n}" for n in links.owned_netns() if n.startswith(f"rf-{stack}.")]
    found += [f"link {n}" for n in links.owned_links() if n == names.bridge_name(stack)]
    found += [f"container {c}" for c in runc_ids(RACKFIRE_RUNC_ROOT) if c.startswith(f"{stack}.")]
    for ctrl in ("memory", "cpu", "pids", "cpuacct", "blkio", "devices", "freezer", "cpuset"):
        parent = CGROUP / ctrl / "rackfire"
        if parent.is_dir():
            found += [f"cgroup {ctrl}/{p.name}" for p in parent.iterdir()
                      if p.is_dir() and p.name.startswith(f"{stack}.")]
    found += [f"mount {m}" for m in mounts_under("/") if f"/{stack}." in m]
    loops = run(["losetup", "-a"], check=False).stdout
    found += [f"loop {line}" for line in loops.splitlines() if f"/{stack}." in line]
    return found


def runc_ids(root: str) -> list[str]:
    proc = run(["runc", "--root", root, "list", "--format", "json"], check=False)
    return [c["id"] for c in (json.loads(proc.stdout or "null") or [])]


# -- 2. the steps of one create/destroy, through rackfire's own runtime ------------------------


class StepTimer:
    """Wraps the module functions ContainerRuntime calls, and sums their times per label."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: Callable[..., str]) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[label(*args, **kwargs)] += time.perf_counter() - t

        setattr(owner, attr, wrapper)
        self._undo.append(lambda: setattr(owner, attr, original))

    def take(self) -> dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _runc_label(_self: Any, *args: str, **_kw: Any) -> str:
    return f"runc {args[0]}"


def _umount_label(target: Path) -> str:
    return "umount overlay" if target.name == "rootfs" else "umount disk (frees loop)"


def step_round(prefix: str, count: int, image: ImageInfo, work: Path,
               runc_root: Path) -> dict[str, Any]:
    stack = f"{prefix}s"
    base = work / "steps"
    hosts = work / "hosts"
    rt = ContainerRuntime(base, host="bench", runc_root=runc_root)
    net = NetworkConfig(stack=stack, subnet=STEP_SUBNET, gateway=STEP_GATEWAY, prefix=24)
    links.ensure_bridge(stack, STEP_GATEWAY, 24)
    timer = StepTimer()
    timer.wrap(mounts, "make_disk", lambda *a, **k: "truncate + mkfs.ext4")
    timer.wrap(mounts, "mount_disk", lambda *a, **k: "mount -o loop (disk)")
    timer.wrap(mounts, "mount_overlay", lambda *a, **k: "mount overlay")
    timer.wrap(mounts, "unmount", lambda target, *a, **k: _umount_label(target))
    timer.wrap(container_mod, "write_config_layer", lambda *a, **k: "config layer")
    timer.wrap(links, "attach_instance", lambda *a, **k: "netns + veth (pyroute2)")
    timer.wrap(links, "detach_instance", lambda *a, **k: "delete veth + netns")
    timer.wrap(ContainerRuntime, "_start", lambda *a, **k: "_start")
    timer.wrap(ContainerRuntime, "_stop",
               lambda *a, **k: "stop (TERM; KILL at once if PID 1 cannot catch it; delete)")
    timer.wrap(ContainerRuntime, "_runc", _runc_label)
    creates: list[dict[str, float]] = []
    destroys: list[dict[str, float]] = []
    keys = [InstanceKey(stack, "box", i) for i in range(count)]
    try:
        for i, key in enumerate(keys):
            req = _request(key, f"10.90.250.{i + 2}", net, image)
            total = timed(lambda req=req: rt.create(  # type: ignore[misc]
                req, *inputs(rt, req, image, hosts)))
            steps = timer.take()
            # _start = mount overlay + runc delete (a stopped leftover) + config.json + runc run
            start = steps.pop("_start", 0.0)
            steps["config.json + runc run -d"] = (
                start - steps.get("mount overlay", 0.0) - steps.get("runc delete", 0.0))
            steps["other (meta.json, dirs)"] = total - sum(steps.values())
            steps["total"] = total
            creates.append(steps)
        time.sleep(1.0)
        memory = {k.id: cgroup_memory(CGROUP / "memory" / "rackfire" / k.id) for k in keys}
        for key in keys:
            total = timed(lambda key=key: rt.destroy(key))  # type: ignore[misc]
            steps = timer.take()
            # _stop's own runc calls (state, kill, delete) are inside its time already.
            for label in [s for s in steps if s.startswith("runc ")]:
                del steps[label]
            steps["other (rmtree)"] = total - sum(steps.values())
            steps["total"] = total
            destroys.append(steps)
    finally:
        timer.restore()
        for key in keys:
            with contextlib.suppress(Exception):
                rt.destroy(key)
        links.delete_bridge(stack)
    return {"create": creates, "destroy": destroys, "cgroup_memory": memory}


def _request(key: InstanceKey, ip: str, net: NetworkConfig, image: ImageInfo) -> InstanceRequest:
    return InstanceRequest(
        key=key, action_id="", runtime=RuntimeKind.CONTAINER, image_digest=image.digest,
        command=COMMAND, env=(), resources=Resources(memory=MEMORY, disk=DISK), files=(),
        ip=ip, network=net, spec_hash="bench", spec_fields=(), config_hash="bench")


# -- 3. bare runc ----------------------------------------------------------------------------


def runc_round(prefix: str, count: int, image: ImageInfo, work: Path,
               runc_root: Path) -> dict[str, Any]:
    """`runc run -d` of rackfire's own OCI config over an overlay of the same skeleton; the
    upper dir is on the host fs (no per-container ext4 disk) and the netns is runc's own."""
    hosts = work / "hosts"
    ids = [f"{prefix}-runc-{i}" for i in range(count)]
    net = NetworkConfig(stack=prefix, subnet=STEP_SUBNET, gateway=STEP_GATEWAY, prefix=24)
    bundles = {}
    for i, cid in enumerate(ids):
        b = work / "runc" / cid
        (b / "rootfs").mkdir(parents=True)
        config = oci_config(_request(InstanceKey(prefix, "runc", i), f"10.90.250.{i + 2}", net,
                                     image), image.host_binds, hosts, "")
        config["hostname"] = cid
        config["linux"]["cgroupsPath"] = f"/{prefix}/{cid}"
        config["linux"]["namespaces"] = [
            {"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
        (b / "config.json").write_text(json.dumps(config))
        bundles[cid] = b
    start_s, run_s, delete_s = [], [], []
    try:
        for cid, b in bundles.items():
            t = time.perf_counter()
            mounts.mount_overlay(b / "rootfs", [image.rootfs], b / "upper", b / "work")
            t_run = time.perf_counter()
            with open(b / "console.log", "ab") as log:  # never a pipe (see container.py)
                subprocess.run(["runc", "--root", str(runc_root), "run", "--detach",
                                "--bundle", str(b), "--", cid],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)
            end = time.perf_counter()
            start_s.append(end - t)
            run_s.append(end - t_run)
        states = {c: _runc_status(runc_root, c) for c in ids}
        if set(states.values()) != {"running"}:
            raise RuntimeError(f"bare runc: not all running: {states}")
        time.sleep(1.0)
        memory = {c: cgroup_memory(CGROUP / "memory" / prefix / c) for c in ids}
        for cid, b in bundles.items():
            t = time.perf_counter()
            run(["runc", "--root", str(runc_root), "delete", "--force", cid])
            mounts.unmount(b / "rootfs")
            delete_s.append(time.perf_counter() - t)
    finally:
        for cid, b in bundles.items():
            run(["runc", "--root", str(runc_root), "delete", "--force", cid], check=False)
            with contextlib.suppress(Exception):
                mounts.unmount(b / "rootfs")
            shutil.rmtree(b, ignore_errors=True)
    return {"start_s": start_s, "runc_run_s": run_s, "delete_s": delete_s,
            "start_all_s": sum(start_s), "delete_all_s": sum(delete_s), "cgroup_memory": memory}


def _runc_status(root: Path, cid: str) -> str:
    proc = run(["runc", "--root", str(root), "state", cid], check=False)
    return str(json.loads(proc.stdout).get("status")) if proc.returncode == 0 else "absent"


# -- 4. LXC ----------------------------------------------------------------------------------

LXC_CONFIG = """\
lxc.uts.name = {name}
lxc.rootfs.path = overlay:{lower}:{upper}
lxc.init.cmd = /usr/bin/sleep infinity
lxc.mount.auto = proc:mixed sys:ro
lxc.mount.entry = /usr usr none bind,ro,nosuid,nodev 0 0
lxc.mount.entry = {hosts} etc/hosts none bind,ro,nosuid,nodev,noexec 0 0
lxc.autodev = 1
lxc.pty.max = 0
lxc.tty.max = 0
lxc.console.path = none
lxc.net.0.type = empty
lxc.cgroup.memory.limit_in_bytes = {memory}
lxc.cgroup.memory.memsw.limit_in_bytes = {memory}
lxc.apparmor.profile = unconfined
lxc.log.level = WARN
lxc.log.file = {log}
"""


def lxc_round(prefix: str, count: int, image: ImageInfo, work: Path) -> dict[str, Any]:
    lxcpath = work / "lxc"
    hosts = work / "hosts"
    names_ = [f"{prefix}-lxc-{i}" for i in range(count)]
    for n in names_:
        d = lxcpath / n
        (d / "delta0").mkdir(parents=True)
        (d / "config").write_text(LXC_CONFIG.format(
            name=n, lower=image.rootfs, upper=d / "delta0", hosts=hosts, memory=MEMORY,
            log=d / "lxc.log"))
    start_s, stop_s = [], []
    try:
        for n in names_:
            start_s.append(timed(lambda n=n: run(  # type: ignore[misc]
                ["lxc-start", "-d", "-n", n, "-P", str(lxcpath)])))
        states = {n: _lxc_state(lxcpath, n) for n in names_}
        if set(states.values()) != {"RUNNING"}:
            raise RuntimeError(f"lxc: not all running: {states}")
        time.sleep(1.0)
        memory = {n: _lxc_cgroup_memory(n) for n in names_}
        for n in names_:
            stop_s.append(timed(lambda n=n: run(  # type: ignore[misc]
                ["lxc-stop", "-k", "-n", n, "-P", str(lxcpath)])))
    finally:
        for n in names_:
            if _lxc_state(lxcpath, n) not in ("STOPPED", "absent"):
                run(["lxc-stop", "-k", "-n", n, "-P", str(lxcpath)], check=False)
        unmount_all_under(str(lxcpath) + "/")
        shutil.rmtree(lxcpath, ignore_errors=True)
    return {"start_s": start_s, "stop_s": stop_s, "start_all_s": sum(start_s),
            "stop_all_s": sum(stop_s), "cgroup_memory": memory}


def _lxc_state(lxcpath: Path, name: str) -> str:
    proc = run(["lxc-info", "-s", "-H", "-n", name, "-P", str(lxcpath)], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def _lxc_cgroup_memory(name: str) -> dict[str, int] | None:
    for path in (CGROUP / "memory").glob(f"**/lxc.payload.{name}"):
        return cgroup_memory(path)
    return None


# -- cleanup and leftovers -------------------------------------------------------------------


def lxc_pivots() -> set[Path]:
    """LXC's own empty `lxc.pivot` cgroups, which it leaves in every hierarchy it used."""
    return {d for d in CGROUP.glob("*/lxc.pivot") if d.is_dir()}


def cleanup(prefix: str, work: Path, runc_root: Path, srv: RackfireServer | None,
            stacks: list[str], pivots_before: set[Path]) -> None:
    if srv is not None and srv.alive():
        for st in stacks:
            with contextlib.suppress(Exception):
                srv.cli("destroy", st, "-y", timeout=120)
    if srv is not None:
        srv.stop()
    # Anything the server did not get to: remove it with rackfire's own runtime code.
    data_instances = work / "data" / "instances"
    for root, base in ((Path(RACKFIRE_RUNC_ROOT), data_instances), (runc_root, work / "steps")):
        if base.is_dir():
            rt = ContainerRuntime(base, host="bench", runc_root=root)
            for entry in base.iterdir():
                with contextlib.suppress(Exception):
                    rt.destroy(InstanceKey.parse_id(entry.name))
    for st in [*stacks, f"{prefix}s"]:
        with contextlib.suppress(Exception):
            links.delete_bridge(st)
    for cid in runc_ids(str(runc_root)) if runc_root.is_dir() else []:
        run(["runc", "--root", str(runc_root), "delete", "--force", cid], check=False)
    unmount_all_under(str(work) + "/")
    for ctrl in CGROUP.iterdir():
        parent = ctrl / prefix
        if parent.is_dir():
            for child in parent.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
    for pivot in lxc_pivots() - pivots_before:  # ours: it was not there before; rmdir
        with contextlib.suppress(OSError):      # refuses a cgroup that is in use
            pivot.rmdir()
    if not mounts_under(str(work) + "/"):
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(runc_root, ignore_errors=True)


def leftovers(prefix: str) -> list[str]:
    """The checks the brief asks for, filtered to this run's prefix."""
    found = [f"netns {n}" for n in links.owned_netns() if prefix in n]
    step_veths = {names.veth_name(f"{prefix}s.box.{i}") for i in range(1000)}
    bridges = {names.bridge_name(f"{prefix}{s}") for s in ("s", *(f"-r{i}" for i in range(99)))}
    found += [f"link {n}" for n in links.owned_links() if n in step_veths | bridges]
    found += [f"container {c}" for c in runc_ids(RACKFIRE_RUNC_ROOT) if c.startswith(prefix)]
    found += [f"mount {m}" for m in mounts_under("/") if prefix in m]
    loops = run(["losetup", "-a"], check=False).stdout
    found += [f"loop {line}" for line in loops.splitlines() if prefix in line]
    for ctrl in CGROUP.iterdir():
        if (ctrl / prefix).exists():
            found.append(f"cgroup {ctrl.name}/{prefix}")
        for sub in ("rackfire", "."):
            d = ctrl / sub
            if d.is_dir():
                found += [f"cgroup {ctrl.name}/{sub}/{p.name}" for p in d.iterdir()
                          if p.is_dir() and prefix in p.name]
    procs = run(["ps", "-eo", "pid,args"], check=False).stdout
    found += [f"process {line.strip()}" for line in procs.splitlines()
              if prefix in line and "bench.instances" not in line]
    return sorted(set(found))


# -- summary ---------------------------------------------------------------------------------


def _memory_per_instance(groups: list[dict[str, dict[str, int] | None]]) -> dict[str, Any]:
    values = [v for g in groups for v in g.values() if v]
    out: dict[str, Any] = {k: spread([v[k] / 1024 for v in values])
                           for k in ("usage", "kmem", "rss", "cache")}
    out["limits_mib"] = sorted({v["limit"] >> 20 for v in values})
    return out


def summarize(rounds: list[dict[str, Any]], count: int) -> dict[str, Any]:
    rf = [r["rackfire"] for r in rounds]
    steps_create = [s for r in rounds for s in r["steps"]["create"]]
    steps_destroy = [s for r in rounds for s in r["steps"]["destroy"]]
    labels_c = sorted({k for s in steps_create for k in s}, key=lambda k: k == "total")
    labels_d = sorted({k for s in steps_destroy for k in s}, key=lambda k: k == "total")
    out: dict[str, Any] = {
        "rackfire": {
            "apply_s": spread([r["apply_s"] for r in rf]),
            "destroy_s": spread([r["destroy_s"] for r in rf]),
            "cli_ps_s": spread([r["cli_ps_s"] for r in rf]),
            "first_create_at_s": spread([r["first_create_at_s"] for r in rf]),
            "last_create_done_at_s": spread([r["last_create_done_at_s"] for r in rf]),
            "create_action_s": spread([x for r in rf for x in r["create_s"]]),
            "destroy_action_s": spread([x for r in rf for x in r["destroy_action_s"]]),
            "server_rss_n_kib": spread([r["server_rss_kib"]["VmRSS"] for r in rf]),
            "cgroup_memory_kib": _memory_per_instance([r["cgroup_memory"] for r in rf]),
            "kernel_threads_delta_per_instance": spread(
                [r["kernel_threads_delta"] / count for r in rf]),
            "meminfo_delta_per_instance_kib": {
                k: spread([r["meminfo_delta_kib"][k] / count for r in rf])
                for k in MEMINFO_KEYS},
        },
        "steps_create_s": {k: spread([s.get(k, 0.0) for s in steps_create]) for k in labels_c},
        "steps_destroy_s": {k: spread([s.get(k, 0.0) for s in steps_destroy]) for k in labels_d},
        "steps_cgroup_memory_kib": _memory_per_instance(
            [r["steps"]["cgroup_memory"] for r in rounds]),
    }
    peers = [("runc", "start_all_s", "delete_all_s", "start_s", "delete_s"),
             ("lxc", "start_all_s", "stop_all_s", "start_s", "stop_s")]
    for name, start_all, stop_all, start_each, stop_each in peers:
        data = [r[name] for r in rounds if r.get(name)]
        if not data:
            continue
        out[name] = {
            "start_all_s": spread([d[start_all] for d in data]),
            "delete_all_s": spread([d[stop_all] for d in data]),
            "start_each_s": spread([x for d in data for x in d[start_each]]),
            "delete_each_s": spread([x for d in data for x in d[stop_each]]),
            "cgroup_memory_kib": _memory_per_instance([d["cgroup_memory"] for d in data]),
        }
        if name == "runc":
            out[name]["runc_run_each_s"] = spread([x for d in data for x in d["runc_run_s"]])
    return out


def print_report(result: dict[str, Any]) -> None:
    s, n, r = result["summary"], result["config"]["count"], result["config"]["runs"]
    m = result["machine"]
    lxc = f"lxc {m['lxc']}" if m["lxc"] else "no lxc"
    print(f"\n{n} instances x {r} rounds on {m['nproc']} cores, {m['mem_total_mib']} MiB, "
          f"kernel {m['kernel']}, {m['runc']}, {lxc}")

    def row(label: str, sp: dict[str, float], unit: str = "s", scale: float = 1.0) -> None:
        if not sp:
            return
        fmt = "{:>9.3f}" if unit == "s" else "{:>9.0f}"
        cells = [fmt.format(sp[k] * scale) for k in ("median", "min", "max", "p90")]
        print(f"  {label:<52}{''.join(cells)}  {unit}  (n={sp['n']})")

    print(f"\n  {'':<52}{'median':>9}{'min':>9}{'max':>9}{'p90':>9}")
    rf = s["rackfire"]
    print("rackfire (server + CLI)")
    row(f"apply {n} (CLI call -> converged)", rf["apply_s"])
    row(f"destroy {n} (CLI call -> gone)", rf["destroy_s"])
    row("  CLI round trip (`rackfire ps`)", rf["cli_ps_s"])
    row("  apply: CLI start -> first create journalled", rf["first_create_at_s"])
    row("  apply: CLI start -> last create done", rf["last_create_done_at_s"])
    row("create, per instance (actions; 4 in parallel)", rf["create_action_s"])
    row("destroy, per instance (actions; 4 in parallel)", rf["destroy_action_s"])
    print("one create, step by step (sequential, rackfire's runtime)")
    for label, sp in s["steps_create_s"].items():
        row(f"  {label}", sp)
    print("one destroy, step by step")
    for label, sp in s["steps_destroy_s"].items():
        row(f"  {label}", sp)
    for name, title in (("runc", "bare runc (overlay + runc run -d / delete --force)"),
                        ("lxc", "LXC (lxc-start -d / lxc-stop -k)")):
        if name not in s:
            continue
        print(title)
        row(f"start {n}, sequentially", s[name]["start_all_s"])
        row(f"delete {n}, sequentially", s[name]["delete_all_s"])
        row("start, per container", s[name]["start_each_s"])
        if "runc_run_each_s" in s[name]:
            row("  of which runc run -d", s[name]["runc_run_each_s"])
        row("delete, per container", s[name]["delete_each_s"])
    print("memory")
    row("server VmRSS, 0 instances", spread([result["server_rss_idle_kib"]["VmRSS"]]), "KiB")
    row(f"server VmRSS, {n} running", rf["server_rss_n_kib"], "KiB")
    row("server VmRSS, 0 instances again (after the last round)",
        spread([result["server_rss_after_kib"]["VmRSS"]]), "KiB")
    for name, sp in (("rackfire", rf["cgroup_memory_kib"]),
                     ("rackfire steps", s["steps_cgroup_memory_kib"]),
                     ("bare runc", s.get("runc", {}).get("cgroup_memory_kib")),
                     ("lxc", s.get("lxc", {}).get("cgroup_memory_kib"))):
        if sp:
            print(f"  {name}: memory.limit_in_bytes {sp['limits_mib']} MiB")
            row(f"{name}: cgroup memory.usage_in_bytes / instance", sp["usage"], "KiB")
            row(f"{name}:   of which kmem", sp["kmem"], "KiB")
    for k in ("MemAvailable", "Slab"):
        row(f"host /proc/meminfo {k} delta / rackfire instance",
            rf["meminfo_delta_per_instance_kib"][k], "KiB")
    row("host kernel threads delta / rackfire instance",
        rf["kernel_threads_delta_per_instance"], "")
    print(f"\nleftovers: {result['leftovers'] or 'none'}")


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Time and weigh N idle rackfire instances next to bare runc and LXC.")
    ap.add_argument("--count", type=int, default=10, help="instances per round")
    ap.add_argument("--runs", type=int, default=3, help="rounds")
    ap.add_argument("--no-lxc", action="store_true", help="skip the LXC peer")
    ap.add_argument("--out", type=Path, help="result file [bench/results/instances-<date>.json]")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("runc"):
        print("needs root and runc", file=sys.stderr)
        return 1
    if not 1 <= args.count <= 200:
        print("--count must be 1..200", file=sys.stderr)
        return 1
    with_lxc = not args.no_lxc and shutil.which("lxc-start") is not None

    prefix = "rfb" + uuid.uuid4().hex[:6]
    work = Path("/var/tmp") / prefix
    runc_root = Path("/run") / prefix
    work.mkdir(mode=0o700)
    runc_root.mkdir(mode=0o700)
    (work / "hosts").write_text("127.0.0.1\tlocalhost\n")
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "instances", "started": started.isoformat(timespec="seconds"),
        "config": {"count": args.count, "runs": args.runs, "prefix": prefix, "pool": POOL,
                   "role": {"image": "base (from: host)", "command": list(COMMAND),
                            "memory": "32M", "disk": "64M", "health": None}},
        "machine": machine(), "rounds": [],
    }
    srv = new_server(work / "data")
    stacks: list[str] = []
    pivots_before = lxc_pivots()
    print(f"prefix {prefix}; work dir {work}", file=sys.stderr)
    try:
        srv.start()
        result["server_rss_start_kib"] = srv.rss_idle()
        result["image_build_s"] = timed(lambda: srv.cli("image", "build", "base", "--from",
                                                        "host"))
        image = ImageStore(work / "data" / "images").get("base")
        assert image is not None
        result["server_rss_idle_kib"] = srv.rss_idle()
        for i in range(1, args.runs + 1):
            stack = f"{prefix}-r{i}"
            stacks.append(stack)
            print(f"round {i}/{args.runs}: rackfire", file=sys.stderr)
            rnd: dict[str, Any] = {"round": i, "loadavg": Path("/proc/loadavg").read_text()
                                   .split()[:3]}
            rnd["rackfire"] = rackfire_round(srv, stack, args.count, work)
            print(f"round {i}/{args.runs}: steps", file=sys.stderr)
            rnd["steps"] = step_round(prefix, args.count, image, work, runc_root)
            print(f"round {i}/{args.runs}: bare runc", file=sys.stderr)
            rnd["runc"] = runc_round(prefix, args.count, image, work, runc_root)
            if with_lxc:
                print(f"round {i}/{args.runs}: lxc", file=sys.stderr)
                rnd["lxc"] = lxc_round(prefix, args.count, image, work)
            result["rounds"].append(rnd)
        result["server_rss_after_kib"] = srv.rss_idle()
        result["summary"] = summarize(result["rounds"], args.count)
    finally:
        cleanup(prefix, work, runc_root, srv, stacks, pivots_before)
        result["leftovers"] = leftovers(prefix) + [
            f"cgroup {p}" for p in sorted(lxc_pivots() - pivots_before)]
        result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if not with_lxc:
        result["not_measured"] = {"lxc": "--no-lxc or lxc-start not installed"}
    out = args.out or RESULTS / f"instances-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print_report(result)
    print(f"\nwrote {out}")
    return 1 if result["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
