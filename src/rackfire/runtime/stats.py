"""What an instance uses, read from the kernel: cgroup v1 files, /proc, statvfs, veth counters.

The readers return what they find, or None where the thing they read does not exist (a
stopped container has no cgroup). `CpuSampler` is the one stateful part: a CPU rate needs two
readings, so it keeps each instance's last one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rackfire.net import names

CGROUP_ROOT = Path("/sys/fs/cgroup")
NET_ROOT = Path("/sys/class/net")
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded LONG_MAX
SAMPLE_MIN = 0.5  # seconds: a shorter window is mostly noise (clock ticks are 10 ms)
SAMPLE_MAX = 60.0  # older than this, a rate says little about now
WALK_LIMIT = 100_000  # entries: a bounded walk, so a huge tree cannot stall a stats call


# cgroups (v1: one hierarchy per controller) -------------------------------------------------

def cgroup_dir(controller: str, instance_id: str) -> Path:
    return CGROUP_ROOT / controller / "rackfire" / names.cgroup_name(instance_id)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":  # pids.max without a limit
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_cpu_ns(instance_id: str) -> int | None:
    """CPU time the cgroup used, in nanoseconds (all CPUs, user + system)."""
    return _read_int(cgroup_dir("cpuacct", instance_id) / "cpuacct.usage")


def cgroup_memory(instance_id: str) -> tuple[int | None, int | None]:
    """(used, limit) in bytes. Used leaves out inactive page cache, as `docker stats` does:
    the kernel reclaims it before it would OOM-kill. Limit is None when unlimited."""
    d = cgroup_dir("memory", instance_id)
    usage = _read_int(d / "memory.usage_in_bytes")
    limit = _read_int(d / "memory.limit_in_bytes")
    if limit is not None and limit >= UNLIMITED:
        limit = None
    if usage is None:
        return None, limit
    inactive = _memory_stat(d).get("total_inactive_file", 0)
    return max(0, usage - inactive), limit


def _memory_stat(d: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in (d / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if value.isdigit():
                out[name] = int(value)
    except OSError:
        pass
    return out


def cgroup_pids(instance_id: str) -> int | None:
    return _read_int(cgroup_dir("pids", instance_id) / "pids.current")


def cgroup_exists(instance_id: str) -> bool:
    return cgroup_dir("memory", instance_id).is_dir()


# disks and network -------------------------------------------------------------------------

def fs_usage(path: Path) -> tuple[int, int]:
    """(used, limit) in bytes of the filesystem mounted at `path`, as its users without
    CAP_SYS_RESOURCE see it: the limit leaves out what statvfs leaves out of f_bavail, i.e.
    the reserved blocks (an instance disk's headroom, see runtime/disks.py) and the few
    ext4 keeps for itself, so `limit - used` is what can still be written."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    return used * st.f_frsize, (st.f_blocks - (st.f_bfree - st.f_bavail)) * st.f_frsize


def veth_traffic(host_ifname: str) -> tuple[int | None, int | None]:
    """(received, sent) by the instance, in bytes, from the host side of its veth: what the
    host side sends is what the instance receives, and the other way round."""
    d = NET_ROOT / host_ifname / "statistics"
    return _read_int(d / "tx_bytes"), _read_int(d / "rx_bytes")


def tree_size(root: Path, limit: int = WALK_LIMIT) -> int:
    """Total size of the regular files under `root` (symlinks not followed). Stops after
    `limit` entries: then it is a lower bound."""
    total, seen = 0, 0
    stack = [str(root)]
    while stack and seen < limit:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            seen += 1
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # removed while we looked
    return total


def allocated(path: Path) -> int:
    """Bytes a (sparse) file holds on its filesystem; 0 if it does not exist."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


# the host ----------------------------------------------------------------------------------

def memory_total() -> int:
    """MemTotal from /proc/meminfo, in bytes."""
    return _meminfo("MemTotal")


def memory_available() -> int:
    """MemAvailable from /proc/meminfo: what could be used without swapping, in bytes."""
    return _meminfo("MemAvailable")


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel says kB and means KiB
    raise OSError(f"no {field} in /proc/meminfo")


# processes ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProcUsage:
    pids: int
    cpu_ns: int
    rss: int  # bytes


def _proc_stats() -> Iterator[list[str]]:
    """The fields after `(comm)` of every /proc/PID/stat: index 0 is field 3 (state)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue  # it ended while we looked
        yield text.rpartition(")")[2].split()


def session_usage(sid: int) -> ProcUsage:
    """Every live process of session `sid` (the process runtime starts each instance as a
    session leader, so its children, unless they made their own session, are in it)."""
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    pids = cpu = rss = 0
    for f in _proc_stats():
        # fields 6 (session), 14/15 (utime, stime in ticks), 24 (rss in pages)
        if len(f) < 22 or f[0] in ("Z", "X") or int(f[3]) != sid:
            continue
        pids += 1
        cpu += (int(f[11]) + int(f[12])) * tick_ns
        rss += int(f[21]) * page
    return ProcUsage(pids, cpu, rss)


# CPU rates ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CpuSample:
    at: float  # time.monotonic()
    used_ns: int


def cpu_percent(prev: CpuSample, cur: CpuSample) -> float:
    """100 = one core busy over the window."""
    elapsed = cur.at - prev.at
    if elapsed <= 0:
        return 0.0
    return max(0.0, (cur.used_ns - prev.used_ns) / (elapsed * 1e9) * 100)


class CpuSampler:
    """Keeps each instance's last CPU reading. A reading between SAMPLE_MIN and SAMPLE_MAX old
    is the window's start; the instances without one are read, then read again after ONE
    shared sleep, so a call costs at most SAMPLE_MIN however many instances it covers.

    Readings are keyed by the caller's token for one run of an instance (id + start time):
    a restarted instance counts from zero again."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._last: dict[str, CpuSample] = {}
        self._lock = threading.Lock()
        self._sleep = sleep

    def percents(self, readers: dict[str, Callable[[], int | None]]) -> dict[str, float | None]:
        now = time.monotonic()
        first: dict[str, CpuSample | None] = {}
        with self._lock:
            for token in readers:
                prev = self._last.get(token)
                if prev is not None and SAMPLE_MIN <= now - prev.at <= SAMPLE_MAX:
                    first[token] = prev
        fresh = [t for t in readers if t not in first]
        if fresh:
            for t in fresh:
                first[t] = _sample(readers[t])
            self._sleep(SAMPLE_MIN)
        out: dict[str, float | None] = {}
        latest: dict[str, CpuSample] = {}
        for token, read in readers.items():
            cur, prev = _sample(read), first[token]
            if cur is None or prev is None or cur.used_ns < prev.used_ns:
                out[token] = None
                continue
            out[token] = round(cpu_percent(prev, cur), 1)
            latest[token] = cur
        with self._lock:
            self._last = {t: s for t, s in self._last.items()
                          if time.monotonic() - s.at <= SAMPLE_MAX}
            self._last.update(latest)
        return out


def _sample(read: Callable[[], int | None]) -> CpuSample | None:
    used = read()
    return None if used is None else CpuSample(time.monotonic(), used)
