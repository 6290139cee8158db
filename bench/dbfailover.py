"""Replicated PostgreSQL: the db primary's host killed, until the shop accepts writes again,
and every write it acknowledged found on the new primary.

A fresh test bed of 3 simulated hosts (a netns each on an underlay bridge, a real agent in
each with a heartbeat every 0.5 s) and a server with `--no-local-host` and its default
liveness (lease 3 s; fence after the lease + 1 s; 1 s for the watchdog's kill), as for
`bench failover`. On it examples/shop-ha (lb -> app x2 -> mem, and db: a PostgreSQL primary
and a synchronous streaming-replication standby, `ha: {primary: true}`, on two hosts), its
published port 8620 instead of 8080. The app is the shop's, unchanged: every `GET /` INSERTs a
row into `visits` and answers 200 with its id, or 503 when the db fails.

A writer outside the stack (two threads of this bench in the root netns, one connection at
a time each, a 2 s timeout) sends `GET /` in turn to the published port of each host that
will survive, and records every acknowledged id (HTTP 200 with an id) and every failure
(non-200, connection error, timeout) with its times. Per run:

- the primary (the db instance the role's name resolves to in an app instance's /etc/hosts,
  which also answers `pg_is_in_recovery() = f`) is found, and its host dies as the chaos
  suite kills one (underlay link down, agent SIGKILLed, watchdog stopped, containers
  SIGKILLed; the clock starts before the link goes);
- *writes accepted again*: until the first acknowledged write of a request sent after the
  kill took effect (its link down, a few ms after the clock's start); *steady*: the first
  of 10 acknowledged in a row; *promote*: the controller's `promote` event; the writes that
  failed in between;
- *lost*: the checker reads `SELECT id FROM visits` on the new primary (psql as postgres in
  its instance, runc exec) once writes flow again; every id acknowledged so far must be
  there (the count of those missing must be 0);
- *never a second primary*: all along, every 0.5 s, each db instance that runs is asked
  `pg_is_in_recovery()`; at most one may ever answer f;
- then the host comes back (link up, its agent started again) and the run ends when the old
  primary runs again as a standby (`pg_is_in_recovery() = t`) and the new primary has a
  synchronous standby (`pg_stat_replication`, sync_state `sync`), and every instance is
  running and healthy. The next run kills the new primary's host.

    sudo .venv/bin/python -m bench dbfailover --runs 20   # as root
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.bedrun import INTERVAL, Api, BedRun, wait
from bench.report import Result, Target, render_result

ROOT = Path("/tmp/bench-dbfailover")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PORT = 7620
POOL = "10.97.0.0/16"
WEB_PORT = 8620
ROLE = "db"
WRITERS = 2  # threads, one connection at a time each
WRITE_TIMEOUT = 2.0
STEADY = 10  # acknowledged in a row: writes flow again
WATCH = 0.5  # seconds between two looks for a second primary
TIMEOUT = 120.0  # a failover or a return that takes longer is a failure, reported
RESUME_TARGET = 15.0
MIN_RUNS = 20  # the "over at least 20 runs"
PSQL = "/usr/lib/postgresql/15/bin/psql"


def log(message: str) -> None:
    print(f"   {time.strftime('%H:%M:%S')} {message}", flush=True)


# -- pure parts: the stack file, /etc/hosts, the writer's timeline ----------------------------


def stack_file() -> Path:
    """examples/shop-ha/stack.yaml once it exists, else the plain shop (no standby: its db
    is a singleton, so the harness runs but a failover loses the db)."""
    ha = EXAMPLES / "shop-ha" / "stack.yaml"
    return ha if ha.exists() else EXAMPLES / "shop" / "stack.yaml"


def retarget(text: str, port: int) -> str:
    """The stack file with the lb's published port 8080 moved to `port`."""
    out = re.sub(r'"8080:(\d+)"', rf'"{port}:\1"', text)
    if out == text:
        raise RuntimeError("the stack file publishes no 8080: cannot move its port")
    return out


def stack_name(text: str) -> str:
    return str(yaml.safe_load(text)["stack"])


def db_name(text: str) -> str:
    """The database the app writes to (the db role's DB_NAME, the shop's by default)."""
    roles = yaml.safe_load(text).get("roles") or {}
    env = (roles.get(ROLE) or {}).get("env") or {}
    return str(env.get("DB_NAME", "shop"))


def named(hosts: str, name: str) -> list[str]:
    """The instance names (`db-0`) that an /etc/hosts file gives the alias `name` to: the
    words of each line that has it, but for the address and the alias itself."""
    out = []
    for line in hosts.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and name in words[1:]:
            out += [w for w in words[1:] if w != name]
    return out


@dataclass
class Write:
    start: float  # time.time() the request was sent
    end: float  # its answer (or failure)
    id: int | None  # the acknowledged row's id, None for a failure
    why: str = ""  # a failure's kind: "503", "refused", "timeout", ...


@dataclass
class Timeline:
    resumed: float | None  # seconds from t0 to the first acknowledged write sent after it
    steady: float | None  # to the first of STEADY acknowledged in a row
    failed: int  # writes sent after t0 that failed before writes resumed (steady)
    failures: dict[str, int] = field(default_factory=dict)  # of those, by kind
    acked: int = 0  # acknowledged writes sent after t0


def timeline(writes: Iterable[Write], t0: float, steady: int = STEADY,
             since: float | None = None) -> Timeline:
    """When writes were accepted again after t0, from the writer's records: of the writes
    sent once the kill took effect (`since`, t0 if not given; a write sent between the
    clock's start and the link going down may still be answered by the old primary)."""
    start = t0 if since is None else since
    after = sorted((w for w in writes if w.start >= start), key=lambda w: w.end)
    first = next((w for w in after if w.id is not None), None)
    run, steady_at = 0, None
    for n, w in enumerate(after):
        run = run + 1 if w.id is not None else 0
        if run == steady:
            steady_at = after[n - steady + 1]
            break
    until = steady_at.end if steady_at else float("inf")
    failures: dict[str, int] = {}
    for w in after:
        if w.id is None and w.end <= until:
            failures[w.why] = failures.get(w.why, 0) + 1
    return Timeline(first.end - t0 if first else None,
                    steady_at.end - t0 if steady_at else None, sum(failures.values()),
                    dict(sorted(failures.items())), sum(w.id is not None for w in after))


def missing(acked: Iterable[int], present: Iterable[int]) -> list[int]:
    """The acknowledged ids the checker did not find."""
    return sorted(set(acked) - set(present))


# -- the writer ---------------------------------------------------------------------------


def write_once(ip: str, port: int) -> Write:
    start = time.time()
    conn = http.client.HTTPConnection(ip, port, timeout=WRITE_TIMEOUT)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            return Write(start, time.time(), None, str(r.status))
        got = json.loads(body)["db"]["visit_id"]
        return Write(start, time.time(), int(got))
    except TimeoutError:
        return Write(start, time.time(), None, "timeout")
    except ConnectionRefusedError:
        return Write(start, time.time(), None, "refused")
    except (OSError, http.client.HTTPException) as e:
        return Write(start, time.time(), None, type(e).__name__)
    except (ValueError, KeyError, TypeError):
        return Write(start, time.time(), None, "bad body")
    finally:
        conn.close()


class Writer:
    """Threads that write through the given addresses in turn until stopped."""

    def __init__(self, targets: list[str], port: int) -> None:
        self.targets, self.port = targets, port
        self.writes: list[Write] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True)
                        for n in range(WRITERS)]

    def __enter__(self) -> Writer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WRITE_TIMEOUT + 5)

    def _loop(self, n: int) -> None:
        while not self.stop.is_set():
            w = write_once(self.targets[n % len(self.targets)], self.port)
            n += 1
            with self.lock:
                self.writes.append(w)
            if w.id is None:
                self.stop.wait(0.02)  # a refused connection returns at once: no busy loop

    def snapshot(self) -> list[Write]:
        with self.lock:
            return list(self.writes)

    def acked(self) -> list[int]:
        return [w.id for w in self.snapshot() if w.id is not None]

    def in_a_row(self, since: float, n: int = STEADY) -> bool:
        return timeline(self.snapshot(), since, n).steady is not None


# -- the db instances ---------------------------------------------------------------------


class Shop:
    def __init__(self, b: BedRun, api: Api, stack: str, database: str) -> None:
        self.b, self.api, self.stack, self.database = b, api, stack, database

    def rows(self) -> dict[str, dict[str, Any]]:
        return self.api.instances(self.stack)

    def dbs(self) -> dict[str, str]:
        """db instance name (`db-0`) -> its host, per the server."""
        return {r["name"]: r["host"] for k, r in sorted(self.rows().items())
                if k.startswith(f"{ROLE}/")}

    def sql(self, name: str, host: str, query: str, timeout: float = 10) -> str | None:
        """psql's unaligned answer from the instance, as postgres; None if it failed."""
        role, index = name.rsplit("-", 1)
        try:
            out = self.b.exec(host, f"{self.stack}.{role}.{index}", "setpriv",
                              "--reuid=postgres", "--regid=postgres", "--init-groups", PSQL,
                              "-h", "/run/postgresql", "-d", self.database, "-XAtq",
                              "-v", "ON_ERROR_STOP=1", "-c", query, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):  # a db that hangs
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    def recovery(self, skip: str = "") -> dict[str, str | None]:
        """Each db instance's `pg_is_in_recovery()` (t, f, None if it did not answer), but
        those on host `skip` (dead)."""
        return {n: self.sql(n, h, "SELECT pg_is_in_recovery()", timeout=5)
                for n, h in self.dbs().items() if h != skip}

    def resolved(self) -> list[str]:
        """The instances the role's name resolves to in the first running app instance."""
        for k, r in sorted(self.rows().items()):
            if k.startswith("app/") and r["state"] == "running":
                out = self.b.exec(r["host"], f"{self.stack}.app.{r['index']}", "cat",
                                  "/etc/hosts", timeout=10)
                if out.returncode == 0:
                    return named(out.stdout, ROLE)
        return []

    def primary(self, skip: str = "") -> tuple[str, str] | None:
        """(name, host) of the one primary: the name resolves to it and it is not in
        recovery; None while they disagree."""
        names = self.resolved()
        rec = self.recovery(skip)
        primaries = [n for n, v in rec.items() if v == "f"]
        if len(names) == 1 and primaries == names:
            return names[0], self.dbs()[names[0]]
        return None

    def ids(self, name: str, host: str, lo: int, hi: int) -> list[int] | None:
        query = f"SELECT id FROM visits WHERE id BETWEEN {int(lo)} AND {int(hi)}"  # noqa: S608
        got = self.sql(name, host, query, timeout=60)
        return None if got is None else [int(x) for x in got.split()]

    def sync_standbys(self, name: str, host: str) -> int:
        got = self.sql(name, host,
                       "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        return int(got) if got and got.isdigit() else 0

    def whole(self) -> bool:
        rows = self.rows()
        return bool(rows) and all(r["state"] == "running" and r["health"] == "healthy"
                                  for r in rows.values())

    def console(self, lines: int = 60) -> str:
        out = self.b.server.cli("logs", f"{self.stack}/{ROLE}", "-n", str(lines), "-t",
                                timeout=60)
        return out.stdout + out.stderr


class Watch:
    """Looks every WATCH seconds at each running db instance: how many answer that they are
    a primary (pg_is_in_recovery() = f); more than one ever is a failure."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.dead = ""  # a host killed: not asked
        self.seen: list[tuple[float, dict[str, str | None]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(httpx.HTTPError, OSError):
                self.seen.append((time.time(), self.shop.recovery(self.dead)))
            self.stop.wait(WATCH)

    def most(self) -> int:
        return max((sum(v == "f" for v in rec.values()) for _, rec in self.seen), default=0)

    def first(self, name: str, answer: str, since: float) -> float | None:
        """When `name` was first seen answering `answer` after `since`."""
        return next((t for t, rec in list(self.seen) if t >= since and rec.get(name) == answer),
                    None)

    def doubles(self) -> list[tuple[float, dict[str, str | None]]]:
        return [(t, rec) for t, rec in self.seen if sum(v == "f" for v in rec.values()) > 1]


# -- one run ------------------------------------------------------------------------------


def explain(shop: Shop, t0: float) -> Callable[[], str]:
    def text() -> str:
        try:
            events = "\n    ".join(f"{e['time'] - t0:+.2f}s {e['target']} {e['action']} "
                                   f"{e['result']}: {e['reason']}"
                                   for e in shop.api.events_since(t0 - 1))
            rows = "\n    ".join(f"{k}: {r['host']} {r['state']} {r['health']} "
                                 f"incarnation {r['incarnation']} {r['health_message']}"
                                 for k, r in sorted(shop.rows().items()))
            rec = shop.recovery()
        except (httpx.HTTPError, OSError) as e:
            events, rows, rec = f"(the server did not answer: {e})", "", {}
        return (f"\n  instances:\n    {rows}\n  pg_is_in_recovery: {rec}"
                f"\n  events since:\n    {events}\n  db console:\n{shop.console()}")
    return text


def one_run(b: BedRun, shop: Shop, watch: Watch, all_acked: list[int], n: int,
            ) -> dict[str, Any]:
    t_look = time.time()
    found = wait(shop.primary, 60, "one primary that the name resolves to",
                 explain(shop, t_look), every=0.5)
    old, victim = found
    rows = shop.rows()
    on_victim = sorted(k for k, r in rows.items() if r["host"] == victim)
    survivors = [h.name for h in b.bed.hosts if h.name != victim]
    with Writer([b.ip(h) for h in survivors], WEB_PORT) as writer:
        warm = time.time()
        wait(lambda: writer.in_a_row(warm), 60, "the shop accepting writes before the kill",
             explain(shop, warm))
        t0 = time.time()
        watch.dead = victim
        cut = b.kill_host(victim)
        killed = time.time() - t0
        wait(lambda: writer.in_a_row(cut), TIMEOUT, "writes accepted again after the kill",
             explain(shop, t0))
        time.sleep(1.0)  # a few more acknowledged after the steady point
        tl = timeline(writer.snapshot(), t0, since=cut)
        acked = writer.acked()
        events = shop.api.events_since(t0)
        promote = next((e for e in events if e["action"] == "promote"
                        and e["result"] == "ok"
                        and e["target"].startswith(f"{shop.stack}/{ROLE}/")), None)
        new_name, new_host = wait(lambda: shop.primary(skip=victim), 30, "the new primary",
                                  explain(shop, t0), every=0.5)
        present = shop.ids(new_name, new_host, min(acked), max(acked)) if acked else []
        if present is None:
            raise RuntimeError(f"the checker could not read visits on {new_name}"
                               + explain(shop, t0)())
        lost = missing(acked, present)
        # The host comes back, the writer still writing: the old primary must come back a
        # standby, and cost the writes nothing.
        back = time.time()
        b.revive(victim)
        watch.dead = ""
        wait(lambda: shop.api.hosts()[victim]["state"] == "ready", 60,
             f"{victim} ready again", explain(shop, t0))

        def old_is_standby() -> bool:
            host = shop.dbs().get(old)
            return host is not None and shop.sql(old, host,
                                                 "SELECT pg_is_in_recovery()") == "t"

        wait(old_is_standby, TIMEOUT, f"{old} running again as a standby",
             explain(shop, t0), every=0.5)
        standby = time.time() - back
        wait(lambda: shop.sync_standbys(new_name, new_host) >= 1, TIMEOUT,
             f"a synchronous standby of {new_name}", explain(shop, t0), every=0.5)
        synced = time.time() - back
        wait(shop.whole, TIMEOUT, "every instance running and healthy", explain(shop, t0))
        whole = time.time() - back
    writes = writer.snapshot()
    after_back = [w for w in writes if w.start >= back]
    run_acked = [w.id for w in writes if w.id is not None]
    all_acked += run_acked
    # Every write of the run (those of the return too), on the primary of now.
    name, host = wait(shop.primary, 30, "one primary after the return", explain(shop, t0),
                      every=0.5)
    present = shop.ids(name, host, min(run_acked), max(run_acked)) if run_acked else []
    if present is None:
        raise RuntimeError(f"the checker could not read visits on {name}"
                           + explain(shop, t0)())
    lost = sorted(set(lost) | set(missing(run_acked, present)))
    # The old primary, a standby again, was re-synced: it holds them too (once it replayed
    # the last ones: synchronous commit waits for its flush, not its replay).
    old_host = shop.dbs().get(old, "")

    def on_standby() -> list[int] | None:
        got = shop.ids(old, old_host, min(run_acked), max(run_acked)) if run_acked else []
        return None if got is None else missing(run_acked, got)

    with contextlib.suppress(RuntimeError):
        wait(lambda: on_standby() == [], 15, "", every=0.5)
    standby_missing = on_standby()
    primary_at = watch.first(new_name, "f", t0)
    if watch.doubles():
        raise RuntimeError(f"two primaries at once: {watch.doubles()[:3]}"
                           + explain(shop, t0)())
    run = {"victim": victim, "old": old, "new": new_name, "new_host": new_host,
           "on_victim": on_victim, "killed_in": killed, "cut": cut - t0,
           "resumed": tl.resumed,
           "steady": tl.steady, "failed": tl.failed, "failures": tl.failures,
           "promote": promote["time"] - t0 if promote else None,
           "promote_reason": promote["reason"] if promote else "",
           "out_of_recovery": None if primary_at is None else primary_at - t0,
           "acked": len(run_acked), "acked_after": tl.acked, "lost": lost,
           "failed_back": sum(w.id is None for w in after_back),
           "failures_back": [f"{w.why} at +{w.start - back:.2f} s" for w in after_back
                             if w.id is None],
           "acked_back": sum(w.id is not None for w in after_back),
           "old_host": old_host, "standby_missing": standby_missing,
           "standby_after_back": standby,
           "sync_after_back": synced, "whole_after_back": whole}
    log(f"run {n + 1}: {victim} died (it ran {', '.join(on_victim)}); "
        f"promote {_s(run['promote'])}, primary {_s(run['out_of_recovery'])}, "
        f"writes again {_s(tl.resumed)}, steady "
        f"{_s(tl.steady)}, {tl.failed} failed {tl.failures}; {old} -> {new_name}; "
        f"{len(run_acked)} acknowledged, {len(lost)} lost; {old} a standby {standby:.1f} s "
        f"after the host came back, sync {synced:.1f} s, all healthy {whole:.1f} s, "
        f"{run['failed_back']} writes failed meanwhile {run['failures_back'][:5]}; "
        f"on {old} (on {old_host}) "
        + ("unreadable" if standby_missing is None else f"{len(standby_missing)} missing"))
    return run


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f} s"


def run(runs: int) -> Result:
    b = BedRun(ROOT, PORT, POOL)
    if b.state.exists():
        raise RuntimeError(f"{b.state} exists: a bed of this bench is up; remove it with "
                           f"`python -m rackfire.testbed down --state {b.state}`")
    shutil.rmtree(b.logs, ignore_errors=True)
    source = stack_file()
    work = ROOT / "examples"
    results: list[dict[str, Any]] = []
    all_acked: list[int] = []
    final: dict[str, Any] = {}
    most = 0
    failed = True
    shop: Shop | None = None
    console = ""
    try:
        api = b.up()
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns(
            "__pycache__", "VERSION", "BROKEN"))
        text = retarget(source.read_text(), WEB_PORT)
        stack_path = work / source.relative_to(EXAMPLES)
        stack_path.write_text(text)
        shop = Shop(b, api, stack_name(text), db_name(text))
        log(f"applying {source.relative_to(EXAMPLES.parent)} (port {WEB_PORT})")
        t = time.time()
        out = b.server.cli("apply", "-f", str(stack_path), "-y", timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"apply: {out.stdout}\n{out.stderr}")
        wait(shop.whole, 600, "the stack running and healthy", explain(shop, t))
        log(f"the stack is up in {time.time() - t:.0f} s")
        with Watch(shop) as watch:
            for n in range(runs):
                results.append(one_run(b, shop, watch, all_acked, n))
            most = watch.most()
            looks = len(watch.seen)
        # Every id acknowledged in any run, on the last primary.
        name, host = wait(shop.primary, 60, "the last primary")
        present = shop.ids(name, host, min(all_acked), max(all_acked)) if all_acked else []
        final = {"primary": name, "looks": looks,
                 "missing": missing(all_acked, present or []) if present is not None
                 else None}
        failed = False
    finally:
        if failed:
            with contextlib.suppress(Exception):
                console = shop.console(200) if shop else ""
            with contextlib.suppress(OSError):
                print(f"   logs kept in {b.keep_logs({'db-console.log': console})}",
                      file=sys.stderr, flush=True)
        try:
            b.down()
        finally:
            left = b.left()
        if left and failed:  # the run's own error is the one to see; this one beside it
            print("   the bench left: " + ", ".join(left), file=sys.stderr, flush=True)
        elif left:
            raise RuntimeError("the bench left: " + ", ".join(left))
        with contextlib.suppress(OSError):
            b.state.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            if not failed:
                ROOT.rmdir()
    return _result(results, final, most, len(all_acked), str(source.relative_to(
        EXAMPLES.parent)))


# -- the result ---------------------------------------------------------------------------


def _result(runs: list[dict[str, Any]], final: dict[str, Any], most: int, acked: int,
            source: str) -> Result:
    what = (__doc__ or "\n\n").split("\n\n", 1)[1].split("\n\n    ")[0]
    r = Result("dbfailover", "Replicated PostgreSQL: the primary's host killed", what)
    case = "db primary's host killed"
    resumed = [x["resumed"] for x in runs if x["resumed"] is not None]
    r.add(case, "rackfire: writes accepted again (from the kill)", resumed, "s")
    r.add(case, "steady: the first of 10 acknowledged in a row", [
        x["steady"] for x in runs if x["steady"] is not None], "s", part=True)
    r.add(case, "promote event (from the kill)", [
        x["promote"] for x in runs if x["promote"] is not None], "s", part=True)
    r.add(case, "the new primary out of recovery (seen; looked every 0.5 s)", [
        x["out_of_recovery"] for x in runs if x.get("out_of_recovery") is not None], "s",
        part=True)
    r.add(case, "failed writes until steady", [float(x["failed"]) for x in runs],
          "writes", part=True)
    r.add(case, "acknowledged writes lost", [float(len(x["lost"])) for x in runs], "writes",
          part=True)
    r.add(case, "of them, not on the old primary once a standby again", [
        float(len(x["standby_missing"])) for x in runs if x["standby_missing"] is not None],
        "writes", part=True)
    back = "the host back"
    r.add(back, "the old primary a standby again (from the return)", [
        x["standby_after_back"] for x in runs], "s", part=True)
    r.add(back, "the new primary has a synchronous standby", [
        x["sync_after_back"] for x in runs], "s", part=True)
    r.add(back, "every instance running and healthy", [
        x["whole_after_back"] for x in runs], "s", part=True)
    r.add(back, "writes failed while it came back", [
        float(x["failed_back"]) for x in runs], "writes", part=True)
    lost = sum(len(x["lost"]) for x in runs)
    r.targets.append(Target(
        f"writes accepted again <= {RESUME_TARGET:.0f} s after the primary's host dies "
        "(every run: the max)", max(resumed) <= RESUME_TARGET
        if resumed and len(resumed) == len(runs) else (False if runs else None),
        f"median {statistics.median(resumed):.2f} s, max {max(resumed):.2f} s"
        if resumed else "not measured"))
    final_missing = final.get("missing")
    r.targets.append(Target(
        f"0 acknowledged writes lost over at least {MIN_RUNS} runs",
        (lost == 0 and final_missing == [] and len(runs) >= MIN_RUNS) if runs else None,
        f"{lost} lost of {acked} acknowledged over {len(runs)} runs"
        + (f"; all {acked} found on the last primary ({final.get('primary')})"
           if final_missing == [] else f"; missing on the last primary: {final_missing}")))
    r.targets.append(Target(
        "never a second primary (pg_is_in_recovery() = f on at most one db instance at "
        "every look)", most <= 1 if final.get("looks") else None,
        f"at most {most} at once over {final.get('looks', 0)} looks every {WATCH:g} s"))
    kinds: dict[str, int] = {}
    for x in runs:
        for k, v in x["failures"].items():
            kinds[k] = kinds.get(k, 0) + v
    r.notes = [
        f"Stack: {source}, its published port moved to {WEB_PORT}. Liveness: lease 3 s "
        f"(the server's default), heartbeats every {INTERVAL:g} s, fenced after the lease "
        "+ 1 s + the watchdog's grace; a standby is promoted only after the fence.",
        f"{len(runs)} runs; writers: {WRITERS} threads, one connection at a time each, "
        f"{WRITE_TIMEOUT:g} s timeout, to the surviving hosts' published ports in turn; "
        f"{acked} writes acknowledged in all. Failed writes by kind: "
        + (", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none") + ".",
        "The old primary came back on its own host in "
        f"{sum(x['old_host'] == x['victim'] for x in runs)} of {len(runs)} runs; its copy "
        "of the run's acknowledged writes was "
        + ("complete every time" if all(x["standby_missing"] == [] for x in runs)
           else "incomplete or unreadable in runs " + ", ".join(
               str(n + 1) for n, x in enumerate(runs) if x["standby_missing"] != []))
        + f" (read on it up to 15 s after the run's last write). No writes failed while "
        f"the host came back in {sum(x['failed_back'] == 0 for x in runs)} of {len(runs)} "
        "runs" + "".join(f"; in run {n + 1}: " + ", ".join(x.get("failures_back", []))
                         + " (sent that long after the host's return)"
                         for n, x in enumerate(runs) if x["failed_back"]) + ".",
        "Who was primary, and what else died with it: " + "; ".join(
            f"{old} on {victim} (with {what}) -> {new}: {n} run{'s' * (n > 1)}"
            for (old, victim, what, new), n in sorted(Counter(
                (x["old"], x["victim"], ", ".join(x["on_victim"]), x["new"])
                for x in runs).items())) + ".",
        "This machine: 2 cores, shared with other work while it ran (see the load "
        "average below).",
    ]
    return r


if __name__ == "__main__":  # `python -m bench dbfailover` keeps results; this only prints
    print("\n".join(render_result(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
