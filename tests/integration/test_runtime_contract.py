"""One contract, every runtime: what the agent relies on from a Runtime, checked against the
container runtime (runc) and the process runtime alike, called directly (no server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from rackfire.runtime import runcstate
from rackfire.runtime.base import Runtime
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.process import ProcessRuntime

from harness import unique, wait_for

pytestmark = pytest.mark.root

NET = NetworkConfig("", "10.89.250.0/24", "10.89.250.1", 24)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_host(ImageStore(tmp_path_factory.mktemp("images")), "base")


@pytest.fixture(params=[RuntimeKind.CONTAINER, RuntimeKind.PROCESS])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    rt: Runtime = (ContainerRuntime(tmp_path / "instances", "h")
                   if request.param is RuntimeKind.CONTAINER
                   else ProcessRuntime(tmp_path / "instances", "h"))
    yield rt
    for f in rt.observe():
        rt.destroy(f.key)


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("ct")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


def request_for(rt: Runtime, stack: str, image: ImageInfo, *, files: str = "one",
                command: tuple[str, ...] = ("sleep", "100000")) -> InstanceRequest:
    return InstanceRequest(
        key=InstanceKey(stack, "box", 0), action_id="a1", runtime=rt.kind,
        image_digest=image.digest, command=command, env=(("COLOR", "blue"),),
        resources=Resources(memory=64 << 20, disk=32 << 20, pids=50),
        files=(("/etc/app.conf", files),), ip="10.89.250.2",
        network=NetworkConfig(stack, NET.subnet, NET.gateway, NET.prefix),
        spec_hash="s1", spec_fields=(("command", "c1"),), config_hash=files)


def only(rt: Runtime, stack: str) -> list[object]:
    return [f for f in rt.observe() if f.key.stack == stack]


def test_create_observe_destroy(runtime: Runtime, stack: str, image: ImageInfo,
                                tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    req = request_for(runtime, stack, image)
    runtime.create(req, image, hosts)
    [f] = runtime.observe()
    assert f.key == req.key and f.state is InstanceState.RUNNING and f.pid
    assert (f.spec_hash, f.config_hash, f.spec_fields) == ("s1", "one", (("command", "c1"),))
    assert runtime.log_path(req.key).exists()

    # Creating again over a live instance starts clean (repair path): still exactly one.
    runtime.create(req, image, hosts)
    assert [g.key for g in runtime.observe()] == [req.key]

    runtime.destroy(req.key)
    assert runtime.observe() == []
    runtime.destroy(req.key)  # not found on delete is success


def test_reconfigure_keeps_identity_restart_revives(runtime: Runtime, stack: str,
                                                    image: ImageInfo, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    runtime.create(request_for(runtime, stack, image), image, hosts)
    [before] = runtime.observe()
    new = request_for(runtime, stack, image, files="two")
    runtime.reconfigure(new, image, hosts)
    [after] = runtime.observe()
    assert after.config_hash == "two" and after.state is InstanceState.RUNNING
    assert after.pid != before.pid and after.ip == before.ip

    # A command that exits is observed as stopped, and restart runs it again.
    quick = request_for(runtime, stack, image, command=("sh", "-c", "sleep 0.3"))
    runtime.destroy(quick.key)
    runtime.create(quick, image, hosts)
    wait_for(lambda: runtime.observe()[0].state is InstanceState.STOPPED, 20, "it to stop")
    runtime.restart(quick, image, hosts)
    assert runtime.observe()[0].state in (InstanceState.RUNNING, InstanceState.STOPPED)
    started = runtime.observe()[0].started_at
    assert started is not None and started > time.time() - 10


def test_interrupted_create_is_observed_partial(runtime: Runtime, stack: str,
                                                image: ImageInfo, tmp_path: Path) -> None:
    from rackfire.runtime.layout import instance_dir, write_meta

    req = request_for(runtime, stack, image)
    base = runtime.log_path(req.key).parent.parent
    write_meta(instance_dir(base, req.key), req, phase="creating")  # a crash right after intent
    [f] = runtime.observe()
    assert f.state is InstanceState.PARTIAL
    runtime.destroy(req.key)
    assert runtime.observe() == []


def test_capabilities_are_declared(runtime: Runtime) -> None:
    if runtime.kind is RuntimeKind.CONTAINER:
        assert runtime.caps.isolated and runtime.caps.disk_limit and runtime.caps.own_ip
        assert runtime.netns(InstanceKey("s", "r", 0)) == "rf-s.r.0"
    else:
        assert not runtime.caps.isolated and runtime.netns(InstanceKey("s", "r", 0)) is None


def test_container_states_read_from_runc_state_files_agree_with_runc(
        stack: str, image: ImageInfo, tmp_path: Path) -> None:
    rt = ContainerRuntime(tmp_path / "instances", "h")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    req = request_for(rt, stack, image)
    rt.create(req, image, hosts)
    try:
        def runc_says() -> tuple[str, int | None]:
            out = subprocess.run(["runc", "--root", str(rt.runc_root), "state", req.key.id],
                                 capture_output=True, text=True, check=True).stdout
            state = json.loads(out)
            return state["status"], state["pid"] or None

        c = runcstate.container(rt.runc_root, req.key.id)
        assert c is not None and (c.status, c.pid) == runc_says() == ("running", c.pid)
        assert runcstate.containers(rt.runc_root)[req.key.id] == c
        os.kill(c.pid, signal.SIGKILL)  # PID 1 of its namespace: the container stops
        wait_for(lambda: runc_says()[0] == "stopped", 10, "runc to see it stopped")
        assert runcstate.container(rt.runc_root, req.key.id) == runcstate.RuncContainer(
            req.key.id, "stopped", None)
        [f] = only(rt, stack)
        assert f.state is InstanceState.STOPPED  # what observe reports from it
        assert runcstate.container(rt.runc_root, "no-such-container") is None
    finally:
        rt.destroy(req.key)
