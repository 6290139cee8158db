"""An instance reads its own limits from /sys/fs/cgroup, as a JVM, Go or Node runtime does to
size itself: a cgroup namespace of its own and a read-only cgroup mount (runc, directly)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.images.build import build_host
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import Resources
from rackfire.net import links
from rackfire.runtime.base import inputs
from rackfire.runtime.container import ContainerRuntime

from harness import unique

pytestmark = pytest.mark.root

NET = NetworkConfig("", "10.89.248.0/24", "10.89.248.1", 24)
MiB = 1 << 20
# What the host mounts decides what runc mounts inside: cgroup2 alone, or v1 hierarchies.
UNIFIED = Path("/sys/fs/cgroup/cgroup.controllers").exists()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_host(ImageStore(tmp_path_factory.mktemp("images")), "base")


@pytest.fixture
def ct(tmp_path: Path) -> Iterator[ContainerRuntime]:
    rt = ContainerRuntime(tmp_path / "instances", "h")
    yield rt
    for f in rt.observe():
        rt.destroy(f.key, stop_timeout=1.0)


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("cg")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


def inside(ct: ContainerRuntime, key: InstanceKey, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runc", "--root", str(ct.runc_root), "exec", key.id,
                           "sh", "-c", script], capture_output=True, text=True, timeout=30,
                          check=False)


def limits_inside(ct: ContainerRuntime, key: InstanceKey) -> tuple[str, str]:
    """(memory limit in bytes, "quota period") as the instance reads them."""
    if UNIFIED:
        mem, cpu = "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"
        proc = inside(ct, key, f"cat {mem}; cat {cpu}")
        assert proc.returncode == 0, proc.stderr
        m, c = proc.stdout.splitlines()
        return m, c
    proc = inside(ct, key, "cd /sys/fs/cgroup && cat memory/memory.limit_in_bytes "
                           "cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us")
    assert proc.returncode == 0, proc.stderr
    m, quota, period = proc.stdout.split()
    return m, f"{quota} {period}"


def test_an_instance_reads_its_own_limits_read_only(ct: ContainerRuntime, stack: str,
                                                    image: ImageInfo, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    req = InstanceRequest(
        key=InstanceKey(stack, "box", 0), action_id="a1", runtime=ct.kind,
        image_digest=image.digest, command=("sleep", "100000"), env=(),
        resources=Resources(cpu=0.5, memory=64 * MiB, disk=32 * MiB, pids=50), files=(),
        ip="10.89.248.2", network=NetworkConfig(stack, NET.subnet, NET.gateway, NET.prefix),
        spec_hash="s1", spec_fields=(("resources", "s1"),), config_hash="c")
    ct.create(req, *inputs(ct, req, image, hosts))

    assert limits_inside(ct, req.key) == (str(64 * MiB), "50000 100000")
    # Its own cgroup namespace: the instance sees itself at the root, not the host's tree.
    proc = inside(ct, req.key, "cat /proc/self/cgroup")
    assert proc.returncode == 0, proc.stderr
    assert all(line.endswith(":/") for line in proc.stdout.splitlines()), proc.stdout

    # Read-only: an instance cannot raise its own limit (nor anything else there).
    target = ("/sys/fs/cgroup/memory.max" if UNIFIED
              else "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    proc = inside(ct, req.key, f"echo {256 * MiB} > {target}")
    assert proc.returncode != 0
    assert "read-only" in proc.stderr.lower(), proc.stderr
    proc = inside(ct, req.key, "mkdir /sys/fs/cgroup/escape")
    assert proc.returncode != 0
    assert limits_inside(ct, req.key) == (str(64 * MiB), "50000 100000")

    # A live resize shows inside at once, in the same running instance.
    ct.resize(replace(req, resources=Resources(cpu=1.5, memory=128 * MiB, disk=32 * MiB,
                                               pids=50), spec_hash="s2"))
    assert limits_inside(ct, req.key) == (str(128 * MiB), "150000 100000")
