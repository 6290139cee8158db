"""Hosts join with a token, then report with their own credential: a real agent process
(`rackfire agent`) against a real server, on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import Server, host_traces, start_agent, unique, wait_for, write_stack

pytestmark = pytest.mark.root


def own_runc(tmp: Path) -> list[str]:
    """Its own runc root: on the server's machine an agent must not see the server's
    containers."""
    return ["--runc-root", str(tmp / "runc")]


def hosts(server: Server) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in json.loads(server.cli("hosts", "--json").stdout)}


def test_join_heartbeat_and_credential(server: Server, tmp_path: Path) -> None:
    # Placed before h1 joins, the stack's instances stay on this host.
    stack = unique("cap")
    server.cli("apply", "-y", "-f", str(write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    command: ["sleep", "100000"]
    resources: {{cpu: 0.25, memory: 32M, disk: 32M}}
""")))
    token = server.cli("token", "create", "--uses", "1", "--ttl", "10m").stdout.split()[0]
    assert token.startswith("rft_")
    agent_dir = tmp_path / "agent1"
    proc = start_agent(agent_dir, *own_runc(tmp_path), "--join", server.url, "--token",
                       token,
                       "--name", "h1", "--label", "rack=r1", "--label", "site=lab")
    try:
        h1 = wait_for(lambda: hosts(server).get("h1"), 30, "h1 to join")
        assert h1["labels"] == {"rack": "r1", "site": "lab"} and h1["state"] == "ready"
        assert h1["capacity"]["cpus"] >= 1 and h1["capacity"]["memory"] > 0
        assert h1["used"]["memory"] > 0 and "container" in h1["runtimes"]
        local = [h for h in hosts(server).values() if h["local"]]
        assert len(local) == 1 and local[0]["state"] == "ready"
        # The credential is kept (0600) and the token is not.
        cred = agent_dir / "credential.json"
        assert cred.stat().st_mode & 0o777 == 0o600
        assert token not in cred.read_text()
        seen = h1["last_seen"]
        wait_for(lambda: hosts(server)["h1"]["last_seen"] > seen, 10, "a heartbeat")

        # Capacity: with h1 up, losing this host would strand nothing (h1 can take it all).
        report = json.loads(server.cli("capacity", "--json").stdout)
        assert sorted(h["name"] for h in report["hosts"]) == sorted([local[0]["name"], "h1"])
        assert report["n_plus_1"]["ok"], report["n_plus_1"]
        [web] = [h for h in report["headroom"] if h["role"] == f"{stack}/web"]
        assert web["more"] >= 2 and web["hosts"]["h1"] >= 1
        mine = next(h for h in report["hosts"] if h["name"] == local[0]["name"])
        assert mine["instances"] == 2 and mine["reserved"]["cpus"] >= 0.5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    # The token was for one host: a second join with it is refused, with what to do.
    other = tmp_path / "agent2"
    res = subprocess.run([sys.executable, "-m", "rackfire", "agent", "--data-dir", str(other),
                          "--join", server.url, "--token", token, "--name", "h2"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "not valid" in res.stderr and "token create" in res.stderr
    assert "Traceback" not in res.stderr and "h2" not in hosts(server)

    # Silent for a while, the host is unreachable (and no longer a place to fail over to);
    # restarted, the agent needs no token.
    wait_for(lambda: hosts(server)["h1"]["state"] == "lost", 20, "h1 lost")
    report = json.loads(server.cli("capacity", "--json").stdout)
    assert not report["n_plus_1"]["ok"]
    out = server.cli("capacity").stdout
    assert "strands 2 of 2" in out, out
    proc = start_agent(agent_dir, *own_runc(tmp_path))
    try:
        wait_for(lambda: hosts(server)["h1"]["state"] == "ready", 20, "heartbeats again")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    # Removed, the host's credential stops working: its agent says so and stops.
    server.cli("host", "rm", "h1")
    proc = start_agent(agent_dir, *own_runc(tmp_path))
    assert proc.wait(30) == 1
    assert "refused this host" in (tmp_path / "agent1.log").read_text()
    assert "h1" not in hosts(server)
    server.cli("destroy", stack, "-y")
    wait_for(lambda: not host_traces(stack), 60, "the stack to be gone")
    # Nothing of the agents is left running.
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_agent(p, tmp_path)]



def _is_agent(pid: str, tmp: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        return "agent" in argv and any(str(tmp) in a for a in argv)
    except OSError:
        return False
