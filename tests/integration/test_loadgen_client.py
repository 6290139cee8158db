"""The load-test client, run as the appliance runs it (`python3 -I -S client.py`, by path,
a bare environment) against a real HTTP/1.1 server on loopback: rate, errors by kind,
latency counted from each request's intended start, memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rackfire.loadgen.histogram import Histogram, bounds_of
from rackfire.loadgen.report import merge

CLIENT = Path(__file__).resolve().parents[2] / "src" / "rackfire" / "loadgen" / "client.py"
PYTHON = shutil.which("python3") or "/usr/bin/python3"
BODY = b"ok\n" * 100


class Backend(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.count = 0
        self.count_lock = threading.Lock()
        self.stall_at = 100  # the request of /stall that holds every other one up for 1 s
        self.gate = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up (it timed out): what the test wants, no traceback


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.count_lock:
            srv.count += 1
            n = srv.count
        path = self.path
        if path == "/stall":
            with srv.gate:  # every request waits while the stalling one holds the gate
                if n == srv.stall_at:
                    time.sleep(1.0)
        if path == "/close" or (path == "/idle-close" and getattr(self, "served", 0)):
            self.close_connection = True  # no answer at all
            return
        self.served = 1  # one answer on this connection so far (the handler is per connection)
        if path == "/slow":
            time.sleep(2.0)
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (BODY, b"x" * 70_000, b"end\n"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
            return
        status = 200
        if path == "/missing":
            status = 404
        elif path == "/flaky" and n % 4 == 0:
            status = 503
        self.send_response(status)
        self.send_header("Content-Length", str(len(BODY)))
        if path == "/conn-close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    srv = Backend(request.param)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        t.join()
        srv.server_close()


@dataclass
class Outcome:
    rc: int
    result: dict[str, Any]
    progress: list[dict[str, Any]]
    peak_vmrss_kb: int  # sampled from /proc/PID/status while it ran
    cpu_s: float  # all of it, from wait4
    run_cpu_s: float  # from the start barrier to the last /proc sample before it exited
    wall_s: float


def run_client(tmp_path: Path, target: str, rate: float, duration: float, *,
               start_in: float = 0.3, term_after: float | None = None,
               **env: str) -> Outcome:
    result = tmp_path / f"result-{time.monotonic_ns()}.json"
    out = tmp_path / "stdout"
    full = {"PATH": "/usr/bin:/bin", "LOAD_TARGET": target, "LOAD_RATE": str(rate),
            "LOAD_DURATION": str(duration), "LOAD_START_AT": str(time.time() + start_in),
            "LOAD_RESULT": str(result), "LOAD_CLIENT_ID": "t", **env}
    t0 = time.monotonic()
    with open(out, "wb") as f:
        proc = subprocess.Popen([PYTHON, "-I", "-S", str(CLIENT)], env=full, stdout=f,
                                cwd=tmp_path)
    peak, termed, ticks = 0, False, os.sysconf("SC_CLK_TCK")
    cpu_at_start: float | None = None
    cpu_last = 0.0
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if term_after is not None and not termed and time.monotonic() - t0 > term_after:
                proc.send_signal(signal.SIGTERM)
                termed = True
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
                stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu_last = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime
                if cpu_at_start is None and time.monotonic() - t0 >= start_in:
                    cpu_at_start = cpu_last
            except OSError:
                pass
            if time.monotonic() - t0 > duration + 20:
                proc.kill()
            time.sleep(0.05)
    finally:
        proc.returncode = os.waitstatus_to_exitcode(status) if pid else proc.wait()
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return Outcome(rc=proc.returncode,
                   result=json.loads(result.read_text()) if result.exists() else {},
                   progress=lines, peak_vmrss_kb=peak, cpu_s=usage.ru_utime + usage.ru_stime,
                   run_cpu_s=cpu_last - (cpu_at_start or 0.0), wall_s=time.monotonic() - t0)


def no_errors(result: dict[str, Any]) -> bool:
    return not any(result["errors"].values())


def achieved(result: dict[str, Any]) -> float:
    return float(result["sent"]) / max(result["duration"], result["issue_window"])


@pytest.mark.parametrize("backend", [7701], indirect=True)
def test_rate_barrier_and_keepalive_against_a_healthy_server(backend: Backend,
                                                             tmp_path: Path) -> None:
    start_at = time.time() + 1.0
    o = run_client(tmp_path, "http://127.0.0.1:7701/ok", 100, 3,
                   start_in=1.0, LOAD_START_AT=str(start_at))
    r = o.result
    assert o.rc == 0
    assert 0 <= r["started"] - start_at < 0.1  # slept until the barrier, no longer
    assert r["sent"] == 300 and r["completed"] == 300 and r["ok"] == 300
    assert abs(achieved(r) - 100) <= 10
    assert no_errors(r) and r["statuses"] == {"200": 300}
    assert r["connections_opened"] <= 10  # kept alive, not one per request
    assert r["finished"] - r["started"] < 3.5
    assert "waiting" in o.progress[0]
    ticks = o.progress[1:]
    assert len(ticks) >= 3 and all({"t", "sent", "done", "errors"} <= set(x) for x in ticks)
    assert ticks[-1]["done"] == 300
    rep = merge([r])
    assert rep.reporting == 1 and abs(rep.achieved_rate - 100) <= 10
    assert rep.p99_ms < 100


@pytest.mark.parametrize("backend", [7702], indirect=True)
def test_poisson_arrivals_and_chunked_bodies(backend: Backend, tmp_path: Path) -> None:
    o = run_client(tmp_path, "http://127.0.0.1:7702/chunked", 100, 2,
                   LOAD_ARRIVALS="poisson", LOAD_SEED="3")
    r = o.result
    assert o.rc == 0 and r["arrivals"] == "poisson"
    assert 140 <= r["sent"] <= 260
    assert r["completed"] == r["ok"] == r["sent"] and no_errors(r)
    assert r["connections_opened"] <= 10


@pytest.mark.parametrize("backend", [7703], indirect=True)
def test_errors_are_counted_by_kind(backend: Backend, tmp_path: Path) -> None:
    flaky = run_client(tmp_path, "http://127.0.0.1:7703/flaky", 100, 2).result
    assert flaky["sent"] == 200 and flaky["completed"] == 200
    assert flaky["statuses"] == {"200": 150, "503": 50}  # every 4th the server counts
    assert flaky["errors"]["http_5xx"] == 50 and flaky["ok"] == 150
    assert sum(flaky["errors"].values()) == 50

    missing = run_client(tmp_path, "http://127.0.0.1:7703/missing", 50, 1).result
    assert missing["errors"]["http_4xx"] == missing["sent"] == 50
    assert missing["statuses"] == {"404": 50}

    closed = run_client(tmp_path, "http://127.0.0.1:7703/close", 50, 1).result
    assert closed["errors"]["reset"] == closed["sent"] == 50 and closed["completed"] == 0

    slow = run_client(tmp_path, "http://127.0.0.1:7703/slow", 20, 1, LOAD_TIMEOUT="0.5")
    assert slow.result["errors"]["timeout"] == slow.result["sent"] == 20
    assert slow.wall_s < 4  # gave up at the timeout, did not wait the 2 s answers out

    rep = merge([flaky, missing, closed, slow.result, None])
    assert rep.errors == {"connect": 0, "timeout": 20, "reset": 50, "http_4xx": 50,
                          "http_5xx": 50, "other": 0, "no_result": 1}


@pytest.mark.parametrize("backend", [7707], indirect=True)
def test_connections_the_server_closes_are_reopened(backend: Backend, tmp_path: Path) -> None:
    said = run_client(tmp_path, "http://127.0.0.1:7707/conn-close", 50, 1).result
    assert said["ok"] == said["sent"] == said["connections_opened"] == 50 and no_errors(said)
    # A kept-alive connection the server drops as the next request arrives (its idle
    # timeout, racing us): the request is sent again on a new one, not an error.
    raced = run_client(tmp_path, "http://127.0.0.1:7707/idle-close", 50, 1).result
    assert raced["ok"] == raced["sent"] == raced["connections_opened"] == 50
    assert no_errors(raced)


def test_nothing_listening_is_connect_errors(tmp_path: Path) -> None:
    o = run_client(tmp_path, "http://127.0.0.1:7709/", 100, 1)
    r = o.result
    assert o.rc == 0 and r["sent"] == 100
    assert r["errors"]["connect"] == 100 and r["completed"] == 0


@pytest.mark.parametrize("backend", [7704], indirect=True)
def test_a_stall_shows_in_the_latency_of_every_request_due_during_it(
        backend: Backend, tmp_path: Path) -> None:
    r = run_client(tmp_path, "http://127.0.0.1:7704/stall", 100, 3).result
    assert r["sent"] == r["completed"] == 300 and no_errors(r)
    h = Histogram.from_json(r["latency"])
    slow = sum(n for i, n in h.buckets.items() if bounds_of(i)[0] >= 500_000)
    # ~100 requests are due during the 1 s stall, waiting 1 s down to 0: about half of
    # them wait over 0.5 s. Timed from when they were sent, only one would.
    assert slow >= 30, slow
    assert h.max >= 900_000 and h.percentile(95) >= 500_000
    assert h.percentile(50) < 50_000


@pytest.mark.parametrize("backend", [7705], indirect=True)
def test_memory_and_cpu_at_200_per_second(backend: Backend, tmp_path: Path) -> None:
    o = run_client(tmp_path, "http://127.0.0.1:7705/ok", 200, 5, start_in=1.0)
    r = o.result
    assert r["sent"] == r["ok"] == 1000 and no_errors(r)
    assert abs(achieved(r) - 200) <= 20
    # (ru_maxrss is no use here: it counts the forked pytest's pages before the exec.)
    print(f"\nclient at 200/s: VmRSS peak {o.peak_vmrss_kb} kB; CPU {o.run_cpu_s:.2f} s "
          f"over the 5 s run ({o.run_cpu_s / 5:.1%} of a core), {o.cpu_s:.2f} s in all "
          f"(startup included); late max {r['late_max_ms']} ms")
    assert 0 < o.peak_vmrss_kb < 32 * 1024
    assert o.run_cpu_s / 5 < 0.25


@pytest.mark.parametrize("backend", [7706], indirect=True)
def test_sigterm_stops_arrivals_and_still_writes_the_result(backend: Backend,
                                                            tmp_path: Path) -> None:
    o = run_client(tmp_path, "http://127.0.0.1:7706/ok", 100, 30, start_in=0,
                   term_after=1.5)
    r = o.result
    assert o.rc == 0 and r["interrupted"] is True
    assert 50 <= r["sent"] <= 250 and r["completed"] == r["sent"] and no_errors(r)


def test_sigterm_before_the_barrier_writes_an_empty_result(tmp_path: Path) -> None:
    o = run_client(tmp_path, "http://127.0.0.1:7708/", 100, 5, start_in=5, term_after=0.5)
    r = o.result
    assert o.rc == 0 and r["interrupted"] is True and r["sent"] == 0
    assert o.progress[0]["waiting"] > 3 and o.wall_s < 3
    assert merge([r]).reporting == 1


def test_a_bad_configuration_exits_2(tmp_path: Path) -> None:
    p = subprocess.run([PYTHON, "-I", "-S", str(CLIENT)], env={"LOAD_TARGET": "ftp://x"},
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "LOAD_TARGET" in p.stderr
