"""`rackfire hosts apply` over real SSH: two bed hosts with a real OpenSSH server each (key
auth only, rackfire's paths private to each, as separate machines have them) and nothing of
rackfire on them; the apply installs the bundle, starts and joins the agent, and the hosts
then run a stack's instances. A host that cannot be reached is reported with its step while
the other is installed; nothing is recorded for it, so the next plan installs it again."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cluster import web_stack  # type: ignore[import-not-found]

from rackfire.agent import watchdog
from rackfire.model.hostsfile import SshTarget
from rackfire.providers.install import Probe, stop_agent
from rackfire.providers.ssh import connect
from rackfire.testbed.bed import Bed, pids_in_netns
from rackfire.testbed.sshd import Sshd, start_sshd, stop_all

from harness import Server, unique, wait_for, write_stack  # type: ignore[import-not-found]

pytestmark = pytest.mark.root

PRIVATE = ("/opt/rackfire", "/var/lib/rackfire-agent", "/run/rackfire")


@dataclass
class Fleet:
    bed: Bed
    server: Server
    sshds: list[Sshd]
    key: Path
    tmp: Path

    def hosts_file(self, *, unreachable: bool = False) -> Path:
        h1, h2 = self.sshds
        known = self.tmp / "known_hosts"
        known.write_text(h2.known_hosts_line())
        lines = [f"controller: http://{self.bed.controller_ip}:{self.server.port}", "hosts:",
                 f"  - {{name: h1, address: {h1.host.ip}, key: {self.key}, "
                 f"host_key: '{h1.fingerprint()}', labels: {{rack: r1}}}}",
                 f"  - {{name: h2, address: {h2.host.ip}, key: {self.key}, "
                 f"known_hosts: {known}, labels: {{rack: r2}}}}"]
        if unreachable:
            nobody = h1.host.ip.rsplit(".", 1)[0] + ".200"
            lines.append(f"  - {{name: h9, address: {nobody}, key: {self.key}, "
                         f"host_key: '{h1.fingerprint()}'}}")
        path = self.tmp / "hosts.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def hosts(self) -> dict[str, dict[str, object]]:
        return {h["name"]: h for h in self.server.api("/v1/hosts")}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, capture_output=True)
    bed = Bed(2)
    srv = Server(tmp_path / "data", listen="0.0.0.0", args=("--no-local-host",))
    sshds: list[Sshd] = []
    try:
        bed.create()
        sshds += [start_sshd(bed, h, tmp_path / f"sshd-{h.name}", Path(f"{key}.pub")
                             .read_text(), private=PRIVATE) for h in bed.hosts]
        for s in sshds:
            wait_for(lambda s=s: bed.run_in(s.host, ["ss", "-Hltn", "sport = :22"])
                     .stdout.strip(), 20, "sshd to listen")
        srv.start()
        yield Fleet(bed, srv, sshds, key, tmp_path)
    finally:
        try:
            for st in srv.api("/v1/stacks"):
                srv.cli("destroy", st["name"], "-y", check=False)
        except Exception as e:  # the server may not have started
            print(f"destroying the stacks: {e}")
        finally:
            srv.stop()
            for s in sshds:  # the installed agents: by their supervisor, then the watchdogs
                asyncio.run(_stop(s, key))
                watchdog.stop(s.dir / "private" / "1")
            left = [c for s in sshds for c in rackfire_processes(s)]
            stop_all(sshds)
            bed.destroy()
            assert left == [], f"rackfire processes left in the hosts: {left}"


def rackfire_processes(s: Sshd) -> list[bytes]:
    """The command lines of rackfire's processes in the host (its agent, supervisor,
    watchdog), waiting up to 15 s for stopped ones to exit."""
    deadline = time.monotonic() + 15
    while True:
        found = []
        for pid in pids_in_netns(s.host.netns):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # gone meanwhile
            if b"rackfire" in cmdline or b"run.py" in cmdline:
                found.append(cmdline)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


async def _stop(s: Sshd, key: Path) -> None:
    try:
        async with connect(s.host.name, SshTarget(s.host.ip, key=str(key),
                                                  host_key=s.fingerprint())) as session:
            await stop_agent(session, Probe("", "", systemd=False))
    except Exception as e:  # teardown goes on with the next host
        print(f"stopping the agent on {s.host.name}: {e}")


def test_apply_installs_and_joins_the_hosts_which_then_run_instances(fleet: Fleet) -> None:
    file = fleet.hosts_file()
    plan = fleet.server.cli("hosts", "plan", "-f", str(file), check=False)
    assert plan.returncode == 2 and "to install 2" in plan.stdout, plan.stdout
    applied = fleet.server.cli("hosts", "apply", "-f", str(file), "--json", timeout=300)
    outcomes = json.loads(applied.stdout)["outcomes"]
    assert [(o["name"], o["step"], o["done"]) for o in outcomes] == [
        ("h1", "install", True), ("h2", "install", True)], outcomes
    wait_for(lambda: all(h["state"] == "ready" and h["address"]
                         for h in fleet.hosts().values()) and len(fleet.hosts()) == 2,
             30, "both hosts ready")
    assert {n: h["labels"] for n, h in fleet.hosts().items()} == {
        "h1": {"rack": "r1"}, "h2": {"rack": "r2"}}
    # Installed: the plan has nothing more to do, and no token is left on the hosts.
    again = fleet.server.cli("hosts", "plan", "-f", str(file), check=False)
    assert again.returncode == 0, again.stdout
    for s in fleet.sshds:
        opt = s.dir / "private" / "0"
        assert not (opt / "join-token").exists()
        current = os.readlink(opt / "current")  # a path on the host, as it sees it
        assert (opt / Path(current).name / "run.py").exists()
    # The hosts run a stack, spread over both.
    stack = unique("sshweb")
    path = write_stack(fleet.tmp, web_stack(stack, 2))  # spread over hosts by default
    fleet.server.cli("apply", "-f", str(path), "-y", timeout=300)
    rows = json.loads(fleet.server.cli("ps", stack, "--json").stdout)
    assert sorted((r["host"], r["state"]) for r in rows) == [("h1", "running"),
                                                             ("h2", "running")], rows


def test_a_host_that_cannot_be_reached_fails_alone_and_stays_to_install(
        fleet: Fleet) -> None:
    file = fleet.hosts_file(unreachable=True)
    applied = fleet.server.cli("hosts", "apply", "-f", str(file), "-y", timeout=300,
                               check=False)
    assert applied.returncode == 1
    assert "h9" in applied.stdout and "failed at connect" in applied.stdout, applied.stdout
    assert applied.stdout.count("done") == 2
    plan = fleet.server.cli("hosts", "plan", "-f", str(file), "--json", check=False)
    assert [(c["step"], c["name"]) for c in json.loads(plan.stdout)["changes"]] == [
        ("install", "h9")]
    events = fleet.server.api("/v1/events")
    assert any(e["target"] == "host/h9" and e["result"] == "failed" for e in events)
    assert not os.path.exists("/opt/rackfire/current")  # nothing landed on this machine


def runs(fleet: Fleet, stack: str) -> dict[str, tuple[str, object, object]]:
    """Each instance: its host, pid and start time (the same after: not restarted)."""
    return {r["name"]: (r["host"], r["pid"], r["started_at"])
            for r in fleet.server.api(f"/v1/instances?stack={stack}")}


def test_labels_an_upgrade_and_an_uninstall_keep_the_instances_serving(fleet: Fleet) -> None:
    file = fleet.hosts_file()
    fleet.server.cli("hosts", "apply", "-f", str(file), "-y", timeout=300)
    stack = unique("sshday2")
    fleet.server.cli("apply", "-f", str(write_stack(fleet.tmp, web_stack(stack, 2))), "-y",
                     timeout=300)
    before = runs(fleet, stack)
    assert sorted(h for h, _, _ in before.values()) == ["h1", "h2"]

    # New labels: the agent restarts with them; its instance does not.
    file.write_text(file.read_text().replace("rack: r1", "rack: r9"))
    plan = json.loads(fleet.server.cli("hosts", "plan", "-f", str(file), "--json",
                                       check=False).stdout)
    assert plan["changes"] == [{"step": "reconfigure", "name": "h1",
                                "changes": ["label rack: r1 -> r9"]}]
    fleet.server.cli("hosts", "apply", "-f", str(file), "-y", timeout=300)
    assert fleet.hosts()["h1"]["labels"] == {"rack": "r9"}
    assert runs(fleet, stack) == before

    # An upgrade (the store says h2 runs an older rackfire): its agent restarts from the
    # bundle, its instance keeps running.
    db = sqlite3.connect(fleet.server.data_dir / "rackfire.db")
    with db:
        row = db.execute("SELECT declared FROM applied_hosts WHERE name='h2'").fetchone()
        declared = json.loads(row[0])
        db.execute("UPDATE applied_hosts SET declared=? WHERE name='h2'",
                   (json.dumps({**declared, "version": "0.0.1"}),))
    db.close()
    plan = json.loads(fleet.server.cli("hosts", "plan", "-f", str(file), "--json",
                                       check=False).stdout)
    assert [(c["step"], c["name"]) for c in plan["changes"]] == [("upgrade", "h2")]
    fleet.server.cli("hosts", "apply", "-f", str(file), "-y", timeout=300)
    assert runs(fleet, stack) == before

    # h2 leaves the file: drained (its instance moves to h1), then nothing of rackfire is
    # left on it and it is no longer a host.
    h2 = fleet.sshds[1]
    file.write_text("\n".join(line for line in file.read_text().splitlines()
                              if "name: h2" not in line) + "\n")
    fleet.server.cli("hosts", "apply", "-f", str(file), "-y", timeout=600)
    assert sorted(h for h, _, _ in runs(fleet, stack).values()) == ["h1", "h1"]
    assert set(fleet.hosts()) == {"h1"}
    for private in sorted((h2.dir / "private").iterdir()):  # /opt/rackfire, data, /run/...
        assert list(private.iterdir()) == [], (private, list(private.iterdir()))
    assert rackfire_processes(h2) == []
