"""Day-2 operations through the real CLI and a real server: scale, stop/start/restart,
resize, the health and restart policy, stats and events, on real runc containers."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import Server, free_port, runc_exec, unique, wait_for, write_stack

pytestmark = pytest.mark.root

# Answers with its name; on SIGTERM it says so for 2 s before it exits, so a request the
# published port still sent it after the stop began would show.
DRAINING_WEB = """\
import http.server, os, signal, threading
state = {"name": os.environ["HOSTNAME"]}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = state["name"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def term(*_):
    state["name"] += " terminating"
    threading.Timer(2.0, lambda: os._exit(0)).start()
signal.signal(signal.SIGTERM, term)
http.server.ThreadingHTTPServer(("", 8000), H).serve_forever()
"""

SCALED = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: {count}
    command: [python3, /srv/web.py]
    resources: {{memory: 64M, disk: 32M}}
    ports: ["{port}:8000"]
    stop_timeout: 5s
    files:
      /srv/web.py: |
{script}
    health: {{http: "http://127.0.0.1:8000/", interval: 300ms}}
"""


def scaled(tmp: Path, stack: str, port: int, count: int) -> Path:
    script = "\n".join("        " + line for line in DRAINING_WEB.splitlines())
    return write_stack(tmp, SCALED.format(stack=stack, port=port, count=count, script=script))


def rows(server: Server, stack: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in server.ps(stack)}


class Poller:
    """Requests to the published port as fast as it answers, from a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as r:
                    self.answers.append(r.read().decode())
            except OSError as e:
                self.errors.append(str(e))
            time.sleep(0.01)


def test_scale_keeps_survivors_and_drains_before_stopping(server: Server,
                                                          tmp_path: Path) -> None:
    stack, port = unique("sc"), free_port()
    file = scaled(tmp_path, stack, port, 2)
    server.cli("up", "-f", str(file))
    first = rows(server, stack)

    up = server.cli("scale", f"{stack}/web", "5")
    assert "create" in up.stdout
    five = rows(server, stack)
    assert sorted(five) == [f"web-{i}" for i in range(5)]
    for name in ("web-0", "web-1"):  # untouched: same process, same start
        assert (five[name]["pid"], five[name]["started_at"]) == (
            first[name]["pid"], first[name]["started_at"])

    with Poller(port) as poller:
        time.sleep(0.5)
        server.cli("instances", f"{stack}/web", "1")  # the alias
        time.sleep(0.5)
    one = rows(server, stack)
    assert sorted(one) == ["web-0"]
    assert (one["web-0"]["pid"], one["web-0"]["started_at"]) == (
        first["web-0"]["pid"], first["web-0"]["started_at"])
    assert poller.answers and not poller.errors, poller.errors[:3]
    late = [a for a in poller.answers if "terminating" in a]
    assert not late, f"the port sent requests to stopping instances: {late[:3]}"
    assert {a for a in poller.answers} >= {"web-1", "web-4"}  # they served before

    # The scale is the desired state now; the file that says 2 says it would undo it.
    plan = json.loads(server.cli("plan", "-f", str(file), "--json", check=False).stdout)
    assert any("the file says 2" in n and "`rackfire scale` set 1" in n for n in plan["notes"])
    human = server.cli("plan", "-f", str(file), check=False)
    assert "note:" in human.stderr and "sets it back to 2" in human.stderr

    events = json.loads(server.cli("events", stack, "--json").stdout)
    scales = [e for e in events if e["action"] == "scale"]
    assert [e["reason"] for e in scales] == ["count 2 → 5", "count 5 → 1"]
    assert all("@" in e["actor"] for e in scales)
    destroyed = [e["target"] for e in events if e["action"] == "destroy" and e["result"] == "ok"]
    assert sorted(destroyed) == [f"{stack}/web/{i}" for i in (1, 2, 3, 4)]  # side by side


def test_stop_start_restart_keep_disk_and_ip(server: Server, tmp_path: Path) -> None:
    stack, port = unique("ss"), free_port()
    server.cli("up", "-f", str(scaled(tmp_path, stack, port, 2)))
    before = rows(server, stack)
    assert runc_exec(f"{stack}.web.1", "sh", "-c", "echo kept > /var/tmp/data").returncode == 0

    server.cli("stop", f"{stack}/web-1")
    stopped = rows(server, stack)
    assert stopped["web-1"]["state"] == "stopped" and stopped["web-1"]["stopped_by_operator"]
    assert "stopped by operator" in server.cli("ps", stack).stdout

    # Other work on the stack reconciles it: web-1 stays stopped; web-0 restarts.
    server.cli("restart", f"{stack}/web/0")
    after = rows(server, stack)
    assert after["web-1"]["state"] == "stopped"
    assert after["web-0"]["pid"] != before["web-0"]["pid"]
    assert after["web-0"]["started_at"] > before["web-0"]["started_at"]
    answers = {urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
               for _ in range(6)}
    assert answers == {"web-0"}  # a stopped instance is out of the port

    server.cli("start", f"{stack}/web/1")
    started = rows(server, stack)
    assert started["web-1"]["state"] == "running"
    assert started["web-1"]["ip"] == before["web-1"]["ip"]
    assert runc_exec(f"{stack}.web.1", "cat", "/var/tmp/data").stdout == "kept\n"

    bad = server.cli("stop", f"{stack}/web/7", check=False)
    assert bad.returncode == 1 and "matches no instance" in bad.stderr


def test_failing_check_backs_off_into_failed_and_stays(server: Server,
                                                       tmp_path: Path) -> None:
    stack = unique("hf")
    file = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  ok:
    image: base
    command: [sleep, "100000"]
  bad:
    image: base
    command: [sleep, "100000"]
    health: {{tcp: 9, interval: 200ms, timeout: 200ms, retries: 1, grace: 0s}}
    restart: {{attempts: 3, window: 1m}}
""")
    server.cli("up", "-f", str(file), check=False)  # it cannot converge: `bad` fails
    bad = wait_for(lambda: (r := rows(server, stack).get("bad-0")) and r["state"] == "failed"
                   and r, 60, "bad-0 to be failed")
    assert bad["restarts"] == 3
    assert "unhealthy" in bad["health_message"] and "3 times in 1m" in bad["health_message"]
    ps = server.cli("ps", stack).stdout
    assert "failed" in ps and "3 times in 1m" in ps

    events = json.loads(server.cli("events", stack, "--json").stdout)
    restarts = [e["time"] for e in events
                if e["action"] == "restart" and e["target"] == f"{stack}/bad/0"]
    assert len(restarts) == 3
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    # Exponential backoff: 1 s, then 2 s. Events are stamped when a restart has finished,
    # so a gap may be a few ms short of the backoff measured from its start.
    assert gaps[1] > gaps[0] and gaps[1] >= 1.95, gaps
    assert any(e["action"] == "fail" for e in events)
    assert any(e["action"] == "unhealthy" and e["actor"] == "health" for e in events)

    # Failed is kept, and costs the controller next to nothing.
    cpu0 = _cpu_seconds(server)
    time.sleep(4)
    assert _cpu_seconds(server) - cpu0 < 1.0
    assert rows(server, stack)["bad-0"]["restarts"] == 3
    assert server.api(f"/v1/stacks/{stack}")["status"] == "degraded"


def _cpu_seconds(server: Server) -> float:
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


RESIZED = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    command: [sleep, "100000"]
    resources: {{cpu: 0.5, memory: 64M, disk: 32M}}
"""


def test_resize_is_live_grows_disks_online_and_refuses_before_any_change(
        server: Server, tmp_path: Path) -> None:
    stack = unique("rz")
    file = write_stack(tmp_path, RESIZED.format(stack=stack))
    server.cli("up", "-f", str(file))
    cid = f"{stack}.db.0"
    before = rows(server, stack)["db-0"]
    memory = Path(f"/sys/fs/cgroup/memory/rackfire/{cid}/memory.limit_in_bytes")
    quota = Path(f"/sys/fs/cgroup/cpu/rackfire/{cid}/cpu.cfs_quota_us")
    assert (int(memory.read_text()), int(quota.read_text())) == (64 << 20, 50_000)

    # Fill the disk, then grow it: more data fits, with the same process.
    full = runc_exec(cid, "dd", "if=/dev/zero", "of=/var/tmp/fill1", "bs=1M", "count=64")
    assert full.returncode != 0 and "No space left" in full.stderr
    out = server.cli("resize", f"{stack}/db", "--memory", "96M", "--cpu", "1.5", "--disk", "64M")
    assert "resize" in out.stdout
    assert (int(memory.read_text()), int(quota.read_text())) == (96 << 20, 150_000)
    more = runc_exec(cid, "dd", "if=/dev/zero", "of=/var/tmp/fill2", "bs=1M", "count=20")
    assert more.returncode == 0, more.stderr
    after = rows(server, stack)["db-0"]
    assert (after["pid"], after["started_at"]) == (before["pid"], before["started_at"])

    generation = server.api(f"/v1/stacks/{stack}")["generation"]
    shrink = server.cli("resize", f"{stack}/db", "--disk", "32M", check=False)
    assert shrink.returncode == 1 and "cannot shrink" in shrink.stderr, shrink.stderr
    huge = server.cli("resize", f"{stack}/db", "--memory", "64T", check=False)
    assert huge.returncode == 1 and "cannot hold" in huge.stderr, huge.stderr
    assert server.api(f"/v1/stacks/{stack}")["generation"] == generation
    assert int(memory.read_text()) == 96 << 20
    refused = [e for e in json.loads(server.cli("events", stack, "--json").stdout)
               if e["result"] == "refused"]
    assert [e["action"] for e in refused] == ["resize", "resize"]
    assert "cannot shrink" in refused[0]["reason"] and "cannot hold" in refused[1]["reason"]

    # The file still says 32M of disk: planning it is refused (a disk cannot shrink); with
    # its disk brought up to date, the plan notes what it would set back.
    stale = server.cli("plan", "-f", str(file), check=False)
    assert stale.returncode == 1 and "cannot shrink to 32M" in stale.stderr
    file.write_text(file.read_text().replace("disk: 32M", "disk: 64M"))
    notes = json.loads(server.cli("plan", "-f", str(file), "--json", check=False).stdout)
    assert any("resources.memory: the file says 64M" in n and "set 96M" in n
               for n in notes["notes"]), notes
    assert any("resources.cpu: the file says 0.5" in n for n in notes["notes"])


def test_stats_are_measured(server: Server, tmp_path: Path) -> None:
    stack = unique("st")
    file = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  burn:
    image: base
    command: [sh, -c, "while :; do :; done"]
    resources: {{cpu: 0.5}}
  hog:
    image: base
    command: [python3, /srv/hog.py]
    files:
      /srv/hog.py: |
        import os, time
        while not os.path.exists("/tmp/go"):
            time.sleep(0.1)
        x = bytearray(80 << 20)
        for i in range(0, len(x), 4096):
            x[i] = 1
        time.sleep(100000)
    resources: {{memory: 256M}}
""")
    server.cli("up", "-f", str(file))

    def stat(name: str) -> dict[str, Any]:
        data = json.loads(server.cli("stats", f"{stack}/{name.split('-')[0]}", "--json").stdout)
        [row] = [r for r in data if r["name"] == name]
        return row

    cpu = statistics.median(stat("burn-0")["cpu_percent"] for _ in range(3))
    assert 35 <= cpu <= 65, cpu
    hog = stat("hog-0")
    assert hog["memory_limit"] == 256 << 20 and hog["pids"] >= 1 and hog["state"] == "running"
    assert hog["disk_limit"] > 0 and hog["disk_used"] is not None and hog["uptime"] > 0
    assert hog["net_rx"] is not None
    runc_exec(f"{stack}.hog.0", "touch", "/tmp/go")
    wait_for(lambda: stat("hog-0")["memory_used"] > hog["memory_used"] + (60 << 20), 20,
             "the allocation to show in memory used")

    table = server.cli("stats", stack).stdout.splitlines()
    header = table[0]
    assert header.split() == ["NAME", "STATE", "HEALTH", "CPU", "MEMORY", "DISK", "LOG", "NET",
                              "RX", "/", "TX", "PIDS", "UPTIME", "HOST"]
    assert [line.split()[0] for line in table[1:]] == ["burn-0", "hog-0"]
    assert len({line.index("running") for line in table[1:]}) == 1  # the columns line up
