"""A server forced onto the process runtime: plain host processes, marked not isolated."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import (  # type: ignore[import-not-found]
    Server,
    free_port,
    host_traces,
    unique,
    wait_for,
    write_stack,
)

pytestmark = pytest.mark.root


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def answers(url: str) -> bool:
    try:
        get(url)
    except (urllib.error.URLError, OSError):
        return False
    return True


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_process_runtime_runs_serves_renders_and_cleans_up(tmp_path: Path) -> None:
    server = Server(tmp_path / "pdata", runtime="process")
    stack, port = unique("pr"), free_port()
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    files:
      /srv/greeting.txt: "hello from {{{{ instance.name }}}} of {{{{ stack.name }}}}"
    health: {{http: "http://127.0.0.1:{port}/", interval: 1s}}
""")
    server.start()
    try:
        server.cli("apply", "-f", str(f), "-y")
        rows = server.ps(stack)
        assert len(rows) == 1
        row = rows[0]
        assert row["name"] == "web-0" and row["state"] == "running"
        assert row["runtime"] == "process" and row["isolated"] is False
        assert row["health"] == "healthy"
        pid = row["pid"]
        assert isinstance(pid, int) and alive(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        assert "http.server" in cmdline and str(port) in cmdline

        table = server.cli("ps", stack).stdout
        line = next(ln for ln in table.splitlines() if "web-0" in ln)
        assert "not isolated" in line

        # It runs in its own working dir, where its rendered files are.
        workdir = server.data_dir / "instances" / f"{stack}.web.0" / "work"
        rendered = workdir / "srv" / "greeting.txt"
        assert rendered.read_text() == f"hello from web-0 of {stack}"
        assert Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve()
        assert get(f"http://127.0.0.1:{port}/srv/greeting.txt") == rendered.read_text()
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"RACKFIRE_STACK={stack}".encode() in env

        # The plan of the same file is empty; ps --json without a stack lists it too.
        assert server.cli("plan", "-f", str(f), check=False).returncode == 0
        everything = json.loads(server.cli("ps", "--json").stdout)
        assert [r["name"] for r in everything if r["stack"] == stack] == ["web-0"]

        server.cli("destroy", stack, "-y")
        assert server.ps(stack) == []
        wait_for(lambda: not alive(pid), 10, f"pid {pid} to be gone")
        assert not (server.data_dir / "instances" / f"{stack}.web.0").exists()
        assert not answers(f"http://127.0.0.1:{port}/")
        assert stack not in {s["name"] for s in server.api("/v1/stacks")}
        assert host_traces(stack) == []
        assert not (server.data_dir / "stacks" / stack).exists()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.cli("destroy", stack, "-y", check=False)
        server.stop()


def test_day2_on_the_process_runtime(tmp_path: Path) -> None:
    """scale, stop/start and stats work the same without isolation."""
    server = Server(tmp_path / "pdata", runtime="process")
    stack = unique("pd")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  worker:
    image: base
    command: [sleep, "100000"]
""")
    server.start()
    try:
        server.cli("up", "-f", str(f))
        server.cli("scale", f"{stack}/worker", "3")
        rows = {r["name"]: r for r in server.ps(stack)}
        assert sorted(rows) == ["worker-0", "worker-1", "worker-2"]

        server.cli("stop", f"{stack}/worker/2")
        stopped = {r["name"]: r for r in server.ps(stack)}
        assert stopped["worker-2"]["state"] == "stopped" and not alive(rows["worker-2"]["pid"])
        assert stopped["worker-0"]["pid"] == rows["worker-0"]["pid"]
        server.cli("start", f"{stack}/worker/2")
        assert {r["name"]: r for r in server.ps(stack)}["worker-2"]["state"] == "running"

        stats = json.loads(server.cli("stats", stack, "--json").stdout)
        assert [s["name"] for s in stats] == ["worker-0", "worker-1", "worker-2"]
        assert all(s["pids"] >= 1 and s["memory_used"] > 0 for s in stats)
        assert all(s["net_rx"] is None and s["memory_limit"] is None for s in stats)
    finally:
        server.cli("destroy", stack, "-y", check=False)
        server.stop()
    assert host_traces(stack) == []
