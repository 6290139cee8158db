"""One contract, every runtime: what the agent relies on from a Runtime, called directly (no
server). A test class inherits `RuntimeContract` and gives the fixtures `runtime` (a fresh
one on `tmp_path`, whose instances it destroys afterwards), `stack` (a stack whose network
the runtime can attach to), `image` and `hosts` (a hosts file); a runtime that does not run
commands (the fake) is told in its fixture that `QUICK` exits 3 after 0.3 s.

Run against runc and the process runtime in tests/integration/test_runtime_contract.py (root)
and against the fake in tests/unit/test_runtime_fake.py (no root)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rackfire.images.store import ImageInfo
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState, NetworkConfig
from rackfire.model.runtime import Capabilities
from rackfire.model.stack import Resources
from rackfire.runtime.base import Runtime, inputs
from rackfire.runtime.layout import instance_dir, write_meta
from rackfire.runtime.registry import REGISTRY

NET = NetworkConfig("", "10.89.250.0/24", "10.89.250.1", 24)
QUICK = ("sh", "-c", "sleep 0.3; exit 3")  # a command that exits by itself, soon


def wait_for(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def request_for(rt: Runtime, stack: str, image: ImageInfo, *, files: str = "one",
                command: tuple[str, ...] = ("sleep", "100000")) -> InstanceRequest:
    return InstanceRequest(
        key=InstanceKey(stack, "box", 0), action_id="a1", runtime=rt.kind,
        image_digest=image.digest, command=command, env=(("COLOR", "blue"),),
        resources=Resources(memory=64 << 20, disk=32 << 20, pids=50),
        files=(("/etc/app.conf", files),), ip="10.89.250.2",
        network=NetworkConfig(stack, NET.subnet, NET.gateway, NET.prefix),
        spec_hash="s1", spec_fields=(("command", "c1"),), config_hash=files)


class RuntimeContract:
    def test_create_observe_destroy(self, runtime: Runtime, stack: str, image: ImageInfo,
                                    hosts: Path) -> None:
        req = request_for(runtime, stack, image)
        runtime.create(req, *inputs(runtime, req, image, hosts))
        [f] = runtime.observe()
        assert f.key == req.key and f.state is InstanceState.RUNNING and f.pid
        assert f.runtime is runtime.kind
        assert (f.spec_hash, f.config_hash, f.spec_fields) == ("s1", "one", (("command", "c1"),))
        assert runtime.log_path(req.key).exists()

        # Creating again over a live instance starts clean (repair path): still exactly one.
        runtime.create(req, *inputs(runtime, req, image, hosts))
        assert [g.key for g in runtime.observe()] == [req.key]

        runtime.destroy(req.key)
        assert runtime.observe() == []
        runtime.destroy(req.key)  # not found on delete is success

    def test_reconfigure_keeps_identity_restart_revives(
            self, runtime: Runtime, stack: str, image: ImageInfo, hosts: Path) -> None:
        first = request_for(runtime, stack, image)
        runtime.create(first, *inputs(runtime, first, image, hosts))
        [before] = runtime.observe()
        new = request_for(runtime, stack, image, files="two")
        runtime.reconfigure(new, *inputs(runtime, new, image, hosts))
        [after] = runtime.observe()
        assert after.config_hash == "two" and after.state is InstanceState.RUNNING
        assert after.pid != before.pid and after.ip == before.ip

        # A command that exits is observed as stopped, and restart runs it again.
        quick = request_for(runtime, stack, image, command=QUICK)
        runtime.destroy(quick.key)
        runtime.create(quick, *inputs(runtime, quick, image, hosts))
        # Its writer records the exit once the run's output is in the log: a moment after the
        # run is seen gone (runtime/logwriter.py), so a look in between has no code yet.
        wait_for(lambda: runtime.observe()[0].exit_code is not None, 20, "its exit recorded")
        [ended] = runtime.observe()
        assert ended.state is InstanceState.STOPPED
        assert (ended.exit_code, ended.exit_signal, ended.ended) == (3, None, "exited 3")
        runtime.restart(quick, *inputs(runtime, quick, image, hosts))
        assert runtime.observe()[0].state in (InstanceState.RUNNING, InstanceState.STOPPED)
        started = runtime.observe()[0].started_at
        assert started is not None and started > time.time() - 10

    def test_stop_keeps_it_restart_starts_it(self, runtime: Runtime, stack: str,
                                             image: ImageInfo, hosts: Path) -> None:
        req = request_for(runtime, stack, image)
        runtime.create(req, *inputs(runtime, req, image, hosts))
        runtime.stop(req.key, stop_timeout=1.0)
        [f] = runtime.observe()
        assert f.state is InstanceState.STOPPED and f.pid is None
        assert f.exit_code is None or f.exit_signal is None  # whatever it saw, one of them
        runtime.restart(req, *inputs(runtime, req, image, hosts))
        [g] = runtime.observe()
        assert g.state is InstanceState.RUNNING and g.ip == f.ip

    def test_a_warm_instance_is_made_stopped_and_a_restart_starts_it(
            self, runtime: Runtime, stack: str, image: ImageInfo, hosts: Path) -> None:
        req = request_for(runtime, stack, image)
        runtime.create(replace(req, warm=True), *inputs(runtime, req, image, hosts))
        [f] = runtime.observe()
        assert f.state is InstanceState.STOPPED and f.warm and f.pid is None
        assert f.started_at is None and f.exit_code is None  # never ran: no exit to tell
        runtime.restart(req, *inputs(runtime, req, image, hosts))  # the scale-out's start
        [g] = runtime.observe()
        assert g.state is InstanceState.RUNNING and not g.warm and g.pid and g.ip == f.ip
        runtime.destroy(req.key)
        assert runtime.observe() == []

    def test_interrupted_create_is_observed_partial(self, runtime: Runtime, stack: str,
                                                    image: ImageInfo) -> None:
        req = request_for(runtime, stack, image)
        base = runtime.log_path(req.key).parent.parent
        write_meta(instance_dir(base, req.key), req, phase="creating")  # a crash after intent
        [f] = runtime.observe()
        assert f.state is InstanceState.PARTIAL
        runtime.destroy(req.key)
        assert runtime.observe() == []

    def test_capabilities_are_declared(self, runtime: Runtime) -> None:
        assert isinstance(runtime.caps, Capabilities)
        assert runtime.kind in REGISTRY
        # Health checks run in its netns exactly when it has an address of its own.
        assert (runtime.netns(InstanceKey("s", "r", 0)) is not None) == runtime.caps.own_ip
        assert Capabilities.from_json(runtime.caps.to_json()) == runtime.caps
