"""`rackfire hosts apply` over real SSH: two bed hosts with a real OpenSSH server each (key
auth only, rackfire's paths private to each, as separate machines have them) and nothing of
rackfire on them; the apply installs the bundle, starts and joins the agent, and the hosts
then run a stack's instances. A host that cannot be reached is reported with its step while
the other is installed; nothing is recorded for it, so the next plan installs it again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cluster import web_stack  # type: ignore[import-not-found]

from rackfire.agent import watchdog
from rackfire.model.hostsfile import SshTarget
from rackfire.providers.install import Probe, stop_agent
from rackfire.providers.ssh import connect
from rackfire.testbed.bed import Bed
from rackfire.testbed.sshd import Sshd, start_sshd

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
                s.stop()
            bed.destroy()


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
