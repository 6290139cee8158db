"""A load generator that runs as a process of its own, for zero-downtime checks.

    python loadgen.py URL --out FILE.json [--concurrency 4] [--timeout 5] [--pause 0]

Each worker GETs URL in a loop, on a fresh connection every time, until SIGTERM or SIGINT;
then the requests in flight finish (each within --timeout) and FILE.json is written (to a
temporary name first, then renamed, so a reader never sees half of it):

    {"url", "started", "stopped", "duration", "total", "ok", "failed",
     "failures": [{"time", "reason"}, ...],             # the first 20
     "releases": {"<X-Release>": {"count", "first", "last"}},
     "instances": {"<X-Served-By>": count}}

A response is ok when its status is 2xx; anything else (another status, a refused or reset
connection, a timeout) is a failure. Times are Unix timestamps (time.time()), so they can be
set against server events. Stdlib only: the test harness runs it with any Python 3.11.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

MAX_FAILURES = 20


@dataclass
class Release:
    count: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class Tally:
    """What the workers saw; every update is under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    releases: dict[str, Release] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)

    def record(self, when: float, status: int | None, reason: str,
               release: str | None, instance: str | None) -> None:
        with self.lock:
            self.total += 1
            if status is not None and 200 <= status < 300:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.failures) < MAX_FAILURES:
                    self.failures.append({"time": round(when, 3), "reason": reason})
            if status is None:
                return  # no response, so no headers
            if release is not None:
                r = self.releases.setdefault(release, Release(first=when))
                r.count += 1
                r.last = when
            if instance is not None:
                self.instances[instance] = self.instances.get(instance, 0) + 1


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, parts.port, path)

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def one_request(target: Target, timeout: float, tally: Tally) -> None:
    """GET once on a fresh connection and record the outcome."""
    conn = target.connection(timeout)
    status: int | None = None
    release = instance = None
    try:
        conn.request("GET", target.path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        status = response.status
        release = response.getheader("X-Release")
        instance = response.getheader("X-Served-By")
        reason = f"HTTP {status} {response.reason}"
    except TimeoutError:
        reason = f"timeout after {timeout:g}s"
    except (OSError, http.client.HTTPException) as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        conn.close()
    if instance is not None and status is not None and not 200 <= status < 300:
        reason += f" from {instance}"
    tally.record(time.time(), status, reason, release, instance)


def worker(target: Target, timeout: float, pause: float, stop: threading.Event,
           tally: Tally) -> None:
    while not stop.is_set():
        one_request(target, timeout, tally)
        if pause > 0:
            stop.wait(pause)


def report(tally: Tally, url: str, started: float, stopped: float) -> dict[str, Any]:
    with tally.lock:
        return {
            "url": url,
            "started": round(started, 3),
            "stopped": round(stopped, 3),
            "duration": round(stopped - started, 3),
            "total": tally.total,
            "ok": tally.ok,
            "failed": tally.failed,
            "failures": list(tally.failures),
            "releases": {
                name: {"count": r.count, "first": round(r.first, 3), "last": round(r.last, 3)}
                for name, r in sorted(tally.releases.items(), key=lambda kv: kv[1].first)
            },
            "instances": dict(sorted(tally.instances.items())),
        }


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET a URL in a loop until SIGTERM/SIGINT, then "
                                "write what happened as JSON.")
    p.add_argument("url")
    p.add_argument("--out", required=True, type=Path, help="where to write the JSON report")
    p.add_argument("--concurrency", type=int, default=4, help="parallel workers (default 4)")
    p.add_argument("--timeout", type=float, default=5.0, help="per request, seconds (5)")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds each worker waits between requests (0)")
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.timeout <= 0 or args.pause < 0:
        p.error("--timeout must be positive and --pause not negative")
    try:
        args.target = Target.parse(args.url)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tally = Tally()
    started = time.time()
    workers = [
        threading.Thread(target=worker, name=f"loadgen-{i}", daemon=True,
                         args=(args.target, args.timeout, args.pause, stop, tally))
        for i in range(args.concurrency)
    ]
    for w in workers:
        w.start()
    print(f"loadgen: {args.concurrency} workers on {args.url}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    stopped = time.time()
    # A request in flight ends within its timeout (connect and each read); wait for it.
    deadline = time.monotonic() + 2 * args.timeout + 1
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    data = report(tally, args.url, started, stopped)
    write_json(args.out, data)
    print(f"loadgen: {data['total']} requests, {data['ok']} ok, {data['failed']} failed",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
