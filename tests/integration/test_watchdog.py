"""The self-fencing watchdog (agent/watchdog.py), a real process, on real runc containers and
process instances: fed in time it kills nothing; not fed, it kills what fences within half a
second of the deadline and leaves the rest; it outlives the agent that fed it; it never
kills a pid that another process took over."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rackfire.agent import watchdog
from rackfire.agent.local import LocalAgent
from rackfire.agent.watchdog import DIR, FEED, FENCED, Watchdog
from rackfire.images.build import build_host
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState, NetworkConfig
from rackfire.model.stack import Resources, RuntimeKind
from rackfire.net import links
from rackfire.runtime import runcstate
from rackfire.runtime.base import Runtime, inputs
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.process import ProcessRuntime

from harness import Server, start_agent, unique, wait_for, write_stack

pytestmark = pytest.mark.root

# From this suite's pool (RACKFIRE_TEST_POOL), its last /24.
POOL = ipaddress.IPv4Network(os.environ.get("RACKFIRE_TEST_POOL", "10.89.0.0/16"))
SUBNET = list(POOL.subnets(new_prefix=24))[-3]
NET = NetworkConfig("", str(SUBNET), str(SUBNET.network_address + 1), 24)
MiB = 1 << 20
LATE = 0.5  # the watchdog kills within this long after the deadline


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_host(ImageStore(tmp_path_factory.mktemp("images")), "base")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def ct(data: Path, tmp_path: Path) -> Iterator[ContainerRuntime]:
    # Its own runc root, under data/instances as a LocalAgent on `data` sees it.
    rt = ContainerRuntime(data / "instances", "h", runc_root=tmp_path / "runc")
    yield rt
    for f in rt.observe():
        rt.destroy(f.key, stop_timeout=1.0)


@pytest.fixture
def pr(data: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(data / "instances", "h")
    yield rt
    for f in rt.observe():
        rt.destroy(f.key, stop_timeout=1.0)


@pytest.fixture
def stack() -> Iterator[str]:
    name = unique("wd")
    links.ensure_bridge(name, NET.gateway, NET.prefix)
    yield name
    links.delete_bridge(name)


@pytest.fixture
def dog(data: Path) -> Iterator[Watchdog]:
    w = Watchdog(data)
    yield w
    w.stop()  # by its pid file, whoever started it


def start(rt: Runtime, stack: str, image: ImageInfo, role: str, index: int, *,
          fence: bool, hosts: Path) -> InstanceKey:
    hosts.write_text("127.0.0.1 localhost\n")
    req = InstanceRequest(
        key=InstanceKey(stack, role, index), action_id=f"a-{role}", runtime=rt.kind,
        image_digest=image.digest, command=("sh", "-c", "sleep 100000 & sleep 100000; wait"),
        env=(), resources=Resources(cpu=0.5, memory=64 * MiB, disk=32 * MiB, pids=50),
        files=(), ip=str(SUBNET.network_address + 2 + index),
        network=replace(NET, stack=stack), spec_hash="s", spec_fields=(), config_hash="c",
        incarnation=1, fence=fence)
    rt.create(req, *inputs(rt, req, image, hosts))
    return req.key


def running(rt: Runtime, key: InstanceKey) -> bool:
    return any(f.key == key and f.state is InstanceState.RUNNING for f in rt.observe())


def agent_of(data: Path, rt: ContainerRuntime) -> LocalAgent:
    return LocalAgent(data, host="h", runtimes=(RuntimeKind.CONTAINER, RuntimeKind.PROCESS),
                      runc_root=rt.runc_root)


def stopped_at(rt: Runtime, key: InstanceKey, timeout: float) -> float | None:
    """When (monotonic) `key` was seen not running, polling every 10 ms; None if it ran on."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not running(rt, key):
            return time.monotonic()
        time.sleep(0.01)
    return None


def fenced(data: Path, deadline: float | None = None) -> dict[str, Any]:
    """The watchdog's record of its last fence (of `deadline`), once written: after its
    kills."""
    path, end = data / DIR / FENCED, time.monotonic() + 3
    while time.monotonic() < end:
        with contextlib.suppress(FileNotFoundError):
            record = dict(json.loads(path.read_text()))
            if deadline is None or record["deadline"] == pytest.approx(deadline):
                return record
        time.sleep(0.01)
    raise AssertionError(f"no fence recorded in {path}")


def watchdogs_of(data: Path) -> list[int]:
    """Every process on this machine that is a watchdog of `data`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            args = p.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if watchdog.MODULE.encode() in args and os.fsencode(data.absolute()) in args:
            found.append(int(p.name))
    return found


def test_fed_in_time_it_kills_nothing(ct: ContainerRuntime, stack: str, image: ImageInfo,
                                      data: Path, dog: Watchdog, tmp_path: Path) -> None:
    key = start(ct, stack, image, "db", 0, fence=True, hosts=tmp_path / "hosts")
    agent = agent_of(data, ct)
    assert agent.fence_targets() == [{"kind": "runc", "root": str(ct.runc_root), "id": key.id}]
    dog.ensure_running()
    end = time.monotonic() + 3
    while time.monotonic() < end:
        dog.feed(time.monotonic() + 1.0, agent.fence_targets())
        time.sleep(0.3)
        assert running(ct, key)
    dog.feed(None, agent.fence_targets())  # no fencing: the test's teardown stops it
    assert not (data / DIR / FENCED).exists()


def test_not_fed_it_kills_what_fences_within_half_a_second(
        ct: ContainerRuntime, stack: str, image: ImageInfo, data: Path, dog: Watchdog,
        tmp_path: Path) -> None:
    db = start(ct, stack, image, "db", 0, fence=True, hosts=tmp_path / "hosts")
    web = start(ct, stack, image, "web", 1, fence=False, hosts=tmp_path / "hosts")
    agent = agent_of(data, ct)
    assert [t["id"] for t in agent.fence_targets()] == [db.id]  # web does not self-fence
    dog.ensure_running()
    deadline = time.monotonic() + 1.0
    dog.feed(deadline, agent.fence_targets())
    assert running(ct, db)
    gone = stopped_at(ct, db, 5)
    assert gone is not None, "the fencing instance was not killed"
    late = gone - deadline
    print(f"killed {late:.3f}s after the deadline (watchdog: {fenced(data)['late']:.3f}s)")
    assert 0 < late <= LATE
    record = fenced(data)
    assert [(t["id"], t["result"]) for t in record["targets"]] == [(db.id, "killed")]
    assert record["deadline"] == pytest.approx(deadline)
    assert "fenced" in (data / DIR / "log").read_text()
    time.sleep(0.5)
    assert running(ct, web)  # the one that does not fence runs on


FEEDER = """
import sys, time
from pathlib import Path
from rackfire.agent.local import LocalAgent
from rackfire.agent.watchdog import Watchdog
from rackfire.model.stack import RuntimeKind
data, runc_root = Path(sys.argv[1]), Path(sys.argv[2])
agent = LocalAgent(data, host="h", runtimes=(RuntimeKind.CONTAINER,), runc_root=runc_root)
dog = Watchdog(data)
print(dog.ensure_running(), flush=True)
while True:
    dog.feed(time.monotonic() + 1.0, agent.fence_targets())
    time.sleep(0.2)
"""


def test_an_agent_killed_leaves_its_watchdog_which_fences(
        ct: ContainerRuntime, stack: str, image: ImageInfo, data: Path, dog: Watchdog,
        tmp_path: Path) -> None:
    db = start(ct, stack, image, "db", 0, fence=True, hosts=tmp_path / "hosts")
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER, str(data), str(ct.runc_root)],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert feeder.stdout is not None
        pid = int(feeder.stdout.readline())
        assert dog.ensure_running() == pid  # a second agent finds the running one
        assert dog.ensure_running() == pid
        assert watchdogs_of(data) == [pid]
        time.sleep(1.5)  # fed in time meanwhile
        assert running(ct, db)
        feeder.send_signal(signal.SIGKILL)  # the agent dies at once
        feeder.wait(5)
        deadline, _ = watchdog.read_feed(data / DIR / FEED) or (None, [])
        assert deadline is not None
        gone = stopped_at(ct, db, 5)
        assert gone is not None, "the watchdog did not fence after its agent died"
        print(f"killed {gone - deadline:.3f}s after the dead agent's deadline")
        assert gone - deadline <= LATE
        assert watchdogs_of(data) == [pid]  # it outlived its agent, and stays
    finally:
        if feeder.poll() is None:
            feeder.kill()
            feeder.wait(5)
        if feeder.stdout is not None:
            feeder.stdout.close()


def test_a_pid_another_process_took_over_is_not_killed(
        pr: ProcessRuntime, stack: str, image: ImageInfo, data: Path, dog: Watchdog,
        tmp_path: Path) -> None:
    key = start(pr, stack, image, "db", 0, fence=True, hosts=tmp_path / "hosts")
    [target] = LocalAgent(data, host="h", runtimes=(RuntimeKind.PROCESS,)).fence_targets()
    assert target["kind"] == "pid" and target["start"]
    dog.ensure_running()
    # The same pid with another start time: the process recorded ended, and this is another.
    reused = {**target, "start": int(target["start"]) + 1}
    dog.feed(time.monotonic() - 1, [reused])
    assert [t["result"] for t in fenced(data)["targets"]] == ["not running"]
    assert running(pr, key)
    # Its own start time: its whole session goes (the shell and both sleeps).
    children = Path(f"/proc/{target['pid']}/task/{target['pid']}/children").read_text().split()
    assert len(children) == 2
    deadline = time.monotonic() - 0.01
    dog.feed(deadline, [target])
    assert stopped_at(pr, key, 3) is not None
    end = time.monotonic() + 2
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < end:
        time.sleep(0.02)
    assert not any(Path(f"/proc/{c}").exists() for c in children)
    assert [t["result"] for t in fenced(data, deadline)["targets"]] == ["killed"]


def test_through_the_server_an_agent_back_in_time_keeps_its_singleton_a_dead_one_fences(
        tmp_path: Path) -> None:
    """A joined agent runs a singleton (`ha: singleton` fences). Killed and started again
    within its lease, it carries on with 0 restarts and the same watchdog; killed for
    good, its watchdog kills the singleton within half a second of the deadline."""
    srv = Server(tmp_path / "srv", args=("--no-local-host",))
    agent_dir, runc_root, stack = tmp_path / "agent", tmp_path / "runc", unique("wde")
    srv.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        token = srv.cli("token", "create", "--uses", "1").stdout.split()[0]
        proc = start_agent(agent_dir, "--runc-root", str(runc_root), "--join", srv.url,
                           "--token", token, "--name", "h1")
        f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    ha: singleton
    command: ["sleep", "100000"]
    resources: {{cpu: 0.25, memory: 32M, disk: 32M}}
""")
        wait_for(lambda: "h1" in srv.cli("hosts").stdout, 30, "h1 to join")
        srv.cli("apply", "-f", str(f), "-y")
        cid = f"{stack}.db.0"

        def fed() -> bool:
            feed = watchdog.read_feed(agent_dir / DIR / FEED)
            return feed is not None and [t.get("id") for t in feed[1]] == [cid]

        wait_for(fed, 10, "the singleton to be fed to the watchdog")
        dog = watchdog.running_pid(agent_dir)
        proc.kill()
        proc.wait(10)
        proc = start_agent(agent_dir, "--runc-root", str(runc_root))
        time.sleep(6)  # past the dead agent's deadline: the new one renewed it in time
        assert not (agent_dir / DIR / FENCED).exists()
        assert watchdog.running_pid(agent_dir) == dog
        [row] = json.loads(srv.cli("ps", stack, "--json").stdout)
        assert (row["state"], row["restarts"]) == ("running", 0), row

        proc.kill()
        proc.wait(10)
        deadline, _ = watchdog.read_feed(agent_dir / DIR / FEED) or (None, [])
        assert deadline is not None
        while (c := runcstate.container(runc_root, cid)) and c.status == "running" \
                and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        late = time.monotonic() - deadline
        print(f"the dead agent's singleton killed {late:.3f}s after its deadline")
        c = runcstate.container(runc_root, cid)
        assert late <= LATE and c is not None and c.status == "stopped"
        proc = start_agent(agent_dir, "--runc-root", str(runc_root))
    finally:
        srv.cli("destroy", stack, "-y", check=False)
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        watchdog.stop(agent_dir)
        srv.stop()
