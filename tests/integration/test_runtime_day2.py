"""Day-2 primitives of the runtimes, driven directly (no server): live resize, disk growth,
stats, and a graceful stop that keeps the instance's disk."""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.agent.local import LocalAgent
from rackfire.errors import PrereqError
from rackfire.images.build import build_host
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import (
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import Resources, RuntimeKind
from rackfire.net import links
from rackfire.runtime import disks, mounts
from rackfire.runtime.base import Runtime, inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.layout import instance_dir
from rackfire.runtime.process import ProcessRuntime

from harness import unique, wait_for

pytestmark = pytest.mark.root

NET = NetworkConfig("", "10.89.249.0/24", "10.89.249.1", 24)
CG = Path("/sys/fs/cgroup")
MiB = 1 << 20
LIMITS = Resources(cpu=0.5, memory=64 * MiB, disk=32 * MiB, pids=50)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_host(ImageStore(tmp_path_factory.mktemp("images")), "base")


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    return path


def _cleanup(rt: Runtime) -> None:
    for f in rt.observe():
        rt.destroy(f.key, stop_timeout=1.0)


@pytest.fixture
def ct(tmp_path: Path) -> Iterator[ContainerRuntime]:
    # Under data/instances, so a LocalAgent on tmp_path/data sees these instances too.
    rt = ContainerRuntime(tmp_path / "data" / "instances", "h")
    yield rt
    _cleanup(rt)


@pytest.fixture
def pr(tmp_path: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path / "data" / "instances", "h")
    yield rt
    _cleanup(rt)


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("d2")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


def request_for(rt: Runtime, stack: str, image: ImageInfo, command: str, *,
                role: str = "box", ip: str = "10.89.249.2",
                resources: Resources = LIMITS, spec_hash: str = "s1") -> InstanceRequest:
    return InstanceRequest(
        key=InstanceKey(stack, role, 0), action_id="a1", runtime=rt.kind,
        image_digest=image.digest, command=("sh", "-c", command), env=(),
        resources=resources, files=(), ip=ip,
        network=NetworkConfig(stack, NET.subnet, NET.gateway, NET.prefix),
        spec_hash=spec_hash, spec_fields=(("resources", spec_hash),), config_hash="c")


def cgroup(key: InstanceKey, controller: str, name: str) -> str:
    return (CG / controller / "rackfire" / key.id / name).read_text().strip()


def pid_of(rt: Runtime, key: InstanceKey) -> int | None:
    [f] = [f for f in rt.observe() if f.key == key]
    return f.pid


def fill(path: Path) -> int:
    """Write zeros to `path` until the disk is full; return how much fit."""
    chunk, written = b"\0" * MiB, 0
    with open(path, "wb") as f:
        try:
            while True:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return written


# live resize ------------------------------------------------------------------------------

def test_resize_changes_limits_live(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                    hosts: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    pid = pid_of(ct, req.key)
    assert cgroup(req.key, "memory", "memory.limit_in_bytes") == str(64 * MiB)

    bigger = Resources(cpu=1.5, memory=128 * MiB, disk=32 * MiB, pids=80)
    ct.resize(replace(req, resources=bigger, spec_hash="s2"))
    assert cgroup(req.key, "memory", "memory.limit_in_bytes") == str(128 * MiB)
    assert cgroup(req.key, "memory", "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert cgroup(req.key, "cpu", "cpu.cfs_quota_us") == "150000"
    assert cgroup(req.key, "cpu", "cpu.cfs_period_us") == "100000"
    assert cgroup(req.key, "pids", "pids.max") == "80"
    [f] = ct.observe()
    assert f.pid == pid and f.state is InstanceState.RUNNING  # no restart
    assert f.resources == bigger and f.spec_hash == "s2"

    # None lifts a limit.
    ct.resize(replace(req, resources=Resources(disk=32 * MiB), spec_hash="s3"))
    assert int(cgroup(req.key, "memory", "memory.limit_in_bytes")) >= 1 << 62
    assert cgroup(req.key, "cpu", "cpu.cfs_quota_us") == "-1"
    assert cgroup(req.key, "pids", "pids.max") == "max"
    assert pid_of(ct, req.key) == pid


def test_memory_below_usage_is_refused_and_old_limits_stay(
        ct: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path) -> None:
    req = request_for(ct, stack, image,
                      "exec python3 -c 'import time; b = b\"x\" * (40 << 20); time.sleep(1e6)'")
    ct.create(req, *inputs(ct, req, image, hosts))
    pid = pid_of(ct, req.key)
    wait_for(lambda: (ct.stats([req.key])[0].memory_used or 0) > 40 * MiB, 20, "allocation")

    # Refused before any change: it uses more than the new limit (no swap to push it to).
    with pytest.raises(PrereqError, match="would not hold") as err:
        ct.resize(replace(req, resources=replace(LIMITS, memory=16 * MiB, pids=99),
                          spec_hash="s2"))
    assert err.value.hint
    assert cgroup(req.key, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert cgroup(req.key, "pids", "pids.max") == "50"
    [f] = ct.observe()
    assert f.pid == pid and f.resources == LIMITS and f.spec_hash == "s1"


# disks ------------------------------------------------------------------------------------

def sh_in(ct: ContainerRuntime, key: InstanceKey, script: str) -> tuple[int, str]:
    """Run `script` inside the instance (runc exec); its exit status and output."""
    h = ct.exec(key, ["sh", "-c", script], tty=False)
    out, err = h.proc.communicate(timeout=60)
    return h.proc.returncode, (out + err).decode(errors="replace")


def held(path: Path) -> int:
    """Bytes a sparse file holds on the host."""
    return path.stat().st_blocks * 512


def fsck(image: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`e2fsck -fn` of an unmounted disk, on a copy without its reservation: e2fsck takes a
    reservation of over half the disk, a headroom disk's, for a corrupt superblock."""
    copy = tmp / "fsck.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    subprocess.run(["debugfs", "-w", "-R", "ssv r_blocks_count 0", str(copy)], check=True,
                   capture_output=True)
    try:
        return subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True,
                              check=False)
    finally:
        copy.unlink()


def unmount_disk(ct: ContainerRuntime, key: InstanceKey) -> None:
    d = instance_dir(ct.base, key)
    mounts.unmount(d.rootfs)
    mounts.unmount(d.disk)


def without_headroom(ct: ContainerRuntime, key: InstanceKey, size: int) -> None:
    """Give a stopped instance a disk made as before headroom: an ext4 of `size` bytes."""
    d = instance_dir(ct.base, key)
    unmount_disk(ct, key)
    d.disk_image.unlink()
    with open(d.disk_image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E",
                    "lazy_itable_init=1,lazy_journal_init=1", str(d.disk_image)], check=True)
    assert not disks.has_headroom(d.disk_image)


def test_disk_grows_online(ct: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path,
                           tmp_path: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    d = instance_dir(ct.base, req.key)
    pid = pid_of(ct, req.key)
    ceiling = d.disk_image.stat().st_size
    assert ceiling == disks.disk_ceiling(32 * MiB) >= 8 * 32 * MiB
    assert held(d.disk_image) < 2 * MiB  # sparse: the ceiling costs (almost) nothing
    [s] = ct.stats([req.key])
    assert s.disk_limit == 32 * MiB

    # Written from inside: a process of the instance, root without CAP_SYS_RESOURCE.
    rc, out = sh_in(ct, req.key, "dd if=/dev/zero of=/fill bs=64k")
    assert rc != 0 and "No space left" in out, out
    filled = (d.disk / "upper" / "fill").stat().st_size
    assert 30 * MiB < filled <= 32 * MiB  # about the disk's size: its metadata is apart

    bigger = replace(req, resources=replace(LIMITS, disk=64 * MiB, memory=96 * MiB),
                     spec_hash="s2")
    ct.resize(bigger)  # within the headroom: no CAP_SYS_RESOURCE needed
    rc, out = sh_in(ct, req.key, "dd if=/dev/zero of=/more bs=1M count=24")
    assert rc == 0, out
    rc, out = sh_in(ct, req.key, "dd if=/dev/zero of=/rest bs=64k")
    assert rc != 0 and "No space left" in out, out
    written = sum((d.disk / "upper" / n).stat().st_size for n in ("fill", "more", "rest"))
    assert 62 * MiB < written <= 64 * MiB

    assert pid_of(ct, req.key) == pid  # no restart
    assert cgroup(req.key, "memory", "memory.limit_in_bytes") == str(96 * MiB)
    [s] = ct.stats([req.key])
    assert s.disk_limit == 64 * MiB
    assert s.disk_used is not None and written <= s.disk_used <= s.disk_limit
    assert ct.observe()[0].resources == bigger.resources
    # Nothing was resized; the image holds what was written, the journal, a little metadata.
    assert d.disk_image.stat().st_size == ceiling
    assert held(d.disk_image) < written + 8 * MiB

    ct.stop(req.key, stop_timeout=1.0)
    unmount_disk(ct, req.key)
    check = fsck(d.disk_image, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_disk_grows_past_its_headroom(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                      hosts: Path, tmp_path: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    d = instance_dir(ct.base, req.key)
    ceiling = d.disk_image.stat().st_size
    huge = replace(req, resources=replace(LIMITS, disk=ceiling), spec_hash="s2")

    if not disks.can_grow_online():
        # Past the ceiling the filesystem itself grows, which needs CAP_SYS_RESOURCE while
        # it is mounted: refused before any change; a stopped instance's grows offline.
        with pytest.raises(PrereqError, match="CAP_SYS_RESOURCE"):
            ct.resize(huge)
        assert d.disk_image.stat().st_size == ceiling
        assert ct.stats([req.key])[0].disk_limit == 32 * MiB
        ct.stop(req.key, stop_timeout=1.0)
    ct.resize(huge)
    ct.restart(huge, *inputs(ct, huge, image, hosts))
    assert d.disk_image.stat().st_size == disks.disk_ceiling(ceiling)
    assert held(d.disk_image) < 4 * MiB
    [s] = ct.stats([req.key])
    assert s.disk_limit == ceiling
    assert ct.observe()[0].resources == huge.resources

    ct.stop(req.key, stop_timeout=1.0)
    unmount_disk(ct, req.key)
    check = fsck(d.disk_image, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_stopped_disk_grows_offline(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                    hosts: Path) -> None:
    # First run: fill the root until ENOSPC. A run on the grown disk: write 16 MiB more.
    req = request_for(ct, stack, image, (
        "if [ -e /fill ]; then dd if=/dev/zero of=/more bs=1M count=16 && echo ok > /more.ok;"
        " else dd if=/dev/zero of=/fill bs=1M; fi; exec sleep 100000"))
    ct.create(req, *inputs(ct, req, image, hosts))
    d = instance_dir(ct.base, req.key)
    wait_for(lambda: "No space left" in d.log.read_text(), 20, "the disk to fill")
    filled = (d.disk / "upper" / "fill").stat().st_size

    ct.stop(req.key, stop_timeout=1.0)
    unmount_disk(ct, req.key)  # as after a reboot: resize mounts it to measure it
    bigger = replace(req, resources=replace(LIMITS, disk=64 * MiB), spec_hash="s2")
    ct.resize(bigger)
    assert d.disk_image.stat().st_size == disks.disk_ceiling(32 * MiB)  # within headroom
    ct.restart(bigger, *inputs(ct, bigger, image, hosts))
    wait_for(lambda: (d.disk / "upper" / "more.ok").exists(), 20, "16 MiB more to fit")
    assert (d.disk / "upper" / "fill").stat().st_size == filled  # the old data is kept
    [s] = ct.stats([req.key])
    assert s.disk_limit == 64 * MiB


def test_a_disk_without_headroom_grows_as_before(ct: ContainerRuntime, stack: str,
                                                 image: ImageInfo, hosts: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    ct.stop(req.key, stop_timeout=1.0)
    without_headroom(ct, req.key, 32 * MiB)
    ct.restart(req, *inputs(ct, req, image, hosts))
    d = instance_dir(ct.base, req.key)
    again = replace(req, resources=replace(LIMITS, disk=48 * MiB), spec_hash="s2")
    if not disks.can_grow_online():
        with pytest.raises(PrereqError, match="CAP_SYS_RESOURCE"):
            ct.resize(again)
        assert d.disk_image.stat().st_size == 32 * MiB
    ct.stop(req.key, stop_timeout=1.0)
    unmount_disk(ct, req.key)
    os.truncate(d.disk_image, 48 * MiB)  # the file grew, then resize2fs never ran
    ct.resize(again)
    ct.restart(again, *inputs(ct, again, image, hosts))
    assert not disks.has_headroom(d.disk_image)
    [s] = ct.stats([req.key])
    assert s.disk_limit is not None and s.disk_limit > 36 * MiB  # 48 MiB of ext4: ~39 MiB
    with pytest.raises(PrereqError, match="grow"):
        ct.resize(replace(req, resources=replace(LIMITS, disk=40 * MiB), spec_hash="s3"))


def test_shrinking_the_disk_is_refused_before_any_change(
        ct: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    pid = pid_of(ct, req.key)
    smaller = replace(req, resources=replace(LIMITS, disk=16 * MiB, memory=128 * MiB),
                      spec_hash="s2")
    with pytest.raises(PrereqError, match="grow") as err:
        ct.resize(smaller)
    assert err.value.hint
    d = instance_dir(ct.base, req.key)
    assert d.disk_image.stat().st_size == disks.disk_ceiling(32 * MiB)
    assert ct.stats([req.key])[0].disk_limit == 32 * MiB
    assert cgroup(req.key, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    [f] = ct.observe()
    assert f.pid == pid and f.resources == LIMITS and f.spec_hash == "s1"


# stats ------------------------------------------------------------------------------------

def test_stats_measure_cpu_and_memory(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                      hosts: Path, tmp_path: Path) -> None:
    busy = request_for(ct, stack, image, "while :; do :; done", role="busy")
    hog = request_for(ct, stack, image, (
        "exec python3 -c 'import time; time.sleep(2); b = b\"x\" * (50 << 20); "
        "time.sleep(1e6)'"), role="hog", ip="10.89.249.3",
        resources=replace(LIMITS, memory=128 * MiB))
    ct.create(busy, *inputs(ct, busy, image, hosts))
    ct.create(hog, *inputs(ct, hog, image, hosts))
    before = {s.key: s for s in ct.stats([busy.key, hog.key])}[hog.key].memory_used
    assert before is not None

    cpu = []
    for _ in range(5):
        t = time.monotonic()
        [b, _] = ct.stats([busy.key, hog.key])
        assert time.monotonic() - t < 0.9  # one sleep for both instances, not one each
        assert b.cpu_percent is not None
        cpu.append(b.cpu_percent)
        time.sleep(0.1)
    assert 35 <= statistics.median(cpu) <= 65, cpu
    assert b.pids == 1 and b.memory_limit == 64 * MiB
    assert b.disk_limit is not None and b.disk_used is not None and b.net_rx is not None

    wait_for(lambda: (ct.stats([hog.key])[0].memory_used or 0) > before + 40 * MiB, 20,
             "memory_used to grow by the 50 MB allocated")

    # The agent reports the whole stack; a stopped instance is measured as idle.
    agent = LocalAgent(tmp_path / "data", runtimes=(RuntimeKind.CONTAINER,))
    ct.stop(busy.key, stop_timeout=1.0)
    by_key = {s.key: s for s in agent.stats(stack)}
    assert set(by_key) == {busy.key, hog.key}
    assert (by_key[busy.key].cpu_percent, by_key[busy.key].pids) == (0.0, 0)
    assert by_key[hog.key].pids == 1


# stop ------------------------------------------------------------------------------------

TRAP = ("trap 'echo bye > {marker}; exit 0' TERM; [ -e {data} ] || date +%s%N > {data}; "
        "while :; do sleep 0.1; done")


def test_stop_is_graceful_and_keeps_the_disk(ct: ContainerRuntime, stack: str,
                                             image: ImageInfo, hosts: Path) -> None:
    req = request_for(ct, stack, image, TRAP.format(marker="/marker", data="/data"))
    ct.create(req, *inputs(ct, req, image, hosts))
    d = instance_dir(ct.base, req.key)
    data = d.disk / "upper" / "data"
    written = wait_for(lambda: data.exists() and data.read_text(), 10, "data written")
    [before] = ct.observe()

    t = time.monotonic()
    ct.stop(req.key, stop_timeout=5.0)
    assert time.monotonic() - t < 4  # it exited on SIGTERM; no SIGKILL after the timeout
    assert (d.disk / "upper" / "marker").read_text() == "bye\n"
    [f] = ct.observe()
    assert f.state is InstanceState.STOPPED and d.disk_image.exists()

    ct.restart(req, *inputs(ct, req, image, hosts))
    [after] = ct.observe()
    assert after.state is InstanceState.RUNNING and after.pid != before.pid
    assert after.ip == before.ip and data.read_text() == written


def test_process_runtime_stop_resize_stats(pr: ProcessRuntime, image: ImageInfo,
                                           hosts: Path) -> None:
    req = request_for(pr, unique("pd"), image, TRAP.format(marker="marker", data="data"))
    pr.create(req, *inputs(pr, req, image, hosts))
    d = instance_dir(pr.base, req.key)
    wait_for(lambda: (d.workdir / "data").exists(), 10, "data written")

    [s] = pr.stats([req.key])
    assert s.pids is not None and s.pids >= 1
    assert s.memory_used is not None and s.memory_used > 0
    assert s.cpu_percent is not None and s.disk_used is not None and s.disk_used > 0
    assert (s.memory_limit, s.disk_limit, s.net_rx, s.net_tx) == (None, None, None, None)

    bigger = replace(req, resources=replace(LIMITS, memory=128 * MiB), spec_hash="s2")
    pid = pid_of(pr, req.key)
    pr.resize(bigger)
    [f] = pr.observe()
    assert f.pid == pid and f.resources == bigger.resources and f.spec_hash == "s2"

    pr.stop(req.key, stop_timeout=5.0)
    assert pr.observe()[0].state is InstanceState.STOPPED
    assert (d.workdir / "data").exists()
    [s] = pr.stats([req.key])
    assert (s.pids, s.memory_used, s.cpu_percent) == (0, 0, 0.0)


def test_agent_capacity(tmp_path: Path) -> None:
    agent = LocalAgent(tmp_path / "data", runtimes=(RuntimeKind.PROCESS,))
    cap = agent.capacity()
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert cap.cpus == os.cpu_count()
    assert 0 < cap.memory <= total - 512 * MiB
    st = os.statvfs(tmp_path)
    assert cap.disk >= st.f_bavail * st.f_frsize * 0.9


def test_agent_dispatches_stop_and_destroy(ct: ContainerRuntime, stack: str,
                                           image: ImageInfo, hosts: Path,
                                           tmp_path: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000")
    ct.create(req, *inputs(ct, req, image, hosts))
    agent = LocalAgent(tmp_path / "data", runtimes=(RuntimeKind.CONTAINER,))
    agent.stop(req.key, stop_timeout=1.0)
    assert ct.observe()[0].state is InstanceState.STOPPED
    agent.destroy(req.key, stop_timeout=1.0)
    assert ct.observe() == []
    assert subprocess.run(["losetup", "-j", str(instance_dir(ct.base, req.key).disk_image)],
                          capture_output=True, text=True, check=True).stdout == ""
