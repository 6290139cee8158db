"""A reconcile never waits inside: stacks rolling out slow health checks hold no worker, so
another stack's apply converges as fast as on an idle server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Server, unique, write_stack  # type: ignore[import-not-found]

pytestmark = pytest.mark.root

SLOW_READY = 20  # seconds a rolled instance takes to pass its check


def slow_stack(tmp: Path, stack: str, version: str) -> Path:
    """One instance that passes its check only SLOW_READY s after it starts."""
    command = ["sh", "-c", f"sleep {SLOW_READY}; touch /tmp/ready; exec sleep 100000"]
    return write_stack(tmp, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: {json.dumps(command)}
    env: {{VERSION: "{version}"}}
    resources: {{memory: 64M, disk: 16M}}
    health: {{exec: ["test", "-e", "/tmp/ready"], interval: 1s, grace: 60s}}
    update: {{max_surge: 0, health_timeout: 90s}}
""", name=f"{stack}-{version}.yaml")


def quick_stack(tmp: Path, stack: str) -> Path:
    return write_stack(tmp, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    command: ["python3", "-m", "http.server", "8000"]
    resources: {{memory: 64M, disk: 16M}}
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
""", name=f"{stack}.yaml")


def apply_in_background(server: Server, path: Path,
                        timeout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "rackfire", "apply", "-f", str(path), "-y",
                             "--timeout", str(timeout)], env=server.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=200)
        assert p.returncode == 0, out.decode()


def timed_apply(server: Server, path: Path) -> float:
    t0 = time.monotonic()
    server.cli("apply", "-f", str(path), "-y", "--timeout", "120")
    return time.monotonic() - t0


def test_slow_rollouts_do_not_delay_another_stacks_apply(server: Server,
                                                         tmp_path: Path) -> None:
    # The server runs 4 reconcile workers: four rolling stacks would have held them all.
    slow = [unique("slow") for _ in range(4)]
    finished([apply_in_background(server, slow_stack(tmp_path, s, "1"), 120) for s in slow])
    idle = timed_apply(server, quick_stack(tmp_path, unique("idle")))

    rolling = [apply_in_background(server, slow_stack(tmp_path, s, "2"), 150) for s in slow]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every slow stack is replacing its instance
            states = [server.api(f"/v1/stacks/{s}") for s in slow]
            if all(st["generation"] == 2 and not st["converged"] for st in states) and all(
                    server.ps(s)[0]["health"] != "healthy" for s in slow):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the slow stacks did not start rolling: {states}")
        busy = timed_apply(server, quick_stack(tmp_path, unique("busy")))
        still = [server.api(f"/v1/stacks/{s}")["converged"] for s in slow]
    finally:
        finished(rolling)
    # Converged while all four were still waiting on their slow checks ...
    assert not any(still), still
    # ... and about as fast as on the idle server (not a slow check later).
    assert busy < idle + SLOW_READY / 2, (busy, idle)
    for s in slow:
        (row,) = server.ps(s)
        assert row["health"] == "healthy" and row["restarts"] == 0
