"""Releases and data of the runtimes, driven directly (no server): data disks that outlive
their instances until the stack's teardown, reloads of rendered files without a restart, and
a release layer (`/app`) between the config layer and the image."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.agent.local import LocalAgent
from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.images.build import build_host
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import DataDisk, ReloadSpec, Resources
from rackfire.net import links
from rackfire.runtime import disks, mounts
from rackfire.runtime.base import Runtime, inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.layout import instance_dir, read_meta
from rackfire.runtime.process import ProcessRuntime

from harness import unique, wait_for

pytestmark = pytest.mark.root

NET = NetworkConfig("", "10.89.248.0/24", "10.89.248.1", 24)
MiB = 1 << 20
# Prints the config file at start and on every SIGHUP (the shell is PID 1 of the container:
# it gets the signal because it traps it).
ECHO_ON_HUP = ('trap \'echo "conf=$(cat etc/app.conf)"\' HUP; echo "conf=$(cat etc/app.conf)"; '
               'while :; do sleep 0.1; done')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    return ImageStore(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def image(store: ImageStore) -> ImageInfo:
    return build_host(store, "base")


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _cleanup(rt: Runtime) -> None:
    for f in rt.observe():
        rt.destroy(f.key, stop_timeout=1.0)


@pytest.fixture
def ct(data: Path) -> Iterator[ContainerRuntime]:
    # As LocalAgent lays it out, so a LocalAgent on `data` sees these instances and disks.
    rt = ContainerRuntime(data / "instances", "h", volumes=data / "volumes")
    yield rt
    _cleanup(rt)
    mounts.release_under(data)  # a failed test's strays, so none leaks into the next


@pytest.fixture
def pr(data: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(data / "instances", "h")
    yield rt
    _cleanup(rt)


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("rl")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


def request_for(rt: Runtime, stack: str, image: ImageInfo, command: str, *,
                conf: str = "one", data: DataDisk | None = None,
                reload: ReloadSpec | None = None, app_digest: str = "") -> InstanceRequest:
    return InstanceRequest(
        key=InstanceKey(stack, "box", 0), action_id=f"a-{conf}", runtime=rt.kind,
        image_digest=image.digest, command=("sh", "-c", command), env=(),
        resources=Resources(memory=64 * MiB, disk=32 * MiB, pids=50),
        files=(("/etc/app.conf", conf),), ip="10.89.248.2",
        network=NetworkConfig(stack, NET.subnet, NET.gateway, NET.prefix),
        spec_hash="s1", spec_fields=(("command", "c1"),), config_hash=conf,
        data=data, reload=reload, app_digest=app_digest, files_layout="L1")


def sh_in(ct: ContainerRuntime, key: InstanceKey, script: str) -> str:
    h = ct.exec(key, ["sh", "-c", script], tty=False)
    out, err = h.proc.communicate(timeout=60)
    assert h.proc.returncode == 0, (out + err).decode(errors="replace")
    return out.decode()


def facts(rt: Runtime, key: InstanceKey) -> InstanceFacts:
    [f] = [f for f in rt.observe() if f.key == key]
    return f


def leaks(root: Path) -> list[str]:
    """Mounts and loop devices of anything under `root`."""
    mine = str(root.resolve())
    with open("/proc/self/mountinfo") as f:
        found = [line.strip() for line in f if mine in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return found + [line for line in loops.stdout.splitlines() if mine in line]


# data disks -------------------------------------------------------------------------------

def test_data_disk_outlives_instance_until_teardown(
        ct: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path, data: Path) -> None:
    disk = DataDisk("/var/lib/app", 48 * MiB)
    req = request_for(ct, stack, image, "exec sleep 100000", data=disk)
    ct.create(req, *inputs(ct, req, image, hosts))
    volume = data / "volumes" / stack / "box-0.img"
    assert volume.is_file()
    sh_in(ct, req.key, "echo kept > /var/lib/app/f")
    # Its own ext4, with its own limit (not the 32 MiB root disk's).
    d = instance_dir(ct.base, req.key)
    assert abs(disks.room(volume, d.data).granted - disk.size) < MiB
    assert "/var/lib/app" in sh_in(ct, req.key, "cat /proc/self/mountinfo")

    ct.restart(req, *inputs(ct, req, image, hosts))
    assert sh_in(ct, req.key, "cat /var/lib/app/f") == "kept\n"
    ct.stop(req.key, stop_timeout=1)
    ct.restart(req, *inputs(ct, req, image, hosts))
    # A restarted server (a new runtime) after a host reboot (nothing mounted) finds it.
    ct.stop(req.key, stop_timeout=1)
    for path in (d.rootfs, d.disk, d.data):
        mounts.unmount(path)
    again = ContainerRuntime(ct.base, "h", volumes=ct.volumes)
    again.restart(req, *inputs(again, req, image, hosts))
    assert sh_in(ct, req.key, "cat /var/lib/app/f") == "kept\n"
    ct.reconfigure(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two"),
                   *inputs(ct, req, image, hosts))
    assert sh_in(ct, req.key, "cat /var/lib/app/f") == "kept\n"

    # Replace (and scale-down): the instance goes, its disk stays, unmounted.
    ct.destroy(req.key, stop_timeout=1)
    assert volume.is_file() and not d.root.exists()
    assert leaks(data) == []
    ct.create(req, *inputs(ct, req, image, hosts))
    assert sh_in(ct, req.key, "cat /var/lib/app/f") == "kept\n"
    ct.destroy(req.key, stop_timeout=1)

    agent = LocalAgent(data, host="h")
    agent.teardown_stack(stack, keep_data=True)
    assert volume.is_file()
    agent.teardown_stack(stack)
    assert not (data / "volumes" / stack).exists()
    assert leaks(data) == []


def test_teardown_frees_a_disk_left_mounted(ct: ContainerRuntime, stack: str,
                                            image: ImageInfo, hosts: Path, data: Path) -> None:
    """An interrupted destroy can leave the disk mounted: teardown unmounts it before it
    deletes the file (an unlinked image held by a loop device would leak its space)."""
    req = request_for(ct, stack, image, "exec sleep 100000", data=DataDisk("/srv", 16 * MiB))
    ct.create(req, *inputs(ct, req, image, hosts))
    ct.stop(req.key, stop_timeout=1)
    d = instance_dir(ct.base, req.key)
    stray = data / "stray"
    mounts.mount_disk(ct.volume(req.key), stray)
    mounts.unmount(d.rootfs)
    mounts.unmount(d.disk)
    mounts.unmount(d.data)
    links.detach_instance(req.key.id)
    shutil.rmtree(d.root)  # the instance is gone; its disk is still mounted elsewhere
    LocalAgent(data, host="h").teardown_stack(stack)
    assert not (data / "volumes" / stack).exists()
    assert leaks(data) == []


def test_data_disk_grows(ct: ContainerRuntime, stack: str, image: ImageInfo,
                         hosts: Path) -> None:
    req = request_for(ct, stack, image, "exec sleep 100000", data=DataDisk("/srv", 16 * MiB))
    ct.create(req, *inputs(ct, req, image, hosts))
    pid = facts(ct, req.key).pid
    d = instance_dir(ct.base, req.key)
    bigger = replace(req, data=DataDisk("/srv", 40 * MiB), spec_hash="s2")
    ct.resize(bigger)  # within its headroom: at once, running
    assert abs(disks.room(ct.volume(req.key), d.data).granted - 40 * MiB) < MiB
    assert (read_meta(d) or {})["data"]["size"] == 40 * MiB
    assert facts(ct, req.key).pid == pid
    with pytest.raises(PrereqError, match="never shrink"):
        ct.check_resize(req)
    # A new instance of the key asking for more grows the disk it reuses; asking for less
    # keeps it as it is.
    ct.destroy(req.key, stop_timeout=1)
    ct.create(replace(req, data=DataDisk("/srv", 56 * MiB)), *inputs(ct, req, image, hosts))
    assert abs(disks.room(ct.volume(req.key), d.data).granted - 56 * MiB) < MiB
    ct.destroy(req.key, stop_timeout=1)
    ct.create(req, *inputs(ct, req, image, hosts))
    assert abs(disks.room(ct.volume(req.key), d.data).granted - 56 * MiB) < MiB


# reload -----------------------------------------------------------------------------------

def test_reload_signal_keeps_the_process(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                         hosts: Path) -> None:
    req = request_for(ct, stack, image, f"cd / && {ECHO_ON_HUP}",
                      reload=ReloadSpec(signal="HUP"))
    ct.create(req, *inputs(ct, req, image, hosts))
    log = ct.log_path(req.key)
    wait_for(lambda: "conf=one" in log.read_text(), 20, "the first read")
    pid = facts(ct, req.key).pid

    ct.reload(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two"))
    wait_for(lambda: "conf=two" in log.read_text(), 20, "the reload")
    f = facts(ct, req.key)
    assert f.pid == pid and f.state is InstanceState.RUNNING
    assert f.config_hash == "two" and f.files_layout == "L1"
    d = instance_dir(ct.base, req.key)
    # In the upper dir, through the overlay; the config layer under it is left as it was
    # (a lower layer must not change under a mounted overlay).
    assert (d.disk / "upper/etc/app.conf").read_text() == "two"
    assert (d.config / "etc/app.conf").read_text() == "one"
    mode = (d.config / "etc/app.conf").stat().st_mode & 0o777
    assert sh_in(ct, req.key, "stat -c %a /etc/app.conf").strip() == f"{mode:o}"
    # No temp files left beside it.
    assert sh_in(ct, req.key, "ls -a /etc | grep rackfire || true") == ""
    # Back to the content the config layer still has: written all the same.
    ct.reload(replace(req, files=(("/etc/app.conf", "one"),), config_hash="one"))
    assert sh_in(ct, req.key, "cat /etc/app.conf").strip() == "one"

    # A reconfigure after it: the config layer's new file wins over the reload's upper copy.
    ct.reconfigure(replace(req, files=(("/etc/app.conf", "three"),), config_hash="three"),
                   *inputs(ct, req, image, hosts))
    wait_for(lambda: "conf=three" in log.read_text(), 20, "the reconfigured start")
    assert sh_in(ct, req.key, "cat /etc/app.conf") == "three"
    assert facts(ct, req.key).pid != pid


def test_reload_exec_and_its_failure(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                     hosts: Path) -> None:
    good = ReloadSpec(exec=("sh", "-c", "cp /etc/app.conf /tmp/seen"))
    req = request_for(ct, stack, image, "exec sleep 100000", reload=good)
    ct.create(req, *inputs(ct, req, image, hosts))
    ct.reload(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two"))
    assert sh_in(ct, req.key, "cat /tmp/seen") == "two"

    bad = ReloadSpec(exec=("sh", "-c", "echo cannot reload >&2; exit 3"))
    with pytest.raises(ExecError, match="cannot reload"):
        ct.reload(replace(req, files=(("/etc/app.conf", "three"),), config_hash="three",
                          reload=bad))
    # Not re-read: the old hash stays, so the next reconcile tries again.
    assert facts(ct, req.key).config_hash == "two"

    # Stopped, its overlay unmounted (as after a reboot): the config layer gets the new
    # file, and the upper copy the first reload left must not hide it.
    ct.stop(req.key, stop_timeout=1)
    mounts.unmount(instance_dir(ct.base, req.key).rootfs)
    ct.reload(replace(req, files=(("/etc/app.conf", "four"),), config_hash="four"))
    assert facts(ct, req.key).config_hash == "four"
    ct.restart(req, *inputs(ct, req, image, hosts))
    assert sh_in(ct, req.key, "cat /etc/app.conf") == "four"

    # A reload cannot add a file.
    with pytest.raises(PrereqError, match="add or remove"):
        ct.reload(replace(req, files=(("/etc/app.conf", "x"), ("/etc/more", "y"))))


def test_reload_never_follows_the_instances_symlinks(
        ct: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path,
        tmp_path: Path) -> None:
    """Written from the host through the overlay: a dir the instance swapped for a symlink
    (absolute, so on the host it points out of the rootfs) is refused, not followed."""
    canary = tmp_path / "canary"
    canary.mkdir()
    req = replace(request_for(ct, stack, image, "exec sleep 100000",
                              reload=ReloadSpec(signal="HUP")),
                  files=(("/opt/app/app.conf", "one"),))
    ct.create(req, *inputs(ct, req, image, hosts))
    sh_in(ct, req.key, f"rm -r /opt/app && ln -s {canary} /opt/app")
    with pytest.raises(ExecError, match=r"cannot write /opt/app/app\.conf"):
        ct.reload(replace(req, files=(("/opt/app/app.conf", "two"),), config_hash="two"))
    assert list(canary.iterdir()) == []
    # Nor does a reconfigure follow it, clearing the upper dir (the link is the instance's).
    ct.reconfigure(replace(req, files=(("/opt/app/app.conf", "three"),),
                           config_hash="three"), *inputs(ct, req, image, hosts))
    assert list(canary.iterdir()) == []


def test_reload_through_local_agent_and_process_runtime(
        pr: ProcessRuntime, stack: str, image: ImageInfo, hosts: Path, data: Path) -> None:
    req = request_for(pr, stack, image, ECHO_ON_HUP, reload=ReloadSpec(signal="SIGHUP"))
    pr.create(req, *inputs(pr, req, image, hosts))
    log = pr.log_path(req.key)
    wait_for(lambda: "conf=one" in log.read_text(), 20, "the first read")
    pid = facts(pr, req.key).pid
    agent = LocalAgent(data, host="h")
    agent.reload(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two",
                         action_id="r1"))
    wait_for(lambda: "conf=two" in log.read_text(), 20, "the reload")
    f = facts(pr, req.key)
    assert f.pid == pid and f.config_hash == "two"
    assert f.files_layout == "L1"


def test_process_runtime_refuses_data_and_app(pr: ProcessRuntime, stack: str,
                                              image: ImageInfo, hosts: Path) -> None:
    for req in (request_for(pr, stack, image, "true", data=DataDisk("/srv", MiB)),
                request_for(pr, stack, image, "true", app_digest="ab" * 32)):
        with pytest.raises(PrereqError, match="needs the container runtime"):
            pr.create(req, *inputs(pr, req, image, hosts))
        assert pr.observe() == []


# the release layer ------------------------------------------------------------------------

def test_app_layer_sits_between_config_and_image(
        ct: ContainerRuntime, store: ImageStore, stack: str, image: ImageInfo,
        hosts: Path) -> None:
    with store.staging() as stage:
        (stage / "app").mkdir()
        (stage / "app" / "hello.txt").write_text("hello from the release\n")
        digest = hashlib.sha256(b"test release layer").hexdigest()
        app = store.commit("release-test", stage, digest, "tarball")

    req = request_for(ct, stack, image, "exec sleep 100000", app_digest=app.digest)
    with pytest.raises(NotFound, match="release layer"):
        ct.create(req, *inputs(ct, req, image, hosts))  # the layer must be given: refused
    assert ct.observe() == []  # before any change

    ct.create(req, *inputs(ct, req, image, hosts, app))
    assert sh_in(ct, req.key, "cat /app/hello.txt") == "hello from the release\n"
    assert (read_meta(instance_dir(ct.base, req.key)) or {})["app"] == app.digest
    ct.restart(req, *inputs(ct, req, image, hosts, app))
    assert sh_in(ct, req.key, "cat /app/hello.txt") == "hello from the release\n"
    ct.reconfigure(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two"),
                   *inputs(ct, req, image, hosts, app))
    assert sh_in(ct, req.key, "cat /app/hello.txt /etc/app.conf") == \
        "hello from the release\ntwo"
