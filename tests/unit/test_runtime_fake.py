"""The FakeRuntime passes the runtime contract (tests/runtime_contract.py) without root; what
a test can set of it; the registry that offers it only when asked; capabilities as data, in
host facts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.agent.local import LocalAgent
from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.agent import HostCapacity
from rackfire.model.host import HostFacts
from rackfire.model.instance import InstanceState
from rackfire.model.runtime import (
    ASSUMED,
    Capabilities,
    Need,
    NetworkMode,
    describe,
    missing,
    role_needs,
    supports,
)
from rackfire.model.stack import AppSource, DataDisk, HealthSpec, RoleSpec, RuntimeKind
from rackfire.model.wire import decode, encode
from rackfire.net.attach import HostNetwork, VethAttachment, attachment
from rackfire.runtime import registry
from rackfire.runtime.base import RootFs, Runtime, inputs
from rackfire.runtime.fake import Exit, FakeRuntime
from rackfire.runtime.process import ProcessRuntime
from runtime_contract import QUICK, RuntimeContract, request_for


@pytest.fixture
def image(tmp_path: Path) -> ImageInfo:
    store = ImageStore(tmp_path / "images")
    with store.staging() as stage:
        (stage / "etc").mkdir()
        return store.commit("base", stage, "ab" * 32, "tarball")


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    return path


@pytest.fixture
def stack() -> str:
    return "fk"  # nothing of the host's network is touched


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class TestFake(RuntimeContract):
    @pytest.fixture
    def runtime(self, tmp_path: Path) -> Iterator[Runtime]:
        rt = FakeRuntime(tmp_path / "instances", "h")
        rt.exits[QUICK] = Exit(0.3, 3)
        yield rt
        for f in rt.observe():
            rt.destroy(f.key)


@pytest.fixture
def fake(tmp_path: Path) -> FakeRuntime:
    return FakeRuntime(tmp_path / "instances", "h", clock=Clock())


def test_exits_by_the_clock_and_restarts_deterministically(
        fake: FakeRuntime, image: ImageInfo, hosts: Path) -> None:
    clock = fake.clock
    assert isinstance(clock, Clock)
    req = request_for(fake, "fk", image, command=("serve",))
    fake.exits[("serve",)] = Exit(after=10.0, code=3)
    fake.create(req, *inputs(fake, req, image, hosts))
    [f] = fake.observe()
    assert (f.state, f.pid, f.started_at, f.exit_code) == (
        InstanceState.RUNNING, 1000, clock.now, None)
    clock.now += 10.0
    [f] = fake.observe()
    assert (f.state, f.pid, f.exit_code) == (InstanceState.STOPPED, None, 3)
    fake.restart(req, *inputs(fake, req, image, hosts))
    [f] = fake.observe()
    assert (f.state, f.pid, f.exit_code) == (InstanceState.RUNNING, 1001, None)
    assert [v for v, _ in fake.calls] == ["create", "restart"]


def test_failures_are_where_a_real_runtime_fails(fake: FakeRuntime, image: ImageInfo,
                                                 hosts: Path) -> None:
    req = request_for(fake, "fk", image)
    fake.fail("create")
    with pytest.raises(ExecError, match="create failed"):
        fake.create(req, *inputs(fake, req, image, hosts))
    [f] = fake.observe()
    assert f.state is InstanceState.PARTIAL  # its meta was written, its process never ran
    fake.create(req, *inputs(fake, req, image, hosts))  # once only: then it works
    assert fake.observe()[0].state is InstanceState.RUNNING

    fake.fail("restart", req.key, PrereqError("no"), times=2)
    for _ in range(2):
        with pytest.raises(PrereqError):
            fake.restart(req, *inputs(fake, req, image, hosts))
        assert fake.observe()[0].state is InstanceState.STOPPED
    fake.restart(req, *inputs(fake, req, image, hosts))
    assert fake.observe()[0].state is InstanceState.RUNNING

    fake.crash(req.key, oom=True)
    [f] = fake.observe()
    assert (f.state, f.exit_signal, f.oom_killed) == (InstanceState.STOPPED, 9, True)
    assert f.ended == "killed by SIGKILL (OOM)"
    fake.fail("stop")
    with pytest.raises(ExecError):
        fake.stop(req.key)


def test_refuses_what_its_capabilities_lack(tmp_path: Path, image: ImageInfo,
                                            hosts: Path) -> None:
    bare = FakeRuntime(tmp_path / "instances", "h", caps=Capabilities())
    req = request_for(bare, "fk", image)
    for asked, what in ((replace(req, data=DataDisk("/srv", 1 << 20)), "data disks"),
                        (replace(req, app_digest="cd" * 32), "app release layers")):
        with pytest.raises(PrereqError, match=what):
            bare.create(asked, *inputs(bare, asked, image, hosts))
    bare.create(req, *inputs(bare, req, image, hosts))
    with pytest.raises(PrereqError, match="without exec"):
        bare.exec(req.key, ["true"], tty=False)
    # A release layer the request names but the rootfs lacks is not on the host.
    full = FakeRuntime(tmp_path / "other", "h")
    app = replace(req, app_digest="cd" * 32)
    with pytest.raises(NotFound, match="release layer"):
        full.create(app, *inputs(full, app, image, hosts))


def test_reload_resize_exec_stats(fake: FakeRuntime, image: ImageInfo, hosts: Path) -> None:
    req = request_for(fake, "fk", image)
    fake.create(req, *inputs(fake, req, image, hosts))
    fake.reload(replace(req, files=(("/etc/app.conf", "two"),), config_hash="two"))
    assert fake.reloads[req.key] == 1 and fake.files(req.key) == {"/etc/app.conf": "two"}
    assert fake.observe()[0].config_hash == "two"
    with pytest.raises(PrereqError, match="cannot add or remove"):
        fake.reload(replace(req, files=(("/etc/other.conf", "x"),)))

    bigger = replace(req, resources=replace(req.resources, disk=req.resources.disk * 2),
                     spec_hash="s2")
    fake.resize(bigger)
    assert fake.observe()[0].spec_hash == "s2"
    with pytest.raises(PrereqError, match="never shrinks"):
        fake.check_resize(req)

    fake.exec_results[("cat", "/x")] = (2, "hello")
    h = fake.exec(req.key, ["cat", "/x"], tty=False)
    out, _ = h.proc.communicate(timeout=30)
    assert (h.proc.returncode, out) == (2, b"hello")
    [s] = fake.stats([req.key])
    assert s.pids == 1 and s.disk_limit == bigger.resources.disk


# the registry ---------------------------------------------------------------------------

def test_the_fake_is_offered_only_when_asked() -> None:
    assert RuntimeKind.FAKE not in registry.offered(env={})
    assert registry.offered(env={registry.ENV: "fake, process"}) == (
        RuntimeKind.FAKE, RuntimeKind.PROCESS)
    assert registry.offered((RuntimeKind.PROCESS,), env={registry.ENV: "fake"}) == (
        RuntimeKind.PROCESS,)
    with pytest.raises(PrereqError, match="unknown runtime"):
        registry.offered(env={registry.ENV: "vm"})


def test_build_makes_the_asked_ones_and_process_always(tmp_path: Path) -> None:
    dirs = registry.HostDirs("h", tmp_path / "i", tmp_path / "v", tmp_path / "in",
                             tmp_path / "runc")
    made = registry.build((RuntimeKind.FAKE,), dirs)
    assert list(made) == [RuntimeKind.PROCESS, RuntimeKind.FAKE]
    assert isinstance(made[RuntimeKind.FAKE], FakeRuntime)
    assert isinstance(made[RuntimeKind.PROCESS], ProcessRuntime)
    assert all(rt.kind is k for k, rt in made.items())


def test_an_agent_drives_the_fake_and_reports_its_capabilities(
        tmp_path: Path, hosts: Path) -> None:
    agent = LocalAgent(tmp_path / "data", host="h", runtimes=(RuntimeKind.FAKE,))
    with agent.store.staging() as stage:
        info = agent.store.commit("base", stage, "ef" * 32, "tarball")
    fake = agent.runtime(RuntimeKind.FAKE)
    assert isinstance(fake, FakeRuntime)
    req = request_for(fake, "fk", info)
    agent.ensure_network(req.network)  # no bridge: the fake has no address of its own
    agent.create(req)
    agent.create(req)  # the same action again: a no-op
    assert [v for v, _ in fake.calls] == ["create"]
    [f] = agent.observe("fk")
    assert f.state is InstanceState.RUNNING and f.runtime is RuntimeKind.FAKE
    assert [s.key for s in agent.stats("fk")] == [req.key]
    with pytest.raises(PrereqError, match="cannot move"):
        agent.set_aside(req.key)
    facts = agent.facts()
    assert facts.runtimes == (RuntimeKind.FAKE,)
    assert facts.caps_of(RuntimeKind.FAKE) == fake.caps
    assert HostFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    assert decode(HostFacts, encode(facts)) == facts  # as it crosses the agent RPC
    agent.destroy(req.key)
    assert agent.observe("fk") == []


# capabilities as data -------------------------------------------------------------------

def test_inputs_are_neutral_values(image: ImageInfo, hosts: Path, tmp_path: Path) -> None:
    req = request_for(FakeRuntime(tmp_path / "i", "h"), "fk", image)
    rootfs, net = inputs(FakeRuntime(tmp_path / "i", "h"), req, image, hosts)
    assert rootfs == RootFs.of(image, hosts) and rootfs.image.path == image.rootfs
    assert [x.digest for x in rootfs.layers] == [image.digest]
    assert net == HostNetwork()
    veth = attachment(NetworkMode.VETH, req)
    assert isinstance(veth, VethAttachment)
    assert (veth.netns, veth.netns_path, veth.ip) == (
        "rf-fk.box.0", "/run/netns/rf-fk.box.0", req.ip)


def test_needs_and_supports() -> None:
    container = ASSUMED[RuntimeKind.CONTAINER]
    process = ASSUMED[RuntimeKind.PROCESS]
    role = RoleSpec("db", "base", app=AppSource("app", "ab" * 32),
                    data=DataDisk("/srv", 1 << 20), health=HealthSpec(exec=("true",)))
    needs = role_needs(role)
    assert needs == {Need.APP_LAYERS, Need.DISKS, Need.EXEC}
    assert supports(container, *needs) and not supports(process, *needs)
    assert missing(process, needs) == (Need.DISKS, Need.APP_LAYERS)
    assert describe(missing(process, needs)) == "data disks and app release layers"
    assert supports(container, Need.COLD_MIGRATE) and not supports(process, Need.COLD_MIGRATE)
    assert container.own_ip and not process.own_ip


def test_capabilities_from_json_are_tolerant() -> None:
    caps = Capabilities.from_json({"disks": True, "network": "tap", "teleport": True})
    assert caps == Capabilities(disks=True)  # unknown keys and modes ignored
    with pytest.raises(ValueError, match="disks"):
        Capabilities.from_json({"disks": "yes"})


def test_host_facts_without_capabilities_assume_the_kind_s() -> None:
    old = HostFacts.from_json({"cpus": 2, "memory": 1, "disk": 1,
                               "runtimes": ["container", "process", "vm"]})
    assert old.runtimes == (RuntimeKind.CONTAINER, RuntimeKind.PROCESS)
    assert old.caps_of(RuntimeKind.CONTAINER) == ASSUMED[RuntimeKind.CONTAINER]
    assert old.lacks(RuntimeKind.PROCESS, {Need.DISKS}) == (Need.DISKS,)
    assert old.caps_of(RuntimeKind.FAKE) is None  # not offered
    assert old.lacks(RuntimeKind.FAKE, {Need.EXEC}) == (Need.EXEC,)
    new = HostFacts(HostCapacity(1, 1, 1), (RuntimeKind.FAKE,), 0, 0,
                    capabilities=((RuntimeKind.FAKE, Capabilities(exec=True)),))
    data = new.to_json()
    data["capabilities"]["vm"] = {"live_migrate": True}  # type: ignore[index]
    assert HostFacts.from_json(data) == new  # a runtime it does not know is left out
    assert new.lacks(RuntimeKind.FAKE, {Need.EXEC, Need.DISKS}) == (Need.DISKS,)


def test_the_assumed_capabilities_are_today_s_runtimes() -> None:
    from rackfire.runtime.container import ContainerRuntime

    assert {RuntimeKind.CONTAINER: ContainerRuntime.caps,
                       RuntimeKind.PROCESS: ProcessRuntime.caps} == ASSUMED
