"""The load-test client: an open-model HTTP/1.1 load generator, stdlib only.

Run by path, with histogram.py beside it (the appliance mounts both in /opt/rackfire-load/):

    python3 -I -S /opt/rackfire-load/client.py

It imports nothing of rackfire: `-I` leaves the script's own dir off sys.path, so it adds
that dir itself and imports `histogram` from there.

Configured from the environment:
    LOAD_TARGET       http://host:port/path (required; no https)
    LOAD_RATE         requests per second of this client, a float > 0 (required)
    LOAD_DURATION     seconds of arrivals, a float > 0 (required)
    LOAD_START_AT     epoch seconds (float): the start barrier; it sleeps until then, or
                      starts at once if that is past (default: now)
    LOAD_CONNECTIONS  most connections open at once (default 64)
    LOAD_TIMEOUT      seconds a request may take, counted from its intended start, so the
                      wait for a connection counts too (default 5)
    LOAD_RESULT       where the JSON result is written (to a temporary name, then renamed);
                      unset: printed to stdout as the last line
    LOAD_METHOD       GET (default), HEAD, POST, ...; no request body is sent
    LOAD_ARRIVALS     uniform (default: constant intervals) or poisson
    LOAD_SEED         seed of the poisson arrivals (default: random)
    LOAD_CLIENT_ID    the name put in the result (default: the host name)

Arrivals are scheduled in advance (open model): request i is due at start + i/rate (or at
the poisson process' i-th arrival) whatever happened to the earlier ones, and its latency
counts from that due time, not from when it was sent (no coordinated omission). A request
that finds every connection busy waits for one. An idle keep-alive connection the server
closed is reopened and the request resent once, not counted as an error.

Every second a JSON line goes to stdout: {"t", "sent", "done", "errors", "inflight"} (and
one {"waiting": s} before the barrier, one last line at the end).
SIGTERM or SIGINT stops the arrivals; the requests in flight finish and the result (marked
"interrupted") is written. Exit status: 0, or 2 for a bad configuration.

The result (version 1):
    {"version": 1, "client", "target", "method", "arrivals", "rate", "duration",
     "connections", "timeout", "start_at", "started", "finished" (epoch s),
     "issue_window" (s from start to the last arrival sent), "interrupted",
     "sent", "completed" (got an HTTP response, any status), "ok" (1xx-3xx),
     "errors": {"connect", "timeout", "reset", "http_4xx", "http_5xx", "other": n},
     "statuses": {"200": n, ...}, "connections_opened", "late_max_ms" (how late the
     generator itself sent an arrival, at worst), "latency": Histogram.to_json()
     (microseconds, of the requests that got a response)}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from rackfire.loadgen.histogram import Histogram
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from histogram import Histogram

KINDS = ("connect", "timeout", "reset", "http_4xx", "http_5xx", "other")
CHUNK = 65536


class ConfigError(Exception):
    pass


class Failure(Exception):
    """A request failed; `kind` is one of KINDS."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    path: str
    rate: float
    duration: float
    start_at: float
    connections: int
    timeout: float
    result: str
    method: str
    arrivals: str
    seed: int | None
    client: str


def _float(env: dict[str, str], name: str, default: float | None = None) -> float:
    raw = env.get(name, "")
    if not raw:
        if default is None:
            raise ConfigError(f"{name} is required")
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={raw!r}: not a finite number")
    return v


def load_config(env: dict[str, str]) -> Config:
    target = urlsplit(env.get("LOAD_TARGET", ""))
    if target.scheme != "http" or not target.hostname:
        raise ConfigError("LOAD_TARGET must be http://host[:port]/path")
    try:
        port = target.port or 80
    except ValueError:
        raise ConfigError("LOAD_TARGET: bad port") from None
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    rate, duration = _float(env, "LOAD_RATE"), _float(env, "LOAD_DURATION")
    timeout = _float(env, "LOAD_TIMEOUT", 5.0)
    connections = int(_float(env, "LOAD_CONNECTIONS", 64.0))
    if rate <= 0 or duration <= 0 or timeout <= 0 or connections < 1:
        raise ConfigError("LOAD_RATE, LOAD_DURATION, LOAD_TIMEOUT, LOAD_CONNECTIONS must be > 0")
    arrivals = env.get("LOAD_ARRIVALS", "uniform") or "uniform"
    if arrivals not in ("uniform", "poisson"):
        raise ConfigError("LOAD_ARRIVALS must be uniform or poisson")
    method = (env.get("LOAD_METHOD", "GET") or "GET").upper()
    if not method.isalpha():
        raise ConfigError("LOAD_METHOD: not a method")
    seed = env.get("LOAD_SEED", "")
    return Config(host=target.hostname, port=port, path=path, rate=rate, duration=duration,
                  start_at=_float(env, "LOAD_START_AT", time.time()),
                  connections=connections, timeout=timeout,
                  result=env.get("LOAD_RESULT", ""), method=method, arrivals=arrivals,
                  seed=int(seed) if seed.isdigit() else None,
                  client=env.get("LOAD_CLIENT_ID", "") or socket.gethostname())


class Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def exchange(self, request: bytes, head: bool) -> tuple[int, bool]:
        """Send `request`, read the whole response: (status, keep the connection?).
        Raises Failure("reset"), or ("other") for what is not HTTP/1.x."""
        r = self.reader
        try:
            self.writer.write(request)
            await self.writer.drain()
            while True:
                # The status line and headers in one read: one wakeup, not one a line.
                block = await r.readuntil(b"\r\n\r\n")
                status_line, *headers = block[:-4].split(b"\r\n")
                parts = status_line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") \
                        or not parts[1].isdigit():
                    raise Failure("other")
                status = int(parts[1])
                length, chunked, close = -1, False, parts[0] == b"HTTP/1.0"
                for h in headers:
                    name, _, value = h.partition(b":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == b"content-length":
                        if not value.isdigit():
                            raise Failure("other")
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = value.endswith(b"chunked")
                    elif name == b"connection":
                        close = b"close" in value or (close and b"keep-alive" not in value)
                if status >= 200 or status == 101:
                    break  # 100 Continue and other interim answers: read the next
            if head or status in (204, 304) or 100 <= status < 200:
                return status, not close
            if chunked:
                await self._chunks()
            elif length >= 0:
                await self._skip(length)
            else:
                while await r.read(CHUNK):  # no length: the body ends with the connection
                    pass
                return status, False
            return status, not close
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            raise Failure("reset") from None
        except (asyncio.LimitOverrunError, ValueError):
            raise Failure("other") from None

    async def _skip(self, n: int) -> None:
        while n > 0:
            got = await self.reader.read(min(n, CHUNK))
            if not got:
                raise Failure("reset")
            n -= len(got)

    async def _chunks(self) -> None:
        r = self.reader
        while True:
            line = await r.readline()
            if not line:
                raise Failure("reset")
            size = int(line.split(b";", 1)[0].strip(), 16)  # ValueError: "other"
            if size == 0:
                while (t := await r.readline()) not in (b"\r\n", b"\n"):  # trailers
                    if not t:
                        raise Failure("reset")
                return
            await self._skip(size)
            await r.readexactly(2)  # the CRLF after the chunk


class Pool:
    """At most `size` connections; a request waits for a free one."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.slots = asyncio.Semaphore(cfg.connections)
        self.idle: list[Conn] = []
        self.opened = 0
        host = cfg.host if cfg.port == 80 else f"{cfg.host}:{cfg.port}"
        extra = "Content-Length: 0\r\n" if cfg.method in ("POST", "PUT", "PATCH") else ""
        self.request = (f"{cfg.method} {cfg.path} HTTP/1.1\r\nHost: {host}\r\n"
                        f"User-Agent: rackfire-load\r\nAccept: */*\r\n{extra}\r\n").encode()

    async def _open(self) -> Conn:
        try:
            reader, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port,
                                                           limit=CHUNK)
        except OSError:  # refused, unreachable, no such host
            raise Failure("connect") from None
        self.opened += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(reader, writer)

    async def call(self) -> int:
        """One request; its status, or Failure."""
        async with self.slots:
            conn = None
            while self.idle:
                conn = self.idle.pop()
                if not conn.reader.at_eof():
                    break
                conn.close()
                conn = None
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            try:
                try:
                    status, keep = await conn.exchange(self.request, self.cfg.method == "HEAD")
                except Failure as f:
                    if not (reused and f.kind == "reset"):
                        raise
                    # The server closed the idle connection as we reused it: resend once.
                    conn.close()
                    conn = await self._open()
                    status, keep = await conn.exchange(self.request,
                                                       self.cfg.method == "HEAD")
            except BaseException:
                conn.close()  # half a response may be left on it (a timeout, a cancel)
                raise
            if keep:
                self.idle.append(conn)
            else:
                conn.close()
            return status

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


class Run:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pool = Pool(cfg)
        self.latency = Histogram()
        self.errors = dict.fromkeys(KINDS, 0)
        self.statuses: dict[str, int] = {}
        self.sent = self.done = self.completed = self.ok = 0
        self.late_max = 0.0
        self.issue_window = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.started = 0.0  # epoch, when the barrier was passed (0: not yet)
        self.start = 0.0  # the same, on the loop's clock
        self.ticker: asyncio.Task[None] | None = None

    async def one(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(due + self.cfg.timeout):
                status = await self.pool.call()
        except TimeoutError:
            self.errors["timeout"] += 1
        except Failure as f:
            self.errors[f.kind] += 1
        except Exception:
            self.errors["other"] += 1
        else:
            self.latency.record(int((loop.time() - due) * 1e6))
            self.completed += 1
            key = str(status)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if status >= 500:
                self.errors["http_5xx"] += 1
            elif status >= 400:
                self.errors["http_4xx"] += 1
            else:
                self.ok += 1
        self.done += 1

    async def arrivals(self) -> None:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        wait = cfg.start_at - time.time()
        if wait > 0:
            self.say({"waiting": round(wait, 3)})
            await asyncio.sleep(wait)
        self.started, start = time.time(), loop.time()
        self.start = start
        self.ticker = loop.create_task(self.tick(start))
        rng = random.Random(cfg.seed)  # noqa: S311 - arrival times, not secrets
        offset, i = 0.0, 0
        while offset < cfg.duration:
            due = start + offset
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.late_max = max(self.late_max, loop.time() - due)
            task = loop.create_task(self.one(due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.sent += 1
            self.issue_window = loop.time() - start
            i += 1
            offset = (offset + rng.expovariate(cfg.rate) if cfg.arrivals == "poisson"
                      else i / cfg.rate)

    def progress(self, start: float) -> None:
        self.say({"t": round(asyncio.get_running_loop().time() - start, 1), "sent": self.sent,
                  "done": self.done, "errors": sum(self.errors.values()),
                  "inflight": len(self.tasks)})

    @staticmethod
    def say(line: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stdout stops no test
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    async def tick(self, start: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.progress(start)

    async def main(self) -> dict[str, Any]:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        sender = loop.create_task(self.arrivals())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sender.cancel)  # from the barrier on, too
        interrupted = False
        try:
            await sender
        except asyncio.CancelledError:
            interrupted = True
        while self.tasks:
            await asyncio.wait(set(self.tasks))
        if self.ticker is not None:
            self.ticker.cancel()
        self.pool.close()
        if self.started:
            self.progress(self.start)
        started = self.started or time.time()
        return {"version": 1, "client": cfg.client,
                "target": f"http://{cfg.host}:{cfg.port}{cfg.path}", "method": cfg.method,
                "arrivals": cfg.arrivals, "rate": cfg.rate, "duration": cfg.duration,
                "connections": cfg.connections, "timeout": cfg.timeout,
                "start_at": cfg.start_at, "started": started, "finished": time.time(),
                "issue_window": round(self.issue_window, 6), "interrupted": interrupted,
                "sent": self.sent, "completed": self.completed, "ok": self.ok,
                "errors": self.errors, "statuses": self.statuses,
                "connections_opened": self.pool.opened,
                "late_max_ms": round(self.late_max * 1000, 3),
                "latency": self.latency.to_json()}


def write_result(path: str, result: dict[str, Any]) -> None:
    text = json.dumps(result, separators=(",", ":")) + "\n"
    if not path:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> int:
    try:
        cfg = load_config(dict(os.environ))
    except ConfigError as e:
        sys.stderr.write(f"client: {e}\n")
        return 2
    write_result(cfg.result, asyncio.run(Run(cfg).main()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
