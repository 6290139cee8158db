"""The replicated PostgreSQL appliance (examples/shop-ha) on the 3-host bed: a primary and a
synchronous standby on two hosts, the app reaching the primary by the name `db`. A writer
outside the stack records every write the shop acknowledged; the primary's host dies; the
standby is promoted after the fence, writes are accepted again, and every acknowledged one
is in the new primary. The old primary's host comes back: it follows the new primary as a
standby, and at no time do two primaries run. (`python -m bench dbfailover` does this 20
times, with figures.)"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from test_chaos import kill_host
from test_cluster import Cluster, cluster, destroy

from harness import free_port, unique, wait_for, write_stack

pytestmark = pytest.mark.root
__all__ = ["cluster"]

STACK = Path(__file__).parents[2] / "examples" / "shop-ha" / "stack.yaml"
RESUME_BOUND = 15.0  # the target, with the bed's hosts on one shared machine


def stack_text(name: str, port: int) -> str:
    text = STACK.read_text().replace("stack: shop-ha", f"stack: {name}")
    text = text.replace('ports: ["8080:80"]', f'ports: ["{port}:80"]')
    return text.replace("app: ../shop/app", f"app: {STACK.parents[1] / 'shop' / 'app'}")


@dataclass
class Writer:
    """GET / through every host's published port, one after another: each 200 is a visit
    the shop wrote (its id), acknowledged."""

    urls: list[str]
    acked: dict[int, float] = field(default_factory=dict)
    failed: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5)) as client:
            while not self._stop.is_set():
                n += 1
                url = self.urls[n % len(self.urls)]
                try:
                    r = client.get(url, headers={"Connection": "close"})
                    if r.status_code == 200:
                        self.acked[int(r.json()["db"]["visit_id"])] = time.monotonic()
                        continue
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass
                self.failed.append(time.monotonic())
                time.sleep(0.02)

    def first_after(self, t: float) -> float | None:
        later = [at for at in self.acked.values() if at > t]
        return min(later) if later else None


def db_sql(c: Cluster, stack: str, host: str, index: int, sql: str) -> str:
    proc = c.runc(host, "exec", f"{stack}.db.{index}", "setpriv", "--reuid=postgres",
                  "--regid=postgres", "--init-groups", "/usr/lib/postgresql/15/bin/psql",
                  "-h", "/run/postgresql", "-XAtc", sql, "shop")
    return proc.stdout.strip() if proc.returncode == 0 else f"error: {proc.stderr.strip()}"


def db_hosts(c: Cluster, stack: str) -> dict[int, str]:
    rows = json.loads(c.server.cli("ps", stack, "--json").stdout)
    return {r["index"]: r["host"] for r in rows if r["role"] == "db"}


def primaries(c: Cluster, stack: str, alive: set[str]) -> list[int]:
    """The db instances that answer as a primary now (on the hosts that are up)."""
    return [i for i, h in db_hosts(c, stack).items() if h in alive
            and db_sql(c, stack, h, i, "SELECT pg_is_in_recovery()") == "f"]


def test_primary_host_dies_no_acked_write_is_lost(cluster: Cluster) -> None:
    c, stack, port = cluster, unique("pg"), free_port()
    c.server.cli("apply", "-f", str(write_stack(c.tmp, stack_text(stack, port))), "-y",
                 timeout=900)
    urls = [f"http://{h.ip}:{port}/" for h in c.bed.hosts]
    hosts = db_hosts(c, stack)
    assert len(set(hosts.values())) == 2  # spread: the standby is on another host
    alive = {h.name for h in c.bed.hosts}
    wait_for(lambda: primaries(c, stack, alive) == [0], 120, "db-0 the only primary")
    wait_for(lambda: db_sql(c, stack, hosts[0], 0, "SELECT sync_state FROM "
                            "pg_stat_replication") == "sync", 120, "a synchronous standby")
    writer = Writer(urls).start()
    try:
        wait_for(lambda: len(writer.acked) > 50, 60, "writes acknowledged")
        dead = hosts[0]
        killed = time.monotonic()
        kill_host(c, dead)
        alive.discard(dead)
        wait_for(lambda: writer.first_after(killed + 0.5) is not None, 60,
                 "writes accepted again")
        resumed = writer.first_after(killed + 0.5)
        assert resumed is not None
        wait_for(lambda: len([t for t in writer.acked.values() if t > resumed]) > 20, 30,
                 "writes going on")
    finally:
        writer.stop()
    assert resumed - killed <= RESUME_BOUND, f"writes resumed after {resumed - killed:.1f} s"
    events = json.loads(c.server.cli("events", stack, "--json").stdout)
    assert [e for e in events if e["action"] == "promote" and "db-1 is the primary" in
            e["reason"]], events
    assert primaries(c, stack, alive) == [1]
    found = {int(x) for x in db_sql(c, stack, hosts[1], 1,
                                    "SELECT id FROM visits").split()}
    lost = sorted(set(writer.acked) - found)
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"

    # The old primary's host comes back: db-0 follows db-1, never a second primary.
    c.bed.cut(dead, up=True)
    c.start_agent(dead)
    alive.add(dead)
    wait_for(lambda: db_sql(c, stack, dead, 0, "SELECT pg_is_in_recovery()") == "t", 180,
             "db-0 back as a standby")
    assert primaries(c, stack, alive) == [1]
    wait_for(lambda: db_sql(c, stack, hosts[1], 1, "SELECT sync_state FROM "
                            "pg_stat_replication") == "sync", 60, "db-0 a synchronous standby")
    newest = max(found)
    assert re.fullmatch(r"\d+", db_sql(c, stack, dead, 0,
                                       f"SELECT id FROM visits WHERE id = {newest}"))
    destroy(c, stack)
