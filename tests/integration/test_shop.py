"""The shop stack end to end (examples/shop: HAProxy → Python app → memcached + PostgreSQL,
from one debootstrap image): releases pushed and rolled back, and scaling, while a load
generator in another process sends requests through the published port. Not one may fail.

One long test: bringing the shop up costs a minute (the image is cached host-wide after the
first debootstrap), and each step builds on the state the last one left."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, free_port, host_traces, runc_exec, unique, wait_for

pytestmark = pytest.mark.root

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"


def shop_copy(tmp: Path, stack: str, port: int) -> Path:
    """examples/shop with its own stack name and host port, so a running demo is left be."""
    dst = tmp / "shop"
    shutil.copytree(SHOP, dst, ignore=shutil.ignore_patterns("__pycache__"))
    text = (dst / "stack.yaml").read_text()
    text = re.sub(r"(?m)^stack: shop$", f"stack: {stack}", text)
    text = text.replace('"8080:80"', f'"{port}:80"')
    assert f"stack: {stack}" in text and f"{port}:80" in text
    (dst / "stack.yaml").write_text(text)
    return dst


@contextmanager
def load(url: str, out: Path) -> Iterator[dict[str, Any]]:
    """The load generator, a separate process, for the duration of the block; its report
    fills the dict when the block ends."""
    proc = subprocess.Popen([sys.executable, str(LOADGEN), url, "--out", str(out),
                             "--concurrency", "4"], stdin=subprocess.DEVNULL)
    report: dict[str, Any] = {}
    try:
        time.sleep(1.0)  # it is sending before the change starts
        yield report
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    report.update(json.loads(out.read_text()))


def releases_seen(url: str, n: int = 20) -> set[str]:
    return seen(url, "X-Release", n)


def seen(url: str, header: str, n: int = 20) -> set[str]:
    return {httpx.get(url, timeout=5).headers[header] for _ in range(n)}


def lb_servers(stack: str) -> list[str]:
    cfg = runc_exec(f"{stack}.lb.0", "cat", "/etc/haproxy/haproxy.cfg").stdout
    return re.findall(r"(?m)^\s*server (\S+) ", cfg)


def test_shop_releases_and_scaling_under_load(server: Server, tmp_path: Path) -> None:
    stack, port = unique("shop"), free_port()
    shop = shop_copy(tmp_path, stack, port)
    url = f"http://127.0.0.1:{port}/"
    server.cli("apply", "-f", str(shop / "stack.yaml"), "-y", timeout=1200)

    # A page went app → mem → db, and says who served it.
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200, page.text
    assert re.search(r"app-[01]", page.headers["X-Served-By"])
    first = page.headers["X-Release"]
    body = page.text.lower()
    assert "visit" in body and ("mem" in body or "cache" in body), page.text
    assert sorted(lb_servers(stack)) == ["app-0", "app-1"]

    # A new release under load: 0 failed requests, then only the new release answers.
    v2 = tmp_path / "v2"
    shutil.copytree(shop / "app", v2)
    (v2 / "VERSION").write_text("v2\n")
    with load(url, tmp_path / "push.json") as report:
        server.cli("push", f"{stack}/app", str(v2), timeout=600)
    assert report["failed"] == 0, report["failures"]
    assert report["ok"] > 20
    new = releases_seen(url)
    assert len(new) == 1 and first not in new, new
    second = new.pop()
    rows = json.loads(server.cli("releases", f"{stack}/app", "--json").stdout)
    live = [r for r in rows if r["current"]]
    assert len(live) == 1 and live[0]["status"] == "live" and live[0]["version"] == 2
    assert {r["status"] for r in rows if not r["current"]} == {"retired"}

    # A release whose check fails is rolled back by itself; still 0 failed requests.
    broken = tmp_path / "broken"
    shutil.copytree(v2, broken)
    (broken / "BROKEN").write_text("the health check says 500\n")
    with load(url, tmp_path / "broken.json") as report:
        res = server.cli("push", f"{stack}/app", str(broken), check=False, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rolled back" in res.stderr, res.stderr
    assert report["failed"] == 0, report["failures"]
    assert releases_seen(url) == {second}
    rows = json.loads(server.cli("releases", f"{stack}/app", "--json").stdout)
    by_version = {r["version"]: r for r in rows}
    assert by_version[3]["status"] == "failed" and by_version[3]["reason"]
    assert by_version[2]["current"] and by_version[2]["status"] == "live"
    assert sorted(i["name"] for i in server.ps(stack) if i["role"] == "app") == [
        "app-0", "app-1"]  # the surge instance is gone

    # Scale 2 → 6 → 2 under load: HAProxy's list follows, no request fails.
    with load(url, tmp_path / "scale.json") as report:
        server.cli("scale", f"{stack}/app", "6", timeout=600)
        six = wait_for(lambda: len(lb_servers(stack)) == 6 and lb_servers(stack), 30,
                       "the lb to list 6 app instances")
        wait_for(lambda: len(seen(url, "X-Served-By")) >= 4, 30, "the new ones to serve")
        server.cli("scale", f"{stack}/app", "2", timeout=600)
        two = wait_for(lambda: len(lb_servers(stack)) == 2 and lb_servers(stack), 30,
                       "the lb to list 2 app instances")
    assert report["failed"] == 0, report["failures"]
    assert sorted(six) == [f"app-{i}" for i in range(6)]
    assert sorted(two) == ["app-0", "app-1"]
    assert len(report["instances"]) >= 4, report["instances"]  # the new ones served too
    lb = next(i for i in server.ps(stack) if i["role"] == "lb")
    assert lb["restarts"] == 0 and lb["uptime"] > 30  # reloaded, never restarted

    # Restarting the db keeps the rows written before.
    rows_before, last_id = _rows(stack), httpx.get(url, timeout=5).json()["db"]["visit_id"]
    db_pid = next(i["pid"] for i in server.ps(stack) if i["role"] == "db")
    server.cli("restart", f"{stack}/db", timeout=300)
    assert next(i["pid"] for i in server.ps(stack) if i["role"] == "db") != db_pid
    assert _rows(stack, f"WHERE id = {int(last_id)}") == 1
    assert _rows(stack) > rows_before > 0
    assert wait_for(lambda: _answers(url), 60, "the shop to answer after the db restart")

    # Destroy asks about data disks; --keep-data keeps them for the next stack of the name.
    volumes = server.data_dir / "volumes" / stack
    assert volumes.is_dir() and list(volumes.glob("db-0*"))
    server.cli("destroy", stack, "-y", timeout=300)
    assert not volumes.exists()
    assert host_traces(stack) == []


def _rows(stack: str, where: str = "") -> int:
    """Rows of the visits table, asked of PostgreSQL inside db-0."""
    out = runc_exec(f"{stack}.db.0", "setpriv", "--reuid=postgres", "--regid=postgres",
                    "--init-groups", "psql", "-h", "/run/postgresql", "-d", "shop", "-tAc",
                    f"SELECT count(*) FROM visits {where}")
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
