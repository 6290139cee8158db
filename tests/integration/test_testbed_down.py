"""`make clean-cluster` (`python -m rackfire.testbed down`) with stacks still applied: it
leaves nothing of the demo cluster behind (no instance, HAProxy, agent, mount, namespace,
link, runc state or cgroup), so the next `up` creates the same stack at the first try.

A bed of its own: its own data dir, port, state file and stack pool; its underlay /24 and
names are the bed's random ones, so it collides neither with the demo cluster nor with
another test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rackfire.net.names import netns_name
from rackfire.runtime import mounts
from rackfire.testbed.bed import HOST_NETNS_PREFIX, leftovers

from harness import free_port, nft_tables, unique, write_stack

pytestmark = pytest.mark.root

STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  box:
    image: base
    count: 2
    command: [sleep, "100000"]
    resources: {{memory: 32M, disk: 32M, cpu: 0.2}}
    data: {{path: /data, size: 32M}}
    ports: ["{port}:8000"]
    stop_timeout: 1s
"""


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "cluster"
        self.state = tmp / "testbed.json"
        self.port = free_port()

    def testbed(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "rackfire.testbed", *args],
                              capture_output=True, text=True, timeout=900, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"testbed {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self) -> None:
        pool = os.environ.get("RACKFIRE_TEST_POOL", "10.89.0.0/16")
        self.testbed("up", "--hosts", "2", "--data-dir", str(self.data), "--port",
                     str(self.port), "--subnet-pool", pool, "--state", str(self.state))

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.testbed("down", "--state", str(self.state))

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RACKFIRE_URL": f"http://127.0.0.1:{self.port}",
               "RACKFIRE_DATA_DIR": str(self.data), "COLUMNS": "200"}
        proc = subprocess.run([sys.executable, "-m", "rackfire", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"rackfire {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state.read_text())
        return state


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        if c.state.exists():  # the test failed half-way: still leave nothing
            c.testbed("down", "--state", str(c.state), check=False)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _procs_naming(path: Path) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if _alive(int(entry)) and any(str(path).encode() in a for a in args):
                out.append(f"{entry}: {b' '.join(args).decode(errors='replace')}")
    return out


def snapshot(c: Cluster, stack: str) -> dict[str, Any]:
    """What the bed runs with the stack applied: pids, instance ids, runc roots."""
    state = c.read_state()
    rows = json.loads(c.cli("ps", stack, "--json").stdout)
    haproxies = [int(p.read_text().split()[0])
                 for p in c.data.glob(f"agent-*/stacks/{stack}/haproxy.pid")]
    runc_roots = [f"/run/rackfire/runc-{state['bed']}-{h}" for h in state["hosts"]]
    return {"bed": state["bed"], "pids": [state["server"], *state["agents"]],
            "haproxy": haproxies, "ids": [f"{stack}.{r['role']}.{r['index']}" for r in rows],
            "runc_roots": runc_roots, "rows": rows, "stack": stack}


def traces(c: Cluster, snap: dict[str, Any]) -> list[str]:
    """Everything of the bed still on the machine after `down`."""
    found = [f"process {p}" for p in [*snap["pids"], *snap["haproxy"]] if _alive(p)]
    found += [f"process {line}" for line in _procs_naming(c.data)]
    found += [f"mount {m}" for m in mounts.mounts_under(c.tmp)]
    found += [f"loop {d} ({f})" for d, f in mounts.loops_under(c.tmp).items()]
    found += [x for x in leftovers() if snap["bed"] in x]
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    found += [f"netns {n}" for n in netns if n.startswith(f"{HOST_NETNS_PREFIX}{snap['bed']}")]
    found += [f"netns {n}" for n in netns if n.startswith(f"rf-{snap['bed']}-")]  # scoped
    for i in snap["ids"]:
        if netns_name(i) in netns:
            found.append(f"netns {netns_name(i)}")
        found += [f"cgroup {cg}" for cg in Path("/sys/fs/cgroup").glob(f"*/rackfire/{i}")]
        found += [f"cgroup {cg}" for cg in Path("/sys/fs/cgroup").glob(f"rackfire/{i}")]
    found += [f"runc root {r}" for r in snap["runc_roots"] if os.path.exists(r)]
    found += [f"nft table {t}" for t in nft_tables(snap["stack"])]  # the server's own host
    if c.data.exists():
        found.append(f"data dir {c.data}")
    return found


def test_down_with_a_stack_applied_leaves_nothing_and_up_again_works(
        cluster: Cluster, tmp_path: Path) -> None:
    stack = unique("dn")
    file = write_stack(tmp_path, STACK.format(stack=stack, port=free_port()))
    cluster.up()
    cluster.cli("apply", "-f", str(file), "-y")
    snap = snapshot(cluster, stack)
    assert len(snap["rows"]) == 2 and all(r["state"] == "running" for r in snap["rows"])
    assert snap["haproxy"] and all(_alive(p) for p in snap["haproxy"])  # one per host used
    assert mounts.mounts_under(cluster.data)  # disks, overlays and data disks mounted there

    out = cluster.down()
    assert "demo cluster removed" in out.stdout
    assert traces(cluster, snap) == []
    assert not cluster.state.exists()
    assert "no demo cluster is up" in cluster.down().stdout  # a second run is harmless

    # The same stack on a new cluster: every create succeeds at the first try (nothing of
    # the old instances' namespaces, links or cgroups is in the way).
    cluster.up()
    cluster.cli("apply", "-f", str(file), "-y")
    again = snapshot(cluster, stack)
    assert sorted(again["ids"]) == sorted(snap["ids"])
    assert all(r["state"] == "running" for r in again["rows"])
    log = "".join(p.read_text() for p in cluster.data.glob("server.log"))
    assert "half-made" not in log
    cluster.down()
    assert traces(cluster, again) == []


def test_down_after_the_agents_died_still_leaves_nothing(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """The server cannot destroy the stack (no agent answers): `down` removes it on the
    hosts instead, with the agent's own code, and says so."""
    stack = unique("dk")
    file = write_stack(tmp_path, STACK.format(stack=stack, port=free_port()))
    cluster.up()
    cluster.cli("apply", "-f", str(file), "-y")
    snap = snapshot(cluster, stack)
    for pid in cluster.read_state()["agents"]:
        os.kill(pid, signal.SIGKILL)

    out = cluster.down()
    assert f"could not destroy {stack}" in out.stderr
    assert "demo cluster removed" in out.stdout
    assert traces(cluster, snap) == []
