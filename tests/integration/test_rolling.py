"""Rolling replace: a changed command rolls by the role's update policy (a surge instance
first, then one old one at a time), each waiting for health; a release that never becomes
healthy stops the rollout at its first instance."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, free_port, unique, wait_for, write_stack  # type: ignore[import-not-found]

pytestmark = pytest.mark.root

GOOD = ["python3", "-m", "http.server", "8000"]
GOOD_BOUND = ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]
NEVER_HEALTHY = ["sleep", "100000"]
RETRY_DELAY = 5.0  # the controller retries a failed stack after this long


def web_stack(tmp: Path, stack: str, port: int, command: list[str],
              health: str = "{http: \"http://127.0.0.1:8000/\", interval: 1s}",
              update: str = "{}") -> Path:
    return write_stack(tmp, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 3
    command: {json.dumps(command)}
    resources: {{memory: 128M, disk: 32M}}
    ports: ["{port}:8000"]
    health: {health}
    update: {update}
""")


def by_name(server: Server, stack: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in server.ps(stack)}


def cmdline(pid: int) -> list[str]:
    """[] once the process is gone (one the restart policy restarts may go meanwhile)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")
    except FileNotFoundError:
        return []


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


class RolloutWatcher:
    """While an apply runs: samples the stack's instances (the rows `ps --json` prints) and
    keeps the fewest web instances seen running and healthy at once; meanwhile, from another
    thread, asks the published port again and again and keeps the slowest answer."""

    def __init__(self, server: Server, stack: str, port: int) -> None:
        self.instances = f"{server.url}/v1/instances"
        self.auth = server.auth
        self.published = f"http://127.0.0.1:{port}/"
        self.stack = stack
        self.minimum = 3
        self.samples: list[list[tuple[str, Any, str, str]]] = []
        self.requests = 0
        self.slowest = 0.0
        self.port_failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch_instances, daemon=True),
                         threading.Thread(target=self._watch_port, daemon=True)]

    def __enter__(self) -> RolloutWatcher:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _watch_instances(self) -> None:
        with httpx.Client(timeout=10, headers=self.auth) as http:
            while not self._stop.is_set():
                rows = http.get(self.instances, params={"stack": self.stack}).json()
                ready = sum(1 for r in rows if r["role"] == "web" and r["state"] == "running"
                            and r["health"] == "healthy")
                self.minimum = min(self.minimum, ready)
                self.samples.append([(r["name"], r["pid"], r["state"], r["health"])
                                     for r in rows])
                time.sleep(0.1)

    def _watch_port(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    http.get(self.published).raise_for_status()
                except httpx.HTTPError as e:
                    self.port_failures.append(repr(e))
                self.requests += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                time.sleep(0.1)


def test_command_change_rolls_one_at_a_time(server: Server, tmp_path: Path) -> None:
    stack, port = unique("rl"), free_port()
    server.cli("apply", "-f", str(web_stack(tmp_path, stack, port, GOOD)), "-y")
    before = by_name(server, stack)
    assert sorted(before) == ["web-0", "web-1", "web-2"]
    assert {r["health"] for r in before.values()} == {"healthy"}

    changed = web_stack(tmp_path, stack, port, GOOD_BOUND)
    plan = server.cli("plan", "-f", str(changed), "--json", check=False)
    assert plan.returncode == 2
    actions = json.loads(plan.stdout)["actions"]
    assert [(a["kind"], a["instance"]) for a in actions] == [(
        "create", f"{stack}/web/3")] + [("replace", f"{stack}/web/{i}") for i in range(3)]
    assert "surge" in actions[0]["reason"]
    assert all("command" in a["reason"] for a in actions[1:]), actions

    with RolloutWatcher(server, stack, port) as watch:
        server.cli("apply", "-f", str(changed), "-y")
    assert len(watch.samples) >= 10
    assert watch.minimum >= 2, ("the rollout took more than one instance out at a time",
                                watch.samples)
    # The surge instance served beside the old ones, and is gone now.
    assert any((n, st, h) == ("web-3", "running", "healthy") for sample in watch.samples
               for n, _, st, h in sample)

    after = by_name(server, stack)
    for name, old in before.items():
        new = after[name]
        assert new["pid"] != old["pid"], name
        assert new["ip"] == old["ip"], name
        assert new["state"] == "running" and new["health"] == "healthy", name
        assert "--bind" in cmdline(new["pid"]), name
    assert server.cli("plan", "-f", str(changed), check=False).returncode == 0

    # The published port served throughout, and serves from every new instance after.
    assert watch.requests >= 5
    assert watch.port_failures == [], watch.port_failures
    assert watch.slowest < 5, f"a request to the published port took {watch.slowest:.1f}s"
    for _ in range(6):  # round robin: each instance twice
        assert "Directory listing" in get(f"http://127.0.0.1:{port}/")


def test_unhealthy_release_stops_at_the_first_instance(server: Server, tmp_path: Path) -> None:
    stack, port = unique("rb"), free_port()
    server.cli("apply", "-f", str(web_stack(tmp_path, stack, port, GOOD)), "-y")
    before = by_name(server, stack)

    bad = web_stack(tmp_path, stack, port, NEVER_HEALTHY,
                    health="{http: \"http://127.0.0.1:8000/\", grace: 3s, interval: 1s, "
                           "retries: 2}", update="{max_surge: 0, health_timeout: 8s}")
    # A bounded wait: a rollout that does not stop would otherwise wait out the default 600s.
    proc = server.cli("apply", "-f", str(bad), "-y", "--timeout", "30", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Which instance, and why: its failed check, and that the rollout went no further.
    assert "web-0" in proc.stderr, proc.stderr
    assert re.search(r"not healthy|unhealthy|is failing", proc.stderr), proc.stderr
    assert re.search(r"rollout (stopped|held)", proc.stderr), proc.stderr

    def check_only_web0_replaced() -> None:
        rows = by_name(server, stack)
        assert sorted(rows) == ["web-0", "web-1", "web-2"]
        web0 = rows["web-0"]
        assert web0["pid"] != before["web-0"]["pid"] and web0["health"] != "healthy"
        # It runs the new release, when it runs: the restart policy restarts it meanwhile.
        if web0["pid"] and (argv := cmdline(web0["pid"])):
            assert argv[0].endswith("sleep"), argv
        for name in ("web-1", "web-2"):
            assert rows[name]["pid"] == before[name]["pid"], name
            assert rows[name]["state"] == "running" and rows[name]["health"] == "healthy"
            assert cmdline(rows[name]["pid"])[-1] == "8000", name  # the old command
        # The published port keeps answering from the old, healthy instances.
        for _ in range(6):
            assert "Directory listing" in get(f"http://127.0.0.1:{port}/")

    check_only_web0_replaced()
    # The server retries the failed stack; a retry must not carry the bad release on to the
    # next instances.
    time.sleep(RETRY_DELAY * 2 + 3)
    check_only_web0_replaced()
    status = server.api(f"/v1/stacks/{stack}")
    assert not status["converged"]
    assert by_name(server, stack)["web-0"]["restarts"] >= 1  # the restart policy, meanwhile

    # Going back to the good command heals web-0 and leaves the others alone.
    server.cli("apply", "-f", str(web_stack(tmp_path, stack, port, GOOD)), "-y")
    rows = wait_for(lambda: (r := by_name(server, stack)) and all(
        x["health"] == "healthy" for x in r.values()) and r, 30, "all healthy again")
    assert rows["web-1"]["pid"] == before["web-1"]["pid"]
    assert rows["web-2"]["pid"] == before["web-2"]["pid"]


# Shuts down gracefully: on SIGTERM it keeps serving for a moment, then stops.
GRACEFUL = ["sh", "-c", "trap 'sleep 1.5; kill $pid; exit 0' TERM; "
            "python3 -m http.server 8000 & pid=$!; wait $pid"]


def test_unhealthy_release_stops_even_if_the_old_instance_stops_slowly(
        server: Server, tmp_path: Path) -> None:
    """The health of the instance being replaced must not count for its replacement."""
    stack, port = unique("rg"), free_port()
    server.cli("apply", "-f", str(web_stack(tmp_path, stack, port, GRACEFUL)), "-y")
    before = by_name(server, stack)

    bad = web_stack(tmp_path, stack, port, NEVER_HEALTHY,
                    health="{http: \"http://127.0.0.1:8000/\", grace: 3s, interval: 1s, "
                           "retries: 2}", update="{max_surge: 0, health_timeout: 8s}")
    proc = server.cli("apply", "-f", str(bad), "-y", "--timeout", "30", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "web-0" in proc.stderr, proc.stderr
    rows = by_name(server, stack)
    assert cmdline(rows["web-0"]["pid"])[0].endswith("sleep")
    for name in ("web-1", "web-2"):
        assert rows[name]["pid"] == before[name]["pid"], (name, proc.stderr)
    assert "Directory listing" in get(f"http://127.0.0.1:{port}/")
