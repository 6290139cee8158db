"""The shop's web app: one small HTTP server per `app` instance.

    GET /         records a visit in PostgreSQL, reads the catalog (products and the visit
                  count) through memcached (a short TTL, so mem really is in the path), and
                  says which instance and release answered and what db and mem said.
    GET /healthz  200 once the schema is in place and the db answers; 500 if the file BROKEN
                  exists next to this script (/app/BROKEN: a release that fails its check).

Every response carries `X-Served-By` (the instance) and `X-Release` (RACKFIRE_RELEASE).

Where db and mem are comes from an INI file rendered by the stack (SHOP_CONF, default
/etc/shop/app.conf); the db password from the environment (DB_PASSWORD). SIGHUP re-reads
the file. SIGTERM (or SIGINT) stops gracefully: no new connections are accepted, requests in
flight (and connections the kernel already queued) are answered, and the process exits 0
within DRAIN_SECONDS (default 5).

Deps (requirements.txt): pg8000 and pymemcache, pure Python.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pg8000.native
from pymemcache.client.base import PooledClient

APP_DIR = Path(__file__).resolve().parent
BROKEN = APP_DIR / "BROKEN"
HOSTNAME = os.environ.get("HOSTNAME") or socket.gethostname()
RELEASE = os.environ.get("RACKFIRE_RELEASE", "dev")
CATALOG_KEY = "shop:catalog"
T = TypeVar("T")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} shop[{HOSTNAME}] {message}", file=sys.stderr,
          flush=True)


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    db_hosts: tuple[str, ...]
    db_port: int
    db_name: str
    db_user: str
    db_password: str
    mem_servers: tuple[tuple[str, int], ...]
    cache_ttl: int


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.replace(",", " ").split() if v.strip())


def _host_port(entry: str, default_port: int) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    return (host, int(port)) if sep else (entry, default_port)


def load_config() -> Config:
    path = os.environ.get("SHOP_CONF", "/etc/shop/app.conf")
    cp = configparser.ConfigParser()
    if not cp.read(path):
        raise SystemExit(f"shop: cannot read the config file {path}")
    db, mem = cp["db"], cp["mem"]
    return Config(
        db_hosts=_split(db.get("hosts", "")),
        db_port=db.getint("port", 5432),
        db_name=db.get("name", "shop"),
        db_user=db.get("user", "shop"),
        db_password=os.environ.get("DB_PASSWORD", ""),
        mem_servers=tuple(_host_port(s, 11211) for s in _split(mem.get("servers", ""))),
        cache_ttl=mem.getint("ttl", 5),
    )


# -- the database: a small pool of pg8000 connections ------------------------------------


SCHEMA = [
    """CREATE TABLE IF NOT EXISTS products (
           sku text PRIMARY KEY, name text NOT NULL, price_cents integer NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS visits (
           id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
           instance text NOT NULL, release text NOT NULL)""",
    """INSERT INTO products (sku, name, price_cents) VALUES
           ('mug', 'Rackfire mug', 1200), ('tee', 'Rackfire T-shirt', 2500),
           ('sticker', 'Sticker pack', 300)
       ON CONFLICT (sku) DO NOTHING""",
]


class Database:
    """Connections are not shared between threads: each request borrows one. A connection
    that failed is dropped, and a request is tried once more on a fresh one, so a db that
    restarted costs no request. A connection is used for MAX_AGE seconds at most: PostgreSQL
    stops on SIGTERM once its sessions end ("smart" shutdown), and so do ours, soon."""

    MAX_AGE = 5.0

    def __init__(self, config: Config) -> None:
        self.config = config
        self._idle: queue.LifoQueue[tuple[pg8000.native.Connection, float]] = \
            queue.LifoQueue()
        self.schema_ready = threading.Event()

    @property
    def host(self) -> str:
        return self.config.db_hosts[0] if self.config.db_hosts else "(none)"

    def _connect(self) -> pg8000.native.Connection:
        if not self.config.db_hosts:
            raise ConnectionError("no db host in the config")
        return pg8000.native.Connection(
            self.config.db_user, host=self.host, port=self.config.db_port,
            database=self.config.db_name, password=self.config.db_password,
            timeout=3, ssl_context=False, application_name=HOSTNAME)

    @contextmanager
    def _connection(self) -> Iterator[pg8000.native.Connection]:
        con, born = self._borrow()
        try:
            yield con
        except BaseException:
            _close_quietly(con)
            raise
        if self._idle.qsize() < 8 and time.monotonic() - born < self.MAX_AGE:
            self._idle.put((con, born))
        else:
            _close_quietly(con)

    def _borrow(self) -> tuple[pg8000.native.Connection, float]:
        while True:
            try:
                con, born = self._idle.get_nowait()
            except queue.Empty:
                return self._connect(), time.monotonic()
            if time.monotonic() - born < self.MAX_AGE:
                return con, born
            _close_quietly(con)

    def run(self, work: Callable[[pg8000.native.Connection], T]) -> T:
        try:
            with self._connection() as con:
                return work(con)
        except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError):
            self.close()  # the others are likely as stale: the db went away
            with self._connection() as con:
                return work(con)

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait()[0])
            except queue.Empty:
                return

    def prune(self) -> None:
        """Close idle connections past MAX_AGE (borrowing only ever sees the newest)."""
        keep = []
        while True:
            try:
                con, born = self._idle.get_nowait()
            except queue.Empty:
                break
            if time.monotonic() - born < self.MAX_AGE:
                keep.append((con, born))
            else:
                _close_quietly(con)
        for entry in reversed(keep):
            self._idle.put(entry)

    def create_schema(self, stop: threading.Event) -> None:
        """Create the tables if missing, retrying until the db is up (it may start later
        than the app, or be restarting)."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.run(_create_schema)
                self.schema_ready.set()
                log(f"db {self.host}: schema ready")
                return
            except Exception as e:
                log(f"db {self.host} not ready ({_reason(e)}); retrying in {delay:.1f}s")
                stop.wait(delay)
                delay = min(delay * 2, 5.0)


def _create_schema(con: pg8000.native.Connection) -> None:
    con.run("START TRANSACTION")
    # Two app instances starting together would race on CREATE TABLE IF NOT EXISTS.
    con.run("SELECT pg_advisory_xact_lock(4242)")
    for statement in SCHEMA:
        con.run(statement)
    con.run("COMMIT")


def _close_quietly(con: pg8000.native.Connection) -> None:
    with suppress(Exception):  # the connection is dropped either way
        con.close()


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:200]


# -- the cache ---------------------------------------------------------------------------


class Cache:
    """One pooled client per memcached instance; a key lives on one of them (crc32)."""

    def __init__(self, config: Config) -> None:
        self.clients = [
            (f"{host}:{port}", PooledClient((host, port), connect_timeout=0.5, timeout=0.5,
                                            max_pool_size=8, no_delay=True))
            for host, port in config.mem_servers
        ]

    def pick(self, key: str) -> tuple[str, PooledClient]:
        if not self.clients:
            raise ConnectionError("no mem server in the config")
        return self.clients[zlib.crc32(key.encode()) % len(self.clients)]

    def close(self) -> None:
        for _, client in self.clients:
            with suppress(Exception):
                client.close()


# -- the app -----------------------------------------------------------------------------


@dataclass
class Shop:
    config: Config
    db: Database = field(init=False)
    cache: Cache = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.db = Database(self.config)
        self.cache = Cache(self.config)
        threading.Thread(target=self._prune, daemon=True).start()

    def _prune(self) -> None:
        while not self.stop.wait(1.0):
            self.db.prune()

    def reconfigure(self, config: Config) -> None:
        old_db, old_cache = self.db, self.cache
        self.config, self.db, self.cache = config, Database(config), Cache(config)
        if old_db.schema_ready.is_set() and config.db_hosts == old_db.config.db_hosts:
            self.db.schema_ready.set()
        else:
            threading.Thread(target=self.db.create_schema, args=(self.stop,),
                             daemon=True).start()
        old_db.close()
        old_cache.close()

    def visit(self) -> tuple[int, dict[str, Any]]:
        db, cache = self.db, self.cache
        if not db.schema_ready.is_set():
            return 503, {"error": f"db {db.host} not ready yet"}
        try:
            visit_id = db.run(lambda con: con.run(
                "INSERT INTO visits (instance, release) VALUES (:i, :r) RETURNING id",
                i=HOSTNAME, r=RELEASE)[0][0])
        except Exception as e:
            return 503, {"error": f"db {db.host}: {_reason(e)}"}
        mem: dict[str, Any]
        catalog: dict[str, Any] | None = None
        try:
            server, client = cache.pick(CATALOG_KEY)
            mem = {"server": server}
            raw = client.get(CATALOG_KEY)
            if raw is not None:
                catalog, mem["cache"] = json.loads(raw), "hit"
        except Exception as e:
            server, client, mem = "", None, {"cache": "unavailable", "error": _reason(e)}
        if catalog is None:
            try:
                catalog = db.run(_read_catalog)
            except Exception as e:
                return 503, {"error": f"db {db.host}: {_reason(e)}"}
            if client is not None:
                mem["cache"] = "miss"
                try:
                    client.set(CATALOG_KEY, json.dumps(catalog).encode(),
                               expire=self.config.cache_ttl)
                except Exception as e:
                    mem = {"server": server, "cache": "unavailable", "error": _reason(e)}
        return 200, {
            "served_by": HOSTNAME,
            "release": RELEASE,
            "db": {"host": db.host, "visit_id": visit_id},
            "mem": mem,
            "catalog": catalog,
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        if BROKEN.exists():
            return 500, {"ok": False, "error": f"{BROKEN} exists"}
        db = self.db
        if not db.schema_ready.is_set():
            return 503, {"ok": False, "error": f"db {db.host} not ready yet"}
        try:
            db.run(lambda con: con.run("SELECT 1"))
        except Exception as e:
            return 503, {"ok": False, "error": f"db {db.host}: {_reason(e)}"}
        return 200, {"ok": True, "served_by": HOSTNAME, "release": RELEASE}


def _read_catalog(con: pg8000.native.Connection) -> dict[str, Any]:
    products = con.run("SELECT sku, name, price_cents FROM products ORDER BY sku")
    visits = con.run("SELECT count(*) FROM visits")[0][0]
    return {
        "products": [{"sku": s, "name": n, "price_cents": p} for s, n, p in products],
        "visits": visits,
        "computed_by": HOSTNAME,
        "computed_at": round(time.time(), 3),
    }


# -- HTTP --------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True  # the drain below waits for requests, with a deadline
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], shop: Shop) -> None:
        self.shop = shop
        self.in_flight = 0
        self.idle = threading.Condition()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.idle:
            self.in_flight += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return  # the client went away (HAProxy's health checks close with a reset)
        log(f"request from {client_address[0]} failed: {_reason(error or Exception())}")

    def drain(self, deadline: float) -> int:
        """Answer the connections the kernel already accepted into the backlog, then wait
        for requests in flight until `deadline`; returns how many were still running."""
        self.socket.setblocking(False)
        while True:
            try:
                request, address = self.get_request()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            request.setblocking(True)
            self.process_request(request, address)
        self.socket.close()
        with self.idle:
            while self.in_flight and time.monotonic() < deadline:
                self.idle.wait(deadline - time.monotonic())
            return self.in_flight


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles at shutdown
    timeout = 10  # a client that sends nothing does not hold a thread for long

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            status, body = self.server.shop.visit()
        elif path == "/healthz":
            status, body = self.server.shop.health()
        else:
            status, body = 404, {"error": f"no such page: {path}"}
        self._send(status, body)

    def do_HEAD(self) -> None:
        self._send(200, {}, head=True)

    def _send(self, status: int, body: dict[str, Any], head: bool = False) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", HOSTNAME)
        self.send_header("X-Release", RELEASE)
        self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Log failures only: a load test would fill the console log otherwise.
        if len(args) >= 2 and str(args[1])[:1] in "45":
            log(f"{self.address_string()} {format % args}")


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    drain_seconds = float(os.environ.get("DRAIN_SECONDS", "5"))
    shop = Shop(load_config())
    server = Server(("0.0.0.0", port), shop)  # the stack's network
    # Signal handlers only queue the signal (SimpleQueue.put is reentrant); this thread acts.
    # PID 1 in its namespace ignores a signal that has no handler, so all three get one.
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: signals.put(signum))

    threading.Thread(target=shop.db.create_schema, args=(shop.stop,), daemon=True).start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    serving.start()
    log(f"release {RELEASE} listening on :{port}; db {shop.db.host}, "
        f"mem {[s for s, _ in shop.cache.clients]}")
    while True:
        try:
            signum = signals.get(timeout=1)
        except queue.Empty:
            continue
        if signum != signal.SIGHUP:
            break
        try:
            shop.reconfigure(load_config())
            log(f"reloaded the config: db {shop.db.host}, "
                f"mem {[s for s, _ in shop.cache.clients]}")
        except (SystemExit, Exception) as e:
            log(f"config reload failed, keeping the old one: {e}")
    deadline = time.monotonic() + drain_seconds
    log(f"{signal.Signals(signum).name}: no new connections, finishing requests in flight")
    server.shutdown()  # returns once serve_forever has left its loop
    serving.join()
    left = server.drain(deadline)
    shop.stop.set()
    shop.db.close()
    shop.cache.close()
    log(f"stopped, {left} requests cut off" if left else "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
