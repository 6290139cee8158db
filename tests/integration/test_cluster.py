"""Stacks across hosts, on the test bed: three simulated hosts (a netns each on an underlay
bridge), each with its own real `rackfire agent`, and a server that runs no instances
itself (`--no-local-host`). Placement with spread, refusal of what does not fit, names
across hosts over VXLAN, cold migration with data and IP, drain, and migrations
interrupted by a crash of each party at each step."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rackfire.net import names
from rackfire.net.nsenter import remove_netns
from rackfire.testbed.bed import Bed

from harness import Server, host_traces, unique, wait_for, write_stack

pytestmark = pytest.mark.root

WEB = """\
import http.server, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", 8000), H).serve_forever()
"""


def web_stack(stack: str, count: int, memory: str = "32M", extra: str = "") -> str:
    script = "\n".join("        " + line for line in WEB.splitlines())
    return f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: {count}
    command: [python3, /srv/web.py]
    resources: {{memory: {memory}, disk: 32M}}
    stop_timeout: 2s
    files:
      /srv/web.py: |
{script}
    health: {{http: "http://127.0.0.1:8000/", interval: 300ms}}
{extra}"""


DB = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    command: [sh, -c, "test -f /data/born || hostname > /data/born; exec sleep 100000"]
    resources: {{memory: 32M, disk: 32M}}
    data: {{path: /data, size: 64M}}
    stop_timeout: 1s
"""


@dataclass
class Cluster:
    bed: Bed
    server: Server
    tmp: Path
    token: str = ""
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def join_url(self) -> str:
        return f"http://{self.bed.controller_ip}:{self.server.port}"

    def agent_dir(self, host: str) -> Path:
        return self.tmp / f"agent-{host}"

    def start_agent(self, host: str) -> None:
        rack = {h.name: f"r{n}" for n, h in enumerate(self.bed.hosts, 1)}[host]
        self.agents[host] = self.bed.start_agent(
            host, self.join_url, self.token, str(self.agent_dir(host)), {"rack": rack},
            log=str(self.tmp / f"agent-{host}.log"))

    def kill_agent(self, host: str) -> None:
        proc = self.agents.pop(host)
        proc.kill()
        proc.wait(10)

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in json.loads(self.server.cli("hosts", "--json").stdout)}

    def runc(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runc", "--root", self.bed.runc_root(host), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def running_on(self, instance_id: str) -> list[str]:
        """The hosts whose runc runs a container of that instance."""
        out = []
        for h in self.bed.hosts:
            state = self.runc(h.name, "state", instance_id)
            if state.returncode == 0 and json.loads(state.stdout)["status"] == "running":
                out.append(h.name)
        return out


def _placements(server: Server, stack: str) -> dict[str, str]:
    import httpx

    token = (server.data_dir / "token").read_text().strip()
    r = httpx.get(f"{server.url}/v1/placements", params={"stack": stack},
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    return dict(r.json())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    bed = Bed(3)
    srv = Server(tmp_path / "data", listen="0.0.0.0", args=("--no-local-host",))
    c = Cluster(bed, srv, tmp_path)
    try:
        bed.create()
        srv.start()
        c.token = srv.cli("token", "create", "--uses", "3").stdout.split()[0]
        for h in bed.hosts:
            c.start_agent(h.name)
        wait_for(lambda: sum(1 for h in c.hosts().values() if h["state"] == "ready"
                             and h["address"]) == 3, 60, "three agents to join")
        yield c
    finally:
        srv.stop()
        bed.destroy()  # the agents too, by pid
        sweep(bed, tmp_path)


def sweep(bed: Bed, tmp: Path) -> None:
    """What a failed test's stacks left on the bed's hosts: containers, mounts, netns."""
    ids = []
    for h in bed.hosts:
        for cid in _runc_ids(bed.runc_root(h.name)):
            subprocess.run(["runc", "--root", bed.runc_root(h.name), "delete", "-f", cid],
                           check=False, capture_output=True)
        shutil.rmtree(bed.runc_root(h.name), ignore_errors=True)
        ids += [names.netns_name(d.name, bed.netns_scope(h)) for d in
                (tmp / f"agent-{h.name}" / "instances").glob("*.*.*")]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(tmp) + "/")]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)
    for ns in ids:
        remove_netns(ns)


def _runc_ids(root: str) -> list[str]:
    r = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True,
                       check=False)
    return r.stdout.split() if r.returncode == 0 else []


def destroy(c: Cluster, stack: str) -> None:
    """Destroy leaves no host with anything of the stack: containers, bridge, VXLAN port,
    instance dirs, data disks."""
    c.server.cli("destroy", stack, "-y")

    def left() -> list[str]:
        out = host_traces(stack)
        for h in c.bed.hosts:
            links = c.bed.run_in(h, ["ip", "-o", "link"]).stdout
            out += [f"{h.name}: link {n}" for n in (names.bridge_name(stack),
                                                    names.vxlan_name(stack)) if n in links]
            out += [f"{h.name}: container {i}" for i in _runc_ids(c.bed.runc_root(h.name))
                    if i.startswith(f"{stack}.")]
            out += [f"{h.name}: {p}" for p in (c.agent_dir(h.name) / "instances").glob(
                f"{stack}.*")]
            out += [f"{h.name}: {p}" for p in (c.agent_dir(h.name) / "volumes").glob(
                f"{stack}/*")]
            out += [f"{h.name}: {p}" for p in (c.agent_dir(h.name) / "replicas").glob(
                f"{stack}.*")]
        return out

    deadline = time.monotonic() + 120
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == []


def test_spread_places_four_per_host_and_names_resolve_across_hosts(cluster: Cluster) -> None:
    c = cluster
    stack = unique("spread")
    file = write_stack(c.tmp, web_stack(stack, 12))
    plan = c.server.cli("plan", "-f", str(file), "--explain", check=False)
    assert plan.returncode == 2, plan.stderr
    assert f"{stack}/web/0 -> " in plan.stdout and "spread:" in plan.stdout
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    placed = _placements(c.server, stack)
    per_host: dict[str, int] = {}
    for host in placed.values():
        per_host[host] = per_host.get(host, 0) + 1
    assert sorted(per_host.values()) == [4, 4, 4], per_host
    assert set(per_host) == {h.name for h in c.bed.hosts}
    rows = json.loads(c.server.cli("ps", stack, "--json").stdout)
    assert {r["name"]: r["host"] for r in rows} == {
        k.split("/", 1)[1].replace("/", "-"): h for k, h in placed.items()}
    assert all(r["state"] == "running" and r["health"] == "healthy" for r in rows), rows

    # web-0's host is A; pick an instance on another host and ask it by name, from web-0.
    a = placed[f"{stack}/web/0"]
    far = next(k for k, h in sorted(placed.items()) if h != a)
    far_name = far.split("/", 1)[1].replace("/", "-")
    probe = c.runc(a, "exec", f"{stack}.web.0", "python3", "-c",
                   "import urllib.request, sys; "
                   f"print(urllib.request.urlopen('http://{far_name}:8000/', timeout=5)"
                   ".read().decode())")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == far_name  # answered by that instance, on its host
    # Every host has the stack's VXLAN port, peered with the two others.
    for h in c.bed.hosts:
        fdb = c.bed.run_in(h, ["bridge", "fdb", "show"]).stdout
        peers = {line.split("dst ")[1].split()[0] for line in fdb.splitlines()
                 if line.startswith("00:00:00:00:00:00") and "dst " in line}
        assert peers == {o.ip for o in c.bed.hosts if o is not h}, (h.name, fdb)
    destroy(c, stack)


def test_a_stack_that_does_not_fit_is_refused_and_nothing_is_made(cluster: Cluster) -> None:
    c = cluster
    stack = unique("huge")
    mem = max(h["capacity"]["memory"] for h in c.hosts().values())
    file = write_stack(c.tmp, web_stack(stack, 4, memory=str(mem // 2 + (1 << 20))))
    refused = c.server.cli("apply", "-f", str(file), "-y", check=False)
    assert refused.returncode == 1
    assert "does not fit" in refused.stderr and "cannot be placed" in refused.stderr
    assert "memory" in refused.stderr  # the reason, with the host that could not take it
    assert json.loads(c.server.cli("ps", "--json").stdout) == []
    assert _placements(c.server, stack) == {}
    assert host_traces(stack) == []


def test_migrate_moves_an_instance_with_its_data_and_ip(cluster: Cluster) -> None:
    c = cluster
    stack = unique("mig")
    c.server.cli("apply", "-f", str(write_stack(c.tmp, DB.format(stack=stack))), "-y",
                 timeout=300)
    [before] = json.loads(c.server.cli("ps", stack, "--json").stdout)
    source = before["host"]
    born = c.runc(source, "exec", f"{stack}.db.0", "cat", "/data/born").stdout
    assert born.strip() == "db-0"
    c.runc(source, "exec", f"{stack}.db.0", "sh", "-c", "echo precious > /data/kept")
    target = next(h.name for h in c.bed.hosts if h.name != source)
    moved = c.server.cli("migrate", f"{stack}/db/0", "--to", target, timeout=300)
    assert f"{source} -> {target}" in moved.stdout
    [after] = json.loads(c.server.cli("ps", stack, "--json").stdout)
    assert (after["host"], after["ip"], after["state"]) == (target, before["ip"], "running")
    kept = c.runc(target, "exec", f"{stack}.db.0", "cat", "/data/kept", "/data/born").stdout
    assert kept.split() == ["precious", "db-0"]  # the same data, not a fresh disk
    assert c.running_on(f"{stack}.db.0") == [target]
    # Nothing of it is left on the source: no container, no instance dir, no data disk.
    src_dir = c.agent_dir(source)
    assert not list((src_dir / "instances").glob(f"{stack}.*"))
    assert not list((src_dir / "volumes").glob(f"{stack}/*"))
    destroy(c, stack)


def test_drain_empties_a_host_keeping_every_role_available(cluster: Cluster) -> None:
    c = cluster
    stack = unique("drain")
    file = write_stack(c.tmp, web_stack(stack, 6))
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    placed = _placements(c.server, stack)
    victim = placed[f"{stack}/web/0"]
    leaving = sum(1 for h in placed.values() if h == victim)
    worst = [6]
    done = False

    def watch() -> None:
        while not done:
            rows = json.loads(c.server.cli("ps", stack, "--json").stdout)
            worst[0] = min(worst[0], sum(1 for r in rows if r["health"] == "healthy"))
            time.sleep(0.2)

    t = threading.Thread(target=watch)
    t.start()
    try:
        out = c.server.cli("host", "drain", victim, timeout=600)
    finally:
        done = True
        t.join()
    assert f"{leaving} instance(s) moved" in out.stdout
    after = _placements(c.server, stack)
    assert victim not in after.values() and len(after) == 6
    assert worst[0] >= 5, worst  # max_unavailable 1: never more than one down at a time
    assert c.hosts()[victim]["state"] == "draining"
    rows = json.loads(c.server.cli("ps", stack, "--json").stdout)
    assert all(r["host"] != victim for r in rows), rows
    # The drain is over once the last instance has moved; that one passes its check soon
    # after, as it would after any start.
    wait_for(lambda: all(r["health"] == "healthy" for r in json.loads(
        c.server.cli("ps", stack, "--json").stdout)), 30, "the last moved instance's check")
    destroy(c, stack)


@pytest.mark.parametrize("step", ["stopping", "copying", "releasing", "starting", "cleaning"])
def test_a_controller_killed_mid_migration_leaves_one_running_copy(cluster: Cluster,
                                                                   step: str) -> None:
    c = cluster
    stack, source, target = db_with_failpoint(c, "crash", f"migrate.{step}=exit")
    c.server.cli("migrate", f"{stack}/db/0", "--to", target, check=False, timeout=120)
    assert c.server.proc is not None
    c.server.proc.wait(60)  # it died at the step, as in a crash
    c.server.server_env = {}
    c.server.start()
    where = one_running_copy(c, stack)
    # Whichever way it went, the data came along and the other host holds no copy.
    born = c.runc(where, "exec", f"{stack}.db.0", "cat", "/data/born")
    assert born.stdout.strip() == "db-0", (born.stderr, where, source, target)
    other = target if where == source else source
    assert not list((c.agent_dir(other) / "instances").glob(f"{stack}.*"))
    destroy(c, stack)


@pytest.mark.parametrize("party", ["source", "target"])
def test_an_agent_killed_mid_migration_leaves_one_running_copy(cluster: Cluster,
                                                               party: str) -> None:
    c = cluster
    # The source dies before the copy is made; the target once it has the disks.
    step = "copying" if party == "source" else "starting"
    stack, source, target = db_with_failpoint(c, "agentdies", f"migrate.{step}=sleep:4")
    proc = subprocess.Popen([sys.executable, "-m", "rackfire", "migrate", f"{stack}/db/0",
                             "--to", target], env=c.server.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: any(m["step"] == step for m in _migrations(c.server)), 60,
             f"the migration to reach {step}")
    victim = source if party == "source" else target
    c.kill_agent(victim)
    time.sleep(6)
    c.start_agent(victim)
    proc.wait(300)
    where = one_running_copy(c, stack)
    born = c.runc(where, "exec", f"{stack}.db.0", "cat", "/data/born")
    assert born.stdout.strip() == "db-0", (born.stderr, where, source, target)
    destroy(c, stack)


def db_with_failpoint(c: Cluster, prefix: str, failpoint: str) -> tuple[str, str, str]:
    """A stack of one instance with a data disk, and the server restarted with `failpoint`:
    the stack, the instance's host and another host."""
    stack = unique(prefix)
    c.server.cli("apply", "-f", str(write_stack(c.tmp, DB.format(stack=stack))), "-y",
                 timeout=300)
    [before] = json.loads(c.server.cli("ps", stack, "--json").stdout)
    source = before["host"]
    target = next(h.name for h in c.bed.hosts if h.name != source)
    c.server.stop()
    c.server.server_env = {"RACKFIRE_FAILPOINTS": failpoint}
    c.server.start()
    return stack, source, target


def one_running_copy(c: Cluster, stack: str) -> str:
    """Once the migration is over, exactly one host runs the instance, and it is placed
    there; that host."""
    wait_for(lambda: not _migrations(c.server), 300, "the migration to end")
    where = wait_for(lambda: (r := c.running_on(f"{stack}.db.0")) and r, 60,
                     "a running copy")
    assert len(where) == 1, where
    assert _placements(c.server, stack)[f"{stack}/db/0"] == where[0]
    return str(where[0])


def _migrations(server: Server) -> list[dict[str, Any]]:
    import httpx

    token = (server.data_dir / "token").read_text().strip()
    r = httpx.get(f"{server.url}/v1/migrations", headers={"Authorization": f"Bearer {token}"},
                  timeout=10)
    r.raise_for_status()
    return list(r.json())


def test_a_host_whose_lease_lapsed_is_lost_and_comes_back_at_a_new_epoch(
        cluster: Cluster) -> None:
    """Its agent killed, the host misses its heartbeats: its instance is reported lost by
    `plan` and `ps`; the controller does nothing to it (its data disk cannot come back
    elsewhere) and the host's watchdog stops it, its lease gone. When the agent heartbeats
    again the host's epoch rises, the instance runs again there, and a call stamped with the
    old epoch is refused before it touches anything."""
    from rackfire.agent.remote import RemoteAgent
    from rackfire.errors import StaleEpoch
    from rackfire.model.instance import InstanceKey

    c = cluster
    stack = unique("lease")
    file = write_stack(c.tmp, DB.format(stack=stack))
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    [db] = json.loads(c.server.cli("ps", stack, "--json").stdout)
    host = db["host"]
    assert c.hosts()[host]["epoch"] == 1
    c.kill_agent(host)
    wait_for(lambda: c.hosts()[host]["state"] == "lost", 30, f"{host}'s lease to lapse")
    plan = json.loads(c.server.cli("plan", "-f", str(file), "--json").stdout)
    assert plan["lost"] == [{"instance": f"{stack}/db/0", "host": host}]
    assert plan["actions"] == []  # held: its data disk is on the lost host
    [lost] = json.loads(c.server.cli("ps", stack, "--json").stdout)
    assert lost["state"] == "lost"
    wait_for(lambda: c.running_on(f"{stack}.db.0") == [], 30, "the watchdog to fence it")
    c.start_agent(host)
    wait_for(lambda: c.hosts()[host]["state"] == "ready" and c.hosts()[host]["epoch"] == 2,
             60, f"{host} back at epoch 2")
    wait_for(lambda: (c.agent_dir(host) / "epoch").exists()
             and (c.agent_dir(host) / "epoch").read_text().strip() == "2", 30,
             "the agent to adopt epoch 2")
    wait_for(lambda: json.loads(c.server.cli("ps", stack, "--json").stdout)[0]["state"]
             == "running", 30, "the instance seen running again")
    key = json.loads((c.agent_dir(host) / "credential.json").read_text())["agent_key"]
    stale = RemoteAgent(host, c.hosts()[host]["address"], key, epoch=lambda: 1)
    try:
        with pytest.raises(StaleEpoch):
            stale.stop(InstanceKey(stack, "db", 0), 1)
    finally:
        stale.close()
    assert c.running_on(f"{stack}.db.0") == [host]  # the stale stop did nothing
    events = c.server.cli("events", "--json").stdout
    assert "lease lapsed: epoch 2" in events
    destroy(c, stack)


JOB = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  tick:
    image: base
    schedule: "* * * * *"
    job: {{concurrency: allow, timeout: 30s}}
    env: {{WITNESS: "{witness}"}}
    command: [python3, -c, "{script}"]
    resources: {{memory: 32M, disk: 32M}}
"""
# What a run did, told from inside it: its number, over the underlay to the test's socket;
# the host it ran on is the address it came from (the stack's egress NATs to it).
REPORT = ("import os, socket; h, p = os.environ['WITNESS'].split(':'); "
          "socket.create_connection((h, int(p)), 10).sendall(os.environ['RACKFIRE_RUN'].encode())")


def test_a_cron_job_runs_once_per_slot_across_the_hosts(cluster: Cluster) -> None:
    """Every minute a fresh instance, on whichever host the scheduler picks, tells a witness
    it ran; the controller is killed (-9) and started again between slots. Each slot ran
    exactly once, on the host its history names, and no slot was missed."""
    import socket

    c = cluster
    heard: list[tuple[str, str]] = []  # (the host's underlay address, the run's number)
    witness = socket.create_server((c.bed.controller_ip, 0))
    witness.settimeout(0.5)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                conn, (peer, _) = witness.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                heard.append((peer, conn.recv(64).decode()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    stack = unique("cron")
    text = JOB.format(stack=stack, witness=f"{c.bed.controller_ip}:{witness.getsockname()[1]}",
                      script=REPORT)
    try:
        c.server.cli("apply", "-f", str(write_stack(c.tmp, text)), "-y", timeout=300)

        def succeeded(n: int) -> list[dict[str, Any]]:
            runs = json.loads(c.server.cli("jobs", stack, "--json").stdout)["runs"]
            done = [r for r in runs if r["kind"] == "job"
                    and r["state"] not in ("pending", "running")]
            return done if len(done) >= n else []

        wait_for(lambda: succeeded(1), 100, "the first slot's run")
        c.server.kill9()
        c.server.start()
        runs = wait_for(lambda: succeeded(2), 100, "a slot after the controller's restart")
    finally:
        stop.set()
        listener.join(5)
        witness.close()
    assert all(r["state"] == "succeeded" and r["exit_code"] == 0 for r in runs), runs
    slots = sorted(r["slot"] for r in runs)
    assert all(b - a == 60 for a, b in itertools.pairwise(slots)), slots  # none missed
    address = {h.ip: h.name for h in c.bed.hosts}
    told = [(int(n), address[peer]) for peer, n in heard]
    # Once each, on its host: a run made twice (a retry after the restart, a second host)
    # would have told twice. (A later slot's run may have told already: not counted.)
    numbers = {r["number"] for r in runs}
    assert sorted(t for t in told if t[0] in numbers) == sorted(
        (r["number"], r["host"]) for r in runs), (told, runs)
    assert len({n for n, _ in told}) == len(told), told
    destroy(c, stack)
