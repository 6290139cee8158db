"""Footprint: what the controller and the agent hold in memory at rest and with 500 instances,
what each instance costs the host beyond its own processes, and what podman and docker keep
running per container for comparison.

Two layouts, each started afresh in every run:

- *split*: `rackfire server --no-local-host` (the controller) in the root netns and one real
  `rackfire agent` joined to it from a simulated host (`rackfire.testbed.bed.Bed`, a netns on an
  underlay bridge), so the two processes are measured apart;
- *single*: one `rackfire server` that also runs the instances (its local agent).

Each: at rest (after start and join), a warm-up stack of 1 (builds the `{from: host}` image,
and the agent fetches its layer: one-off costs that are not per instance), then 500 idle
instances (`sleep 100000`, memory 16M, disk 16M: the smallest disk rackfire accepts) as one
stack (the server sizes a stack's subnet for it: a /22 for 500; a server that gives every
stack a /24 gets stacks of 250 instead), then destroy. RSS and PSS come from
/proc/PID/smaps_rollup; the per-instance figure is Δ(MemTotal - MemAvailable) between just
before the apply and after convergence (settled, nothing dropped), minus the instances' own
cgroups (memory.usage_in_bytes), over 500. Everything carries a random prefix (`fp<6 hex>`),
is removed in `finally` (stacks through the API, agent and server by pid, the test bed), and
what is left is looked for afterwards: a leftover fails the run.

    python -m bench footprint --runs 1 --no-doc      # as root
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.report import SELF, Result, Target
from bench.rfserver import BenchServer
from rackfire.api.client import ApiError, Client
from rackfire.model.instance import InstanceKey
from rackfire.net import links, names
from rackfire.runtime.container import RUNC_ROOT, ContainerRuntime
from rackfire.testbed.bed import Bed

N = int(os.environ.get("RACKFIRE_BENCH_FOOTPRINT_N", "500"))  # smaller only for trying it out
PER_STACK = 250  # if one stack of N is refused: a /24 (before 4506ec3) holds 252 and a surge
POOL = "10.92.0.0/16"
MEMORY_LIMIT, DISK = "16M", "16M"
SETTLE = 10.0  # seconds between convergence and the samples: the reconcile goes quiet
TARGET_BYTES = 2 * 1024 * 1024  # "≤ 2 MB" read as 2 MiB (the rows are MiB)
CGROUP = Path("/sys/fs/cgroup")
T = TypeVar("T")
MiB = 1024 * 1024
MEMINFO = ("MemAvailable", "MemFree", "Buffers", "Cached", "Slab", "SReclaimable",
           "SUnreclaim", "KernelStack", "PageTables", "Percpu", "AnonPages", "Shmem",
           "Mapped", "VmallocUsed")

STACK_YAML = """\
stack: {stack}
images:
  base: {{from: host}}
roles:
  box:
    image: base
    count: {count}
    command: [sleep, "100000"]
    resources: {{memory: {memory}, disk: {disk}}}
"""


def say(msg: str) -> None:
    print(f"   [footprint {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- reading the kernel ------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def used(m: dict[str, int]) -> int:
    return m["MemTotal"] - m["MemAvailable"]


def smaps(pid: int) -> dict[str, int]:
    """smaps_rollup in bytes (Rss, Pss, Pss_Anon, ...), plus Threads."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0]) * 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            out["Threads"] = int(line.split()[1])
    return out


def sample_smaps(pids: dict[str, int], samples: int = 3) -> dict[str, dict[str, int]]:
    """Median of a few samples 1 s apart: the reconcile loop (10 s resync) and heartbeats
    (5 s) come and go, and one sample could land on either."""
    taken: list[dict[str, dict[str, int]]] = []
    for i in range(samples):
        if i:
            time.sleep(1.0)
        taken.append({who: smaps(pid) for who, pid in pids.items()})
    return {who: {k: int(statistics.median(t[who][k] for t in taken)) for k in taken[0][who]}
            for who in pids}


def _stat(pid: str) -> tuple[str, int] | None:
    """(comm, ppid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    return head.partition("(")[2], int(tail.split()[1])


def kernel_threads() -> Counter[str]:
    """Kernel threads (children of kthreadd) by name, digits folded (`jbd2/loopN-N`)."""
    found: Counter[str] = Counter()
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (s := _stat(p.name)) and s[1] == 2:
            found[re.sub(r"\d+", "N", s[0])] += 1
    return found


def memory_cgroup(pid: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return path
    return ""


def user_processes() -> dict[int, tuple[str, str]]:
    """Every process that is not a kernel thread: pid -> (comm, memory cgroup)."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (s := _stat(p.name)) and s[1] != 2 and p.name != "2":
            out[int(p.name)] = (s[0], memory_cgroup(p.name))
    return out


def steady_processes() -> dict[int, tuple[str, str]]:
    """Processes present in two snapshots 2 s apart: short-lived ones (a `runc list`, a
    heartbeat's child) are not what an instance keeps."""
    first = user_processes()
    time.sleep(2.0)
    second = user_processes()
    return {pid: v for pid, v in second.items() if first.get(pid) == v}


def others_anon(exclude: set[int], stacks: list[str]) -> int:
    """Anonymous and shmem RSS of every process that is neither rackfire's nor an instance's,
    in bytes: what other work on the machine moved MemAvailable by."""
    inside = tuple(f"/rackfire/{s}." for s in stacks)
    total = 0
    for pid, (_, cg) in user_processes().items():
        if pid in exclude or cg.startswith(inside):
            continue
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(("RssAnon:", "RssShmem:")):
                    total += int(line.split()[1]) * 1024
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (s := _stat(p.name)):
            children.setdefault(s[1], []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cgroup_usage(stacks: list[str]) -> dict[str, dict[str, int]]:
    """The instances' own v1 memory cgroups (`/rackfire/<stack>.<role>.<index>`), bytes."""
    out = {}
    parent = CGROUP / "memory" / "rackfire"
    for d in parent.iterdir() if parent.is_dir() else []:
        if d.is_dir() and d.name.split(".", 1)[0] in stacks:
            with contextlib.suppress(OSError, ValueError):
                stat = dict(line.split() for line in (d / "memory.stat").read_text()
                            .splitlines())
                out[d.name] = {
                    "usage": int((d / "memory.usage_in_bytes").read_text()),
                    "kmem": int((d / "memory.kmem.usage_in_bytes").read_text()),
                    "rss": int(stat.get("rss", 0)), "cache": int(stat.get("cache", 0))}
    return out


def slabinfo() -> dict[str, int]:
    """Bytes held by each slab cache (its slabs' pages), from /proc/slabinfo."""
    out = {}
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        f = line.split()
        # name active num objsize objperslab pagesperslab : tunables .. : slabdata act num ..
        out[f[0]] = int(f[14]) * int(f[5]) * 4096
    return out


def loop_devices() -> dict[str, str]:
    """Every loop device with a backing file: name -> file."""
    out = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            out[backing.parent.parent.name] = backing.read_text().strip()
    return out


def loop_facts() -> str:
    """Whether 500 loop-mounted disks can be had: loop devices are made on demand through
    /dev/loop-control (LOOP_CTL_GET_FREE, which mount -o loop uses), whatever max_loop says;
    only a max_loop given on the kernel command line caps the ones made by opening
    /dev/loopN."""
    param = Path("/sys/module/loop/parameters/max_loop")
    max_loop = param.read_text().strip() if param.exists() else "unknown"
    cmdline = "max_loop" in Path("/proc/cmdline").read_text()
    existing = sum(1 for _ in Path("/sys/block").glob("loop*"))
    return (f"/dev/loop-control {'present' if Path('/dev/loop-control').exists() else 'MISSING'}"
            f", loop max_loop={max_loop} ({'set' if cmdline else 'not set'} on the kernel "
            f"command line), {existing} loop devices, {len(loop_devices())} of them bound")


def mounts_under(prefix: str) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


# -- one layout --------------------------------------------------------------------------------


@dataclass
class Layout:
    """A server (and, split, a test bed with one agent) brought up for one run."""

    kind: str  # "split" or "single"
    prefix: str
    work: Path
    server: BenchServer | None = None
    bed: Bed | None = None
    agent: subprocess.Popen[bytes] | None = None
    stacks: list[str] = field(default_factory=list)  # every stack name it was asked to run
    _client: Client | None = None
    # Errors the API answered while we only polled it (`ps`, stack status): a finding, not a
    # reason to stop; (when, what) per error.
    api_errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def client(self) -> Client:
        if self._client is None:
            assert self.server is not None
            self._client = Client(self.server.url, timeout=300, data_dir=self.server.data_dir)
        return self._client

    def pids(self) -> dict[str, int]:
        assert self.server is not None
        if self.agent is None:
            return {"server": self.server.pid}
        return {"controller": self.server.pid, "agent": agent_pid(self.agent.pid)}

    @property
    def instance_root(self) -> Path:
        return self.work / ("agent" if self.kind == "split" else "data") / "instances"

    @property
    def runc_root(self) -> Path:
        if self.bed is not None:
            return Path(self.bed.runc_root(self.bed.hosts[0]))
        return RUNC_ROOT

    def up(self) -> None:
        data = self.work / "data"
        if self.kind == "single":
            self.server = BenchServer(data, POOL)
            self.server.start()
            return
        self.bed = Bed(1).create()
        self.server = BenchServer(data, POOL, args=("--listen", "0.0.0.0", "--no-local-host"))
        self.server.start()
        token = str(self.client.create_token(600, 1)["token"])
        host = self.bed.hosts[0]
        # The agent's default heartbeat (5 s), not the test bed's quick 0.5 s.
        self.agent = self.bed.start_agent(
            host, f"http://{self.bed.controller_ip}:{self.server.port}", token,
            str(self.work / "agent"), {"rack": "r1"}, interval=5.0,
            log=str(self.work / "agent.log"))
        wait(lambda: any(h["name"] == host.name and h["state"] == "ready"
                         for h in self.client.hosts()), "the agent to join", 60)

    def apply(self, stack: str, count: int) -> None:
        self.stacks.append(stack)
        text = STACK_YAML.format(stack=stack, count=count, memory=MEMORY_LIMIT, disk=DISK)
        c = self.client
        planned = c.plan(text, f"{stack}.yaml")
        c.apply(text, f"{stack}.yaml", planned["generation"])

    def wait_running(self, stacks: list[str], count: int, timeout: float) -> float:
        """Until every stack converged with all its instances running; prints progress."""
        t0 = time.monotonic()
        last = 0.0
        c = self.client
        failed_since: dict[str, float] = {}
        while True:
            states, rows = self._read("apply", lambda: (
                [c.stack(s) for s in stacks], [r for s in stacks for r in c.instances(s)]))
            # A failed reconcile is retried 5 s later by the server: a stack that fails now and
            # then (`runc list` racing a delete) is recorded; one failed for 2 min is not
            # coming back.
            for st in states:
                if st["status"] != "failed":
                    failed_since.pop(st["name"], None)
                    continue
                if st["name"] not in failed_since:
                    failed_since[st["name"]] = time.monotonic()
                    self.api_errors.append(("apply: stack failed", st["message"]))
                elif time.monotonic() - failed_since[st["name"]] > 120:
                    raise RuntimeError(f"stack {st['name']} failed: {st['message']}")
            running = sum(1 for r in rows if r["state"] == "running"
                          and r["runtime"] == "container")
            done = running == count and all(s["converged"] for s in states)
            if done or time.monotonic() - last >= 15:
                last = time.monotonic()
                say(f"{self.kind}: {running}/{count} running after "
                    f"{time.monotonic() - t0:.0f} s ({', '.join(s['status'] for s in states)})")
            if done:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{running}/{count} running after {timeout:.0f} s: "
                                   + "; ".join(f"{s['name']}: {s['message']}" for s in states))
            time.sleep(2.0)

    def destroy(self, stacks: list[str], timeout: float) -> float:
        """Destroy through the API and wait until the server no longer knows the stacks."""
        t0 = time.monotonic()
        c = self.client
        for s in stacks:
            c.destroy(s)
        last = 0.0
        while True:
            left = self._read("destroy", lambda: sum(self._left(s) for s in stacks))
            if not left or time.monotonic() - last >= 15:
                last = time.monotonic()
                say(f"{self.kind}: destroying, {left} left after {time.monotonic() - t0:.0f} s")
            if not left:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"destroy: {left} instances left after {timeout:.0f} s")
            time.sleep(2.0)

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()`, asked again a second later while the server answers 5xx (recorded)."""
        while True:
            try:
                return fn()
            except ApiError as e:
                if e.status < 500:
                    raise
                self.api_errors.append((what, str(e)))
                time.sleep(1.0)

    def _left(self, stack: str) -> int:
        """Instances the server still shows of a stack being destroyed (1 while it still
        knows a stack with none), 0 once it is gone."""
        try:
            self.client.stack(stack)
        except ApiError as e:
            if e.status == 404:
                return 0
            raise
        return len(self.client.instances(stack)) or 1

    def down(self) -> None:
        """Everything this layout made goes, whatever state it is in."""
        if self.server is not None and self.server.alive():
            with contextlib.suppress(Exception):
                if known := [s for s in self.stacks if self._known(s)]:
                    self.destroy(known, 900)
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGTERM)
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.agent.pid, signal.SIGKILL)
                self.agent.wait(10)
        if self.server is not None:
            self.server.stop()
        if self._client is not None:
            self._client.close()
        # What the server could not remove: with rackfire's own runtime code, by instance dir.
        if self.instance_root.is_dir():
            rt = ContainerRuntime(self.instance_root, host="bench", runc_root=self.runc_root)
            for entry in self.instance_root.iterdir():
                with contextlib.suppress(Exception):
                    rt.destroy(InstanceKey.parse_id(entry.name))
        if self.bed is not None:
            self.bed.destroy()
            shutil.rmtree(self.runc_root, ignore_errors=True)
        else:
            for s in self.stacks:
                with contextlib.suppress(Exception):
                    links.delete_bridge(s)

    def _known(self, stack: str) -> bool:
        try:
            self.client.stack(stack)
        except ApiError:
            return False
        return True


def time_runc_list(root: Path) -> tuple[float, int, int]:
    """How long one `runc list` takes (what rackfire's observe ran for every reconcile and
    every `ps` before it read runc's state files itself; kept as a measure of the root), how
    many containers it listed, and how many tries failed before (it fails when a container
    in the root is deleted while it lists)."""
    for failures in range(50):
        t0 = time.monotonic()
        proc = subprocess.run(["runc", "--root", str(root), "list", "--format", "json"],
                              capture_output=True, text=True, check=False)
        took = time.monotonic() - t0
        if proc.returncode == 0:
            return took, len(json.loads(proc.stdout or "null") or []), failures
        time.sleep(0.2)
    raise RuntimeError(f"runc list of {root} failed 50 times: {proc.stderr.strip()}")


def plan_error(lay: Layout, stack: str, count: int) -> str:
    """What the server says to one stack of `count` (only planned, nothing applied)."""
    text = STACK_YAML.format(stack=stack, count=count, memory=MEMORY_LIMIT, disk=DISK)
    try:
        lay.client.plan(text, f"{stack}.yaml")
    except ApiError as e:
        return f"refused: {e}"
    return "accepted"


def agent_pid(pid: int) -> int:
    """The agent's python process: nsenter execs it (same pid) unless it had to fork."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "nsenter":
        return pid
    kids = descendants(pid)
    if len(kids) != 1:
        raise RuntimeError(f"cannot tell the agent's process under nsenter {pid}: {kids}")
    return kids[0]


def wait(fn: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


# -- one run of one layout ---------------------------------------------------------------------


def measure(lay: Layout) -> dict[str, Any]:
    """Up, at rest, warm-up, N instances, destroy, down; what was seen at each point."""
    kind, prefix, work = lay.kind, lay.prefix, lay.work
    out: dict[str, Any] = {"kind": kind}
    stacks: list[str] = []
    try:
        t0 = time.monotonic()
        lay.up()
        say(f"{kind}: up in {time.monotonic() - t0:.1f} s; settling")
        time.sleep(SETTLE)
        pids = lay.pids()
        out["pids"] = pids
        out["rest"] = sample_smaps(pids)
        # One stack of N if the server takes it (its subnet sized for it), else stacks of
        # PER_STACK (a server that gives every stack a /24).
        out["plan_one_stack"] = plan_error(lay, f"{prefix}a", N)
        per_stack = N if out["plan_one_stack"] == "accepted" else PER_STACK
        stacks = [f"{prefix}{chr(ord('a') + i)}" for i in range(-(-N // per_stack))]
        # One-off costs first (image build on the server, layer fetch by the agent).
        lay.apply(f"{prefix}w", 1)
        lay.wait_running([f"{prefix}w"], 1, 300)
        lay.destroy([f"{prefix}w"], 300)
        time.sleep(SETTLE)
        out["warm"] = sample_smaps(pids)
        kthreads0, procs0, slabs0 = kernel_threads(), steady_processes(), slabinfo()
        others0 = others_anon(set(pids.values()), stacks)
        mem0 = meminfo()
        say(f"{kind}: applying {N} instances as {len(stacks)} stack(s)")
        for i, s in enumerate(stacks):
            lay.apply(s, min(per_stack, N - i * per_stack))
        out["apply_s"] = lay.wait_running(stacks, N, 3600)
        out["subnets"] = {s: lay.client.stack(s)["subnet"] for s in stacks}
        out["runc_list_s"] = time_runc_list(lay.runc_root)
        out["loops_bound"] = sum(1 for f in loop_devices().values() if f.startswith(str(work)))
        time.sleep(SETTLE)
        out["full"] = sample_smaps(pids)
        mem1 = meminfo()
        out["others_anon_delta"] = others_anon(set(pids.values()), stacks) - others0
        out["cgroups"] = cgroup_usage(stacks)
        kthreads1, procs1, slabs1 = kernel_threads(), steady_processes(), slabinfo()
        out["slab_delta"] = dict(sorted(
            ((k, slabs1.get(k, 0) - slabs0.get(k, 0)) for k in slabs0.keys() | slabs1.keys()),
            key=lambda kv: -kv[1])[:12])
        out["meminfo_delta"] = {k: mem1[k] - mem0[k] for k in mem1 if k in mem0}
        out["used_delta"] = used(mem1) - used(mem0)
        out["kthreads_delta"] = {k: kthreads1[k] - kthreads0[k]
                                 for k in kthreads0.keys() | kthreads1.keys()
                                 if kthreads1[k] != kthreads0[k]}
        out["new_processes"] = new_processes(procs0, procs1, stacks, pids.values())
        out["children"] = {who: [Path(f"/proc/{c}/comm").read_text().strip()
                                 for c in descendants(pid)] for who, pid in pids.items()}
        say(f"{kind}: {N} running; destroying")
        out["destroy_s"] = lay.destroy(stacks, 3600)
        time.sleep(SETTLE)
        out["after"] = sample_smaps(pids)
        mem2 = meminfo()
        out["used_delta_after_destroy"] = used(mem2) - used(mem0)
        out["meminfo_delta_after_destroy"] = {k: mem2[k] - mem0[k] for k in MEMINFO}
    finally:
        out["api_errors"] = lay.api_errors
        lay.down()
    return out


def new_processes(before: dict[int, tuple[str, str]], after: dict[int, tuple[str, str]],
                  stacks: list[str], ours: Any) -> dict[str, int]:
    """Processes that appeared with the instances, outside the instances' own cgroups, by
    name (the bench and its helpers left out)."""
    mine = {os.getpid(), *descendants(os.getpid())}
    inside = tuple(f"/rackfire/{s}." for s in stacks)
    found: Counter[str] = Counter()
    for pid, (comm, cg) in after.items():
        if pid in before or pid in mine or cg.startswith(inside):
            continue
        found[comm] += 1
    return dict(found)


# -- leftovers ---------------------------------------------------------------------------------


def leftovers(lay: Layout) -> list[str]:
    """Whatever of this layout is still on the machine: netns, links, mounts, loop devices,
    cgroups, runc containers, the test bed, processes."""
    prefix, work = lay.prefix, str(lay.work)
    stacks = {*lay.stacks, *(f"{prefix}{c}" for c in "abcdw")}
    found = [f"netns {n}" for n in links.owned_netns() if n.startswith(f"rf-{prefix}")]
    bridges = {names.bridge_name(s) for s in stacks}
    veths = {names.veth_name(f"{s}.box.{i}") for s in stacks for i in range(N)}
    found += [f"link {n}" for n in links.owned_links() if n in bridges | veths]
    found += [f"mount {m}" for m in mounts_under("/") if work in m or f"/{prefix}" in m]
    found += [f"loop {d} {f}" for d, f in loop_devices().items() if work in f]
    for ctrl in CGROUP.iterdir():
        d = ctrl / "rackfire"
        if d.is_dir():
            found += [f"cgroup {ctrl.name}/rackfire/{p.name}" for p in d.iterdir()
                      if p.is_dir() and p.name.startswith(prefix)]
    proc = subprocess.run(["runc", "--root", str(RUNC_ROOT), "list", "--format", "json"],
                          capture_output=True, text=True, check=False)
    found += [f"container {c['id']}" for c in json.loads(proc.stdout or "null") or []
              if c["id"].startswith(prefix)]
    if lay.bed is not None:
        found += [f"test bed {x}" for x in lay.bed.leftovers()]
        if lay.runc_root.exists():
            found.append(f"runc root {lay.runc_root}")
    mine = {os.getpid(), *descendants(os.getpid())}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) not in mine:
            with contextlib.suppress(OSError):
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if work in cmd or f"/rackfire/{prefix}" in memory_cgroup(p.name):
                    found.append(f"process {p.name} {cmd.strip()[:120]}")
    return sorted(set(found))


# -- the peers: what each container costs outside it -------------------------------------------

PEER_COUNT = 50


def peer_processes(prefix: str, comm: str) -> dict[int, str]:
    """pid -> comm of the processes named `comm*` whose command line carries `prefix`."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (s := _stat(p.name)) and s[0].startswith(comm):
            with contextlib.suppress(OSError):
                if prefix.encode() in (p / "cmdline").read_bytes():
                    out[int(p.name)] = s[0]
    return out


def measure_peers() -> tuple[dict[str, dict[str, Any]], list[str]]:
    """podman's conmon and docker's containerd-shim per container (RSS, PSS) with
    PEER_COUNT containers of bench/peers.py's busybox rootfs running `sleep`; what could not
    be measured, and why, in the second value."""
    try:
        from bench import peers
    except ImportError as e:
        return {}, [f"Peers not measured: bench/peers.py cannot be imported ({e})."]
    missing = [p for p in peers.missing_packages() if p != "lxc"]
    if missing:
        return {}, [f"Peers not measured: {', '.join(missing)} not installed."]

    # Subnets of our own pool that the servers above never reach (they take /24s from the
    # bottom): another benchmark may run bench/peers.py's defaults at the same time.
    class Podman(peers.Podman):
        SUBNET = "10.92.250.0/24"

    class Docker(peers.Docker):
        GATEWAY = "10.92.251.1"

    ws = peers.Workspace("fpp" + secrets.token_hex(3))
    host = peers.HostPaths()
    out: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    made: list[Any] = []
    try:
        ws.create()
        for cls, shim in ((Podman, "conmon"), (Docker, "containerd-shim")):
            peer = cls(ws)
            made.append(peer)
            try:
                peer.setup()
                daemons = _daemons(peer)
                before = {w: smaps(pid)["Rss"] for w, pid in daemons.items()}
                for i in range(PEER_COUNT):
                    peer.start(i)
                    if (i + 1) % 10 == 0:
                        say(f"{peer.name}: {i + 1}/{PEER_COUNT} containers running")
                time.sleep(SETTLE)
                procs = peer_processes(ws.prefix, shim)
                taken = {pid: smaps(pid) for pid in procs}
                out[peer.name] = {
                    "shim": shim, "count": len(taken),
                    "rss": [m["Rss"] for m in taken.values()],
                    "pss": [m["Pss"] for m in taken.values()],
                    "daemons_delta": {w: smaps(pid)["Rss"] - before[w]
                                      for w, pid in daemons.items()}}
                say(f"{peer.name}: {len(taken)} {shim} processes for {PEER_COUNT} containers")
                peer.clear()
            except Exception as e:  # a peer that cannot run here is skipped, not fatal
                notes.append(f"{peer.name}: not measured, it failed: {e}")
    finally:
        left = []
        for peer in reversed(made):
            with contextlib.suppress(Exception):
                peer.teardown()
            with contextlib.suppress(Exception):
                left += peer.leftovers()
        ws.remove()
        host.tidy()
        left += host.leftovers()
        left += [f"process {x}" for x in peers.processes_with(ws.prefix)]
        left += [f"mount {m}" for m in mounts_under("/") if ws.prefix in m]
        left += [f"link {n}" for n, _ in peers.link_names().values() if ws.prefix in n]
        left += [f"cgroup {c}" for c in peers.cgroups_with(ws.prefix)]
    if left:
        raise RuntimeError(f"the peers left things behind: {left[:20]}")
    notes.append(f"Peers (prefix {ws.prefix}): nothing left behind.")
    return out, notes


def _daemons(peer: Any) -> dict[str, int]:
    """dockerd and its containerd (podman has no daemon)."""
    daemon = getattr(peer, "daemon", None)
    if daemon is None:
        return {}
    out = {"dockerd": int(daemon.pid)}
    if getattr(peer, "containerd", None):
        out["containerd"] = int(peer.containerd)
    return out


# -- the measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    work = Path("/var/tmp") / prefix
    work.mkdir(mode=0o700)
    try:
        yield work
    finally:
        if not mounts_under(str(work) + "/"):
            shutil.rmtree(work, ignore_errors=True)


def run(runs: int) -> Result:
    if shutil.which("runc") is None:
        raise RuntimeError("runc is not installed")
    result = Result("footprint", "Footprint: controller and agent memory, 500 instances", WHAT)
    result.notes.append(f"Loop devices before the run: {loop_facts()}.")
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(runs):
        prefix = "fp" + secrets.token_hex(3)
        say(f"run {r + 1}/{runs}, prefix {prefix}")
        left: list[str] = []
        with workdir(prefix) as work:
            # Stack names: fp<hex>p<a|b|w> (split) and fp<hex>i<...> (single).
            lays = [Layout(kind, prefix + kind[1], work / kind) for kind in ("split", "single")]
            try:
                rounds.append({lay.kind: measure(lay) for lay in lays})
            finally:
                for lay in lays:
                    left += leftovers(lay)
                if left:  # said here too: a failed measurement's error would hide them
                    print(f"   LEFT ON THE HOST: {'; '.join(left)}", file=sys.stderr, flush=True)
        if work.exists():
            left.append(f"dir {work}")
        if left:
            raise RuntimeError(f"run {r + 1} left {len(left)} things behind: {left[:20]}")
        result.notes.append(f"Run {r + 1} (prefix {prefix}): nothing left behind (netns, "
                            "links, mounts, loop devices, cgroups, runc containers, processes "
                            "checked after teardown).")
    result.notes.append(f"Loop devices after the run: {loop_facts()} (made on demand, a loop "
                        "device stays once made, unbound).")
    summarize(result, rounds)
    say(f"peers: {PEER_COUNT} containers each of podman and docker")
    peer_data, peer_notes = measure_peers()
    summarize_peers(result, peer_data)
    result.notes += peer_notes
    (Path(__file__).parent / "results").mkdir(exist_ok=True)
    (Path(__file__).parent / "results" / "footprint-raw.json").write_text(
        json.dumps({"rounds": rounds, "peers": peer_data}, indent=1, default=str) + "\n")
    return result


WHAT = f"""\
`bench/footprint.py`. *Split*: `rackfire server --no-local-host` (the controller) and one
real `rackfire agent` joined to it from a simulated host of the test bed (a netns on an
underlay bridge), so each is its own process; *one server*: a `rackfire server` that also
runs the instances. Each run starts both afresh: at rest (joined, no stack), a warm-up stack
of one (the image build and the agent's layer fetch are one-off), then {N} idle instances
(`sleep 100000`, `resources: {{memory: {MEMORY_LIMIT}, disk: {DISK}}}` (the smallest disk
rackfire accepts), `from: host`) as one stack whose subnet the server sizes for it (pool
`{POOL}`; a server that gives every stack a /24 would get stacks of {PER_STACK}), then
destroy. Memory of a process: RSS and PSS from `/proc/PID/smaps_rollup`, the median of 3
samples 1 s apart, {SETTLE:.0f} s after convergence. Per instance beyond its processes: the
change of MemTotal - MemAvailable from just before the apply to after convergence, minus the
sum of the instances' own memory cgroups (`memory.usage_in_bytes`, v1), over {N}; the
breakdown rows are system-wide /proc/meminfo changes over {N} (they include the instances'
own kernel memory, the cgroups' kmem). Peers: {PEER_COUNT} containers each of podman and of
a dockerd started for the purpose (bench/peers.py, busybox `sleep`), RSS and PSS of the
process each keeps per container."""


def summarize(result: Result, rounds: list[dict[str, dict[str, Any]]]) -> None:
    def rows(case: str, subject: str, values: list[float], unit: str = "MiB",
             **kw: Any) -> None:
        result.add(case, subject, [round(v, 3) for v in values], unit, **kw)

    def mib(kind: str, when: str, who: str, key: str) -> list[float]:
        return [r[kind][when][who][key] / MiB for r in rounds]

    for when, case in (("rest", "at rest"), ("full", f"{N} instances"),
                       ("after", "after destroy")):
        for who, subject in (("controller", "controller (server)"), ("agent", "agent")):
            rows(case, subject, mib("split", when, who, "Rss"), note="RSS")
            rows(case, subject, mib("split", when, who, "Pss"), note="PSS")
        rows(case, "server (controller + local agent)", mib("single", when, "server", "Rss"),
             note="RSS")
        rows(case, "server (controller + local agent)", mib("single", when, "server", "Pss"),
             note="PSS")

    per: dict[str, list[float]] = {"split": [], "single": []}
    fixed: dict[str, list[float]] = {"split": [], "single": []}
    for kind in per:
        for r in rounds:
            m = r[kind]
            own = sum(c["usage"] for c in m["cgroups"].values())
            per[kind].append((m["used_delta"] - own) / N / MiB)
            fixed[kind].append((m["used_delta"] - own - m["others_anon_delta"]) / N / MiB)
    for kind, case, note in (
            ("split", "per instance, beyond its processes", "controller and agent apart"),
            ("single", "per instance, beyond its processes (one server)",
             "controller + local agent")):
        rows(case, SELF, per[kind], note=note)
        rows(case, SELF, fixed[kind], note=note + "; other processes' anon+shmem Δ taken out")

    case = "per instance: breakdown (split; system-wide Δ / N)"

    def delta(key: str) -> list[float]:
        return [r["split"]["meminfo_delta"][key] / N / MiB for r in rounds]

    rows(case, "rackfire: unreclaimable kernel (SUnreclaim)", delta("SUnreclaim"))
    rows(case, "rackfire: reclaimable slab (SReclaimable)", delta("SReclaimable"))
    rows(case, "rackfire: kernel stacks (KernelStack)", delta("KernelStack"))
    rows(case, "rackfire: page tables (PageTables)", delta("PageTables"))
    rows(case, "rackfire: per-CPU (Percpu)", delta("Percpu"))
    rows(case, "rackfire: page cache (Cached, reclaimable)", delta("Cached"))
    rows(case, "rackfire: block buffers (Buffers, reclaimable)", delta("Buffers"))
    rows(case, "rackfire: controller + agent RSS",
         [sum(r["split"]["full"][w]["Rss"] - r["split"]["warm"][w]["Rss"]
              for w in ("controller", "agent")) / N / MiB for r in rounds])
    rows(case, "rackfire: kernel threads",
         [sum(r["split"]["kthreads_delta"].values()) / N for r in rounds], unit="threads")
    rows(case, "instance: its own cgroup (usage_in_bytes)",
         [sum(c["usage"] for c in r["split"]["cgroups"].values()) / N / MiB for r in rounds])
    rows(case, "instance: of which kernel (kmem)",
         [sum(c["kmem"] for c in r["split"]["cgroups"].values()) / N / MiB for r in rounds])

    worst = max(per["split"] + per["single"])
    # A process kept per instance shows up about N times; other work on the machine not.
    shims = max(sum(v for v in r[k]["new_processes"].values() if v >= max(N // 2, 10)) / N
                for r in rounds for k in ("split", "single"))
    result.targets.append(Target(
        "Per-instance overhead on the host beyond its own processes: ≤ 2 MB (no shim "
        "process per instance that costs more)", worst <= TARGET_BYTES / MiB and not shims,
        f"{statistics.median(per['split']):.2f} MiB split, "
        f"{statistics.median(per['single']):.2f} MiB one server (worst {worst:.2f} MiB); "
        f"{shims:g} processes per instance outside its cgroup"))
    notes(result, rounds)


def summarize_peers(result: Result, data: dict[str, dict[str, Any]]) -> None:
    if not data:
        return
    case = f"per instance, processes outside it ({PEER_COUNT} running)"
    result.add(case, SELF, [0.0], "MiB", note="none: runc exits, PID 1 is the instance's")
    for name, d in data.items():
        subject = f"{name}: {d['shim']}"
        # One sample: the median process (min and max over the processes go in a note).
        result.add(case, subject, [statistics.median(d["rss"]) / MiB], "MiB",
                   note="RSS of one, median")
        result.add(case, subject, [statistics.median(d["pss"]) / MiB], "MiB",
                   note="PSS of one, median")
        daemons = ", ".join(f"{w} {v / MiB:+.1f} MiB ({v / PEER_COUNT / 1024:+.0f} KiB per "
                            "container)" for w, v in d["daemons_delta"].items())
        result.notes.append(
            f"{name}: {d['count']} {d['shim']} processes for {PEER_COUNT} containers, RSS "
            f"{min(d['rss']) / MiB:.2f} to {max(d['rss']) / MiB:.2f} MiB each; their "
            f"PSS sums to {sum(d['pss']) / MiB:.1f} MiB ({sum(d['pss']) / PEER_COUNT / MiB:.2f} "
            "MiB per container)" + (f"; daemons grew: {daemons}" if daemons else "") + ".")


def notes(result: Result, rounds: list[dict[str, dict[str, Any]]]) -> None:
    first = rounds[0]["single"]
    result.notes.append(
        f"Stacks: a plan of one stack of {N} was {first['plan_one_stack']}; the instances ran "
        "as " + ", ".join(f"{s} on {net}" for s, net in first["subnets"].items())
        + " (one server; the split layout the same way).")
    for i, r in enumerate(rounds, 1):
        for kind in ("split", "single"):
            m = r[kind]
            usage = sorted(c["usage"] for c in m["cgroups"].values())
            threads = {w: (m["rest"][w]["Threads"], m["full"][w]["Threads"]) for w in m["pids"]}
            kt = sorted(m["kthreads_delta"].items(), key=lambda kv: -abs(kv[1]))[:4]
            d = m["meminfo_delta"]
            errors = m["api_errors"]
            result.notes.append(
                f"Run {i}, {kind}: {N} up in {m['apply_s']:.0f} s (apply to all running and "
                f"converged), destroyed in {m['destroy_s']:.0f} s; {m['loops_bound']} loop "
                f"devices bound. {len(usage)} instance cgroups, usage median "
                f"{statistics.median(usage) / 1024:.0f} KiB (min {usage[0] / 1024:.0f}, max "
                f"{usage[-1] / 1024:.0f}). Δ(MemTotal - MemAvailable) "
                f"{m['used_delta'] / MiB:+.0f} MiB; Δ meminfo (MiB) "
                + ", ".join(f"{k} {d[k] / MiB:+.1f}" for k in MEMINFO if k in d)
                + "; largest slab changes (MiB) "
                + ", ".join(f"{k} {v / MiB:+.1f}" for k, v in list(m["slab_delta"].items())[:8])
                + "; kernel threads " + ", ".join(f"{k} {v:+d}" for k, v in kt)
                + ". Threads " + ", ".join(f"{w} {a} → {b}" for w, (a, b) in threads.items())
                + f"; children of rackfire's processes with {N} up: "
                + (", ".join(f"{w}: {c}" for w, c in m["children"].items() if c) or "none")
                + "; processes that appeared with the instances outside their cgroups: "
                + (", ".join(f"{k} x{v}" for k, v in m["new_processes"].items()) or "none")
                + (" (none near one per instance: other work on the machine)"
                   if m["new_processes"] and max(m["new_processes"].values()) < N // 2 else "")
                + f". Other processes' anon+shmem moved {m['others_anon_delta'] / MiB:+.0f} MiB"
                f"; after destroy Δ(MemTotal - MemAvailable) "
                f"{m['used_delta_after_destroy'] / MiB:+.0f} MiB from before the apply. "
                f"`runc list` of the runc root took {m['runc_list_s'][0]:.2f} s for "
                f"{m['runc_list_s'][1]} containers ({m['runc_list_s'][2]} failed tries first); "
                f"{len(errors)} errors while polling the API (errors answered, stack failed)"
                + (f", {sum('runc list failed' in e for _, e in errors)} of them `runc list "
                   f"failed`; first: {errors[0][0]}: {errors[0][1][:160]}" if errors else "")
                + ".")


if __name__ == "__main__":  # trying it out: RACKFIRE_BENCH_FOOTPRINT_N=6 python -m bench.footprint
    from bench.report import render_result

    print("\n".join(render_result(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
