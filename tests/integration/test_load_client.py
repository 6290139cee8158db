"""`rackfire load` in real runc containers, through the real CLI and server: 4 clients of
the built-in appliance at 100/s for 5 s against a published port of another stack answer
~500 requests, 0 errors, with percentiles; each client stayed under its 64M (measured while
it ran, and none OOM-killed: every run succeeded); the clients' stack is gone afterwards.
Bad input is refused before anything is made."""

from __future__ import annotations

import ipaddress
import json
import threading
import time

import httpx
import pytest

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

PORT = 7751
STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: [python3, -m, http.server, "8000"]
    ports: ["{port}:8000"]
    resources: {{memory: 64M, disk: 32M}}
    health: {{http: "http://127.0.0.1:8000/", grace: 30}}
"""


def stack_names(server: Server) -> list[str]:
    return [s["name"] for s in server.api("/v1/stacks")]


def test_load_reports_the_requests_and_removes_its_clients(server: Server,
                                                            tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = unique("ld")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack, port=PORT))),
               timeout=240)
    # The published port listens on every host address; a container of another stack
    # reaches one of them as its host's own (input, not forwarded): the target stack's
    # gateway is such an address.
    subnet = server.api(f"/v1/stacks/{stack}")["subnet"]
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    assert httpx.get(f"http://{gateway}:{PORT}/", timeout=5).status_code == 200

    peak: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:  # each client's memory, while the test runs
        while not done.is_set():
            try:
                rows = httpx.get(f"{server.url}/v1/stats", params={"stack": f"{stack}-load"},
                                 headers=server.auth, timeout=5).json()
            except httpx.HTTPError:
                rows = []
            for r in rows if isinstance(rows, list) else []:
                if r.get("memory_used"):
                    peak[r["id"]] = max(peak.get(r["id"], 0), r["memory_used"])
                    assert r["memory_limit"] == 64 << 20
            time.sleep(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    try:
        ran = server.cli("load", stack, "--target", f"http://{gateway}:{PORT}/",
                         "--clients", "4", "--rate", "100/s", "--duration", "5s",
                         "--save", str(report_file), timeout=240)
    finally:
        done.set()
        sampler.join(5)
    took = time.monotonic() - started
    table = ran.stdout
    report = json.loads(report_file.read_text())
    print(table, f"took {took:.1f}s", "peak memory:", peak, sep="\n")
    assert report["clients"] == report["reporting"] == 4
    assert 490 <= report["sent"] <= 510 and report["completed"] == report["sent"]
    assert report["ok"] == report["sent"] and sum(report["errors"].values()) == 0
    assert report["statuses"] == {"200": report["sent"]}
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert 4.5 < report["duration"] < 8 and 95 <= report["intended_rate"] <= 105
    assert all(r["state"] == "succeeded" for r in report["runs"]), report["runs"]
    for what in ("throughput", "p50", "p95", "p99", "max", "status 200"):
        assert what in table
    # Under the 64M limit (which would OOM-kill one past it: its run would fail).
    assert peak and len(peak) == 4 and max(peak.values()) < 64 << 20, peak

    assert f"{stack}-load" not in stack_names(server)
    assert stack in stack_names(server)

    # Once the first is gone, a second: --json prints the report; 24 clients, more than the
    # runs a role keeps (control/loadtest.py), all report; a 404 is an error of the result,
    # not of the test (exit 0).
    again = server.cli("load", stack, "--target", f"http://{gateway}:{PORT}/missing",
                       "--clients", "24", "--rate", "48", "--duration", "1s", "--json",
                       timeout=240)
    second = json.loads(again.stdout)
    assert second["reporting"] == 24 and len({r["number"] for r in second["runs"]}) == 24, \
        [r for r in second["runs"] if r["state"] != "succeeded"] or second["runs"]
    assert second["errors"]["http_4xx"] == second["sent"] == 48, second
    assert second["statuses"] == {"404": 48}
    wait_for(lambda: f"{stack}-load" not in stack_names(server), 30, "the load stack to go")


def test_load_refuses_bad_input_before_making_anything(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = unique("ld")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack,
                                                                   port=PORT + 1))),
               timeout=240)
    url = f"http://127.0.0.1:{PORT + 1}/"
    for args, says in [
        (["--clients", "0"], "--clients"),
        (["--clients", "65"], "--clients"),
        (["--rate", "0/s"], "not a rate"),
        (["--rate", "fast"], "not a rate"),
        (["--duration", "0s"], "duration"),
        (["--duration", "2h"], "duration"),
    ]:
        bad = server.cli("load", stack, "--target", url, *args, check=False)
        assert bad.returncode != 0 and says in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
    for target in ("https://127.0.0.1/", "ftp://x/", "127.0.0.1:80", "http://a b/"):
        bad = server.cli("load", stack, "--target", target, check=False)
        assert bad.returncode != 0 and "target" in bad.stderr, (target, bad.stderr)
        assert "Traceback" not in bad.stderr
    missing = server.cli("load", "nosuchstack", "--target", url, check=False)
    assert missing.returncode != 0 and "no stack nosuchstack" in missing.stderr
    assert sorted(stack_names(server)) == [stack]
    assert json.loads(server.cli("jobs", stack, "--json").stdout)["runs"] == []
