"""The runtime contract (tests/runtime_contract.py) against the container runtime (runc) and
the process runtime, called directly (no server); and what only runc's runtime shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.images.build import build_host
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import InstanceKey, InstanceState
from rackfire.net import links, names
from rackfire.runtime import runcstate
from rackfire.runtime.base import Runtime, inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.process import ProcessRuntime
from runtime_contract import NET, RuntimeContract, request_for

from harness import unique, wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_host(ImageStore(tmp_path_factory.mktemp("images")), "base")


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    return path


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("ct")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


def _cleanup(rt: Runtime) -> None:
    for f in rt.observe():
        rt.destroy(f.key)


class TestContainer(RuntimeContract):
    @pytest.fixture
    def runtime(self, tmp_path: Path) -> Iterator[Runtime]:
        rt = ContainerRuntime(tmp_path / "instances", "h")
        yield rt
        _cleanup(rt)

    def test_declares_isolation_and_its_netns(self, runtime: Runtime) -> None:
        assert runtime.caps.isolated and runtime.caps.disk_limit and runtime.caps.own_ip
        assert runtime.caps.disks and runtime.caps.app_layers and runtime.caps.cold_migrate
        assert runtime.netns(InstanceKey("s", "r", 0)) == "rf-s.r.0"

    def test_destroy_removes_its_attachment(self, runtime: Runtime, stack: str,
                                            image: ImageInfo, hosts: Path) -> None:
        req = request_for(runtime, stack, image)
        runtime.create(req, *inputs(runtime, req, image, hosts))
        assert links.netns_exists(req.key.id)
        runtime.destroy(req.key)
        assert not links.netns_exists(req.key.id)
        assert not Path(f"/sys/class/net/{names.veth_name(req.key.id)}").exists()


    def test_a_warm_container_waits_created_and_starts_as_it_was_made(
            self, runtime: ContainerRuntime, stack: str, image: ImageInfo, hosts: Path) -> None:
        """Made by `runc create` (its init waiting in its namespaces and cgroup): the start
        is `runc start` of that very process. One made for another config is made anew."""
        req = request_for(runtime, stack, image,
                          command=("sh", "-c", "echo up; exec sleep 100000"))
        runtime.create(replace(req, warm=True), *inputs(runtime, req, image, hosts))
        made = runcstate.container(runtime.runc.root, req.key.id)
        assert made is not None and made.status == "created" and made.pid
        runtime.restart(req, *inputs(runtime, req, image, hosts))
        [f] = runtime.observe()
        assert f.state is InstanceState.RUNNING and f.pid == made.pid
        wait_for(lambda: b"stdout F up" in runtime.log_path(req.key).read_bytes(), 10,
                 "its output, in the log its writer kept from the start")

        other = request_for(runtime, stack, image, files="two")
        runtime.reconfigure(replace(other, warm=True), *inputs(runtime, other, image, hosts))
        again = runcstate.container(runtime.runc.root, req.key.id)
        assert again is not None and again.status == "created" and again.pid != made.pid
        stale = replace(other, config_hash="three")  # not what it was made for
        runtime.restart(stale, *inputs(runtime, stale, image, hosts))
        [g] = runtime.observe()
        assert g.state is InstanceState.RUNNING and g.pid != again.pid


class TestProcess(RuntimeContract):
    @pytest.fixture
    def runtime(self, tmp_path: Path) -> Iterator[Runtime]:
        rt = ProcessRuntime(tmp_path / "instances", "h")
        yield rt
        _cleanup(rt)

    def test_declares_no_isolation(self, runtime: Runtime) -> None:
        assert not runtime.caps.isolated and not runtime.caps.own_ip
        assert not runtime.caps.disks and not runtime.caps.app_layers
        assert runtime.netns(InstanceKey("s", "r", 0)) is None


def test_container_states_read_from_runc_state_files_agree_with_runc(
        stack: str, image: ImageInfo, hosts: Path, tmp_path: Path) -> None:
    rt = ContainerRuntime(tmp_path / "instances", "h")
    req = request_for(rt, stack, image)
    rt.create(req, *inputs(rt, req, image, hosts))
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
        [f] = [f for f in rt.observe() if f.key.stack == stack]
        assert f.state is InstanceState.STOPPED  # what observe reports from it
        assert runcstate.container(rt.runc_root, "no-such-container") is None
    finally:
        rt.destroy(req.key)
