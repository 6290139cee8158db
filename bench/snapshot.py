"""Snapshot and clone of the shop: `rackfire snapshot create` of its 5 instances with the db
holding 512 MiB of table data, each instance's freeze, and `rackfire clone` of it to serving.

A server of its own (API port 7610, subnet pool 10.96.0.0/16) whose data dir is on an XFS
made for the run with reflink=1 (a sparse 40 GiB image file under /tmp/bench-snapshot,
loop-mounted), as an operator's would be for instant snapshots. On it a copy of
examples/shop (lb, app x2, mem, db; its published port 8610 instead of 8080; the db's data
disk 2G instead of 512M, to hold 512 MiB of table data with its WAL; the lb's cpu 0.25
instead of 0.5, so that the shop and its clone, 1.0 core each, fit the 2 cores of this
machine: rackfire never overcommits). Its bring-up (and the debootstrap of its image, the
first time) is not measured. Then the db is filled, as postgres in its instance, with rows
of ~1 KB of incompressible text until `pg_database_size` reaches 512 MiB, and CHECKPOINTed.

For the whole measurement a writer commits one row every 50 ms in the db (a PL/pgSQL loop,
one transaction per row) and a client GETs the shop's page through its published port every
100 ms. Per run:

- *snapshot*: `rackfire snapshot create shop --name bN --json`, the CLI's wall clock from
  its call to its return (a Python CLI's start included), and each instance's `frozen_ms`
  from its answer: one host freezes all of its instances' filesystems together (settled by
  a syncfs first), reflinks their disks and thaws them, so each instance's freeze is that
  host's; the XFS volume's used space (statvfs) just before and just after;
- *clone*: `rackfire clone shop tryN --from bN --port-offset 1000 --no-wait`, from the call
  until the clone's lb answers HTTP 200 on port 9610 (a new connection every 50 ms): a page
  served by the clone's app from the clone's db (PostgreSQL recovering the crash-consistent
  copy first);
- then `rackfire destroy tryN -y`, until nothing of it is left on the host, and
  `rackfire snapshot rm shop@bN`.

At the end, even on failure, the stacks are destroyed, the server is stopped by pid, the
volume unmounted and /tmp/bench-snapshot removed (the server's log is kept in
/tmp/bench-snapshot/logs when a run failed).

    sudo .venv/bin/python -m bench snapshot --runs 5   # as root
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bringup import timeline
from bench.deploy import Server, host_cache_has_image, mounts_under, runc_ids, shop_copy
from bench.report import Result, Target, render_result
from rackfire.net import links, names
from rackfire.runtime import freeze, mounts
from rackfire.runtime.layout import list_instance_dirs

ROOT = Path("/tmp/bench-snapshot")
IMAGE = ROOT / "xfs.img"
MOUNT = ROOT / "xfs"
DATA = MOUNT / "data"
LOGS = ROOT / "logs"  # kept only when a run failed
VOLUME = 40 << 30  # sparse: holds only what is written
PORT = 7610
POOL = "10.96.0.0/16"
STACK = "shop"
WEB_PORT = 8610
OFFSET = 1000
CLONE_PORT = WEB_PORT + OFFSET
RUNC_ROOT = "/run/rackfire/runc"
MiB = 1 << 20
DB_BYTES = 512 * MiB
DB_DISK = "2G"
CHUNK_ROWS = 64 * 1024  # rows per INSERT: ~64 MiB
PROBE = 0.05
CLONE_TIMEOUT = 180.0
SNAPSHOT_TARGET, FREEZE_TARGET, CLONE_TARGET = 2.0, 50.0, 10.0
WRITER = "bench-load"  # the writer's application_name, to end it by
WRITER_PERIOD, WRITER_MAX_S = 0.05, 3600  # it ends by itself after an hour at most


def log(message: str) -> None:
    print(f"   {time.strftime('%H:%M:%S')} {message}", flush=True)


def sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def must(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: "
                           f"{(proc.stderr.strip() or proc.stdout.strip())[-1500:]}")
    return proc.stdout


def used() -> int:
    st = os.statvfs(MOUNT)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# -- the volume and the stack ----------------------------------------------------------------


def make_volume() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(IMAGE, "wb") as f:
        f.truncate(VOLUME)
    must(sh("mkfs.xfs", "-q", "-m", "reflink=1", str(IMAGE)), "mkfs.xfs")
    MOUNT.mkdir()
    must(sh("mount", "-o", "loop", str(IMAGE), str(MOUNT)), "mount")


def remove_volume() -> list[str]:
    """Unmount the volume (its loop device goes with it) and remove ROOT but for LOGS."""
    problems = []
    if str(MOUNT) in mounts_under(str(MOUNT)):
        inner = [m for m in mounts_under(str(MOUNT) + "/")]
        if inner:
            problems.append(f"mounts left on the volume: {inner[:5]}")
        for _ in range(10):
            if sh("umount", str(MOUNT)).returncode == 0:
                break
            time.sleep(1)
        else:
            problems.append(f"cannot unmount {MOUNT}: {sh('umount', str(MOUNT)).stderr}")
            return problems
    for p in ROOT.iterdir() if ROOT.exists() else ():
        if p != LOGS:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        ROOT.rmdir()  # when no logs were kept
    return problems


def stack_file() -> Path:
    """examples/shop with its port moved; the db's data disk big enough for 512 MiB of
    rows and their WAL; the lb's cpu halved, so the shop and its clone fit 2 cores."""
    path = shop_copy(ROOT, STACK, WEB_PORT) / "stack.yaml"
    text = path.read_text()
    new = text.replace("data: {path: /data, size: 512M}", f"data: {{path: /data, size: "
                       f"{DB_DISK}}}")
    lb = "resources: {cpu: 0.5, memory: 64M, disk: 256M, pids: 100}"
    new = new.replace(lb, lb.replace("cpu: 0.5", "cpu: 0.25"))
    if new.count(f"size: {DB_DISK}") != 1 or text.count(lb) != 1:
        raise RuntimeError("examples/shop/stack.yaml changed shape: cannot make the copy")
    path.write_text(new)
    return path


def serving(port: int) -> bool:
    try:
        with httpx.Client(timeout=1, trust_env=False) as http:  # a new connection each
            return http.get(f"http://127.0.0.1:{port}/").status_code == 200
    except httpx.HTTPError:
        return False


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def traces(stack: str) -> list[str]:
    """What of the stack is on the host: containers, netns, its bridge."""
    found = [f"container {c}" for c in runc_ids() if c.startswith(f"{stack}.")]
    found += [f"netns {n}" for n in links.owned_netns() if n.startswith(f"rf-{stack}.")]
    found += [f"link {n}" for n in links.owned_links() if n == names.bridge_name(stack)]
    return found


# -- the db --------------------------------------------------------------------------------


def psql_argv(sql: str, *, app: str = "bench") -> list[str]:
    return ["runc", "--root", RUNC_ROOT, "exec", "--env", f"PGAPPNAME={app}",
            f"{STACK}.db.0", "setpriv", "--reuid=postgres", "--regid=postgres",
            "--init-groups", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", "shop",
            "-c", sql]


def psql(sql: str, timeout: float = 600) -> str:
    return must(sh(*psql_argv(sql), timeout=timeout), f"psql {sql[:60]!r}").strip()


def db_size() -> int:
    return int(psql("SELECT pg_database_size('shop')"))


def fill_db() -> tuple[int, int, float]:
    """(bytes of the database, rows of ~1 KB added, seconds it took)."""
    t0 = time.monotonic()
    psql("CREATE TABLE bench_fill (id bigint PRIMARY KEY, pad text NOT NULL)")
    rows = 0
    while (size := db_size()) < DB_BYTES:
        # md5 text repeated: ~1 KB a row, under the TOAST threshold, so stored as is.
        psql(f"INSERT INTO bench_fill SELECT g, repeat(md5(g::text || random()::text), 30) "  # noqa: S608
             f"FROM generate_series({rows + 1}, {rows + CHUNK_ROWS}) g; CHECKPOINT")
        rows += CHUNK_ROWS
        log(f"db: {rows} rows added")
    psql("CHECKPOINT")
    return size, rows, time.monotonic() - t0


def start_writer() -> subprocess.Popen[str]:
    psql("CREATE TABLE bench_load (t timestamptz NOT NULL)")
    loop = (f"DO $$ DECLARE stop timestamptz := clock_timestamp() + interval "  # noqa: S608
            f"'{WRITER_MAX_S} s'; BEGIN WHILE clock_timestamp() < stop LOOP "
            f"INSERT INTO bench_load VALUES (clock_timestamp()); COMMIT; "
            f"PERFORM pg_sleep({WRITER_PERIOD}); END LOOP; END $$")
    return subprocess.Popen(psql_argv(loop, app=WRITER), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_writer(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "  # noqa: S608
             f"application_name = '{WRITER}'", timeout=30)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def writer_gaps(windows: list[tuple[float, float]]) -> tuple[int, float, float, float]:
    """(rows the writer committed, its median gap between two commits, the longest gap
    anywhere, the longest ending within a snapshot's window), gaps in ms."""
    rows = psql("SELECT count(*), coalesce(extract(epoch FROM max(t) - min(t)), 0) "
                "FROM bench_load").split("|")
    gaps = [line.split("|") for line in psql(
        "SELECT extract(epoch FROM t), extract(epoch FROM t - lag(t) OVER (ORDER BY t)) "
        "FROM bench_load ORDER BY t").splitlines()]
    pairs = [(float(t), float(g) * 1000) for t, g in gaps if g]
    if not pairs:
        return int(rows[0]), 0.0, 0.0, 0.0
    during = [g for t, g in pairs if any(a <= t <= b + 1 for a, b in windows)]
    return (int(rows[0]), statistics.median(g for _, g in pairs), max(g for _, g in pairs),
            max(during, default=0.0))


class Reader(threading.Thread):
    """GET / on the shop's published port every 100 ms: what answered, what did not."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=5, trust_env=False) as http:
            while not self.done.wait(0.1):
                try:
                    status = http.get(f"http://127.0.0.1:{WEB_PORT}/").status_code
                    if status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{time.strftime('%H:%M:%S')} HTTP {status}")
                except httpx.HTTPError as e:
                    self.failed.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}")


# -- a run ---------------------------------------------------------------------------------


def snapshot_event(srv: Server, name: str) -> float | None:
    """The server's own time for the snapshot, from its event (`... in 0.41 s, ...`)."""
    for e in srv.cli_json("events", STACK, "--limit", "100"):
        m = re.search(rf"{STACK}@{name}: \d+ instance\(s\) in ([\d.]+) s", str(e))
        if m:
            return float(m.group(1))
    return None


def one_run(srv: Server, n: int) -> dict[str, Any]:
    name, trial = f"b{n}", f"try{n}"
    before = used()
    start = time.time()
    t0 = time.perf_counter()
    out = must(srv.cli("snapshot", "create", STACK, "--name", name, "--json", timeout=120),
               "snapshot create")
    took = time.perf_counter() - t0
    after = used()
    snap = json.loads(out)
    if snap["state"] != "ready" or len(snap["copies"]) != 5:
        raise RuntimeError(f"snapshot {name}: {out[:1500]}")
    frozen = {c["instance"]: float(c["frozen_ms"]) for c in snap["copies"]}
    methods = sorted({c["method"] for c in snap["copies"]})
    server_s = snapshot_event(srv, name)

    since = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rackfire", "clone", STACK, trial, "--from",
                             name, "--port-offset", str(OFFSET), "--no-wait"],
                            env=srv.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    returned: float | None = None
    while not serving(CLONE_PORT):
        if returned is None and proc.poll() is not None:
            returned = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"clone exited {proc.returncode}: "
                                   f"{proc.stdout.read() if proc.stdout else ''}")
        if time.perf_counter() - t0 > CLONE_TIMEOUT:
            raise RuntimeError(f"{trial} not serving on {CLONE_PORT} within "
                               f"{CLONE_TIMEOUT:.0f} s")
        time.sleep(PROBE)
    clone_s = time.perf_counter() - t0
    proc.communicate(timeout=60)
    if returned is None:
        returned = clone_s
    steps = timeline(srv, trial, since)

    must(srv.cli("destroy", trial, "-y", timeout=300), f"destroy {trial}")
    wait(lambda: not traces(trial), 60, f"{trial} to leave nothing on the host")
    must(srv.cli("snapshot", "rm", f"{STACK}@{name}", timeout=120), f"snapshot rm {name}")
    log(f"run {n}: snapshot {took:.2f} s (server {server_s} s), frozen "
        f"{max(frozen.values()):.1f} ms ({', '.join(methods)}), volume +"
        f"{(after - before) / MiB:.1f} MiB; clone serving {clone_s:.2f} s (CLI back "
        f"{returned:.2f} s); {steps}")
    return {"snapshot": took, "server": server_s, "frozen": frozen, "methods": methods,
            "held": snap.get("held"), "used_before": before, "used_after": after,
            "clone": clone_s, "clone_cli": returned, "clone_steps": steps, "started": start}


# -- what a freeze costs here ----------------------------------------------------------------


def freeze_alone(rounds: int = 3) -> tuple[list[float], list[float], int]:
    """(ms of each FIFREEZE, ms of each FITHAW, filesystems), each of the shop's mounted
    disks frozen and thawed alone, the writer stopped: what one freeze costs on this
    platform, where a host's snapshot freezes its instances' filesystems one after another."""
    found = [m for _, d in list_instance_dirs(DATA / "instances") for m in (d.disk, d.data)
             if mounts.mounted(m)]
    freezes, thaws = [], []
    for _ in range(rounds):
        for m in found:
            t0 = time.perf_counter()
            try:
                freeze.freeze(m)
                t1 = time.perf_counter()
            finally:
                freeze.thaw(m)
            freezes.append((t1 - t0) * 1000)
            thaws.append((time.perf_counter() - t1) * 1000)
        time.sleep(0.5)
    return freezes, thaws, len(found)


def empty_freeze(n: int = 10) -> list[float]:
    """ms of each FIFREEZE of a new, empty, idle ext4 (64 MiB, loop-mounted from the
    volume): what a freeze costs with nothing to write back."""
    image, mount = MOUNT / "empty.img", MOUNT / "empty"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    must(sh("mkfs.ext4", "-q", "-F", str(image)), "mkfs.ext4")
    mount.mkdir()
    must(sh("mount", "-o", "loop", str(image), str(mount)), "mount")
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                freeze.freeze(mount)
                out.append((time.perf_counter() - t0) * 1000)
            finally:
                freeze.thaw(mount)
            time.sleep(0.2)
    finally:
        must(sh("umount", str(mount)), "umount")
        mount.rmdir()
        image.unlink()
    return out


def flush_ms(directory: Path, n: int = 20) -> list[float]:
    """A 4 KiB write and its fdatasync, n times, in a file of `directory`: one flush through
    what lies under it."""
    path = directory / ".bench-flush"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, os.urandom(4096), i * 4096)
            os.fdatasync(fd)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return out


# -- the whole -----------------------------------------------------------------------------


def preflight() -> None:
    if ROOT.exists() and any(p != LOGS for p in ROOT.iterdir()):
        raise RuntimeError(f"{ROOT} exists: an earlier run of this bench left it; unmount "
                           f"{MOUNT} and remove it")
    mine = [c for c in runc_ids() if c.startswith((f"{STACK}.", "try"))]
    if mine:
        raise RuntimeError(f"containers of a stack named {STACK} or try* run on this host "
                           f"({', '.join(mine[:5])}): this bench would clash with them")
    busy = [p for p in (PORT, WEB_PORT, CLONE_PORT) if sh("ss", "-Htln",
                                                          f"sport = :{p}").stdout.strip()]
    if busy:
        raise RuntimeError(f"port(s) {busy} in use")


def cleanup(srv: Server, stacks: list[str]) -> list[str]:
    """Destroy the stacks through the server, stop it by pid; what it did not remove is
    removed with rackfire's own code, then the volume goes."""
    from rackfire.agent.proxy import Proxy
    from rackfire.runtime.container import ContainerRuntime

    problems: list[str] = []
    if srv.alive():
        for s in stacks:
            proc = srv.cli("destroy", s, "-y", timeout=300)
            if proc.returncode != 0:
                problems.append(f"destroy {s} exited {proc.returncode}: "
                                f"{proc.stderr.strip()[-300:]}")
    srv.stop()
    for s in stacks:
        with contextlib.suppress(Exception):
            Proxy(DATA / "stacks" / s, s).stop()
    instances = DATA / "instances"
    if instances.is_dir():
        rt = ContainerRuntime(instances, host="bench")
        for key, _ in list_instance_dirs(instances):
            try:
                rt.destroy(key)
                problems.append(f"{key} was left by the server; removed")
            except Exception as e:  # record it, go on with the rest
                problems.append(f"destroying {key}: {e}")
    for s in stacks:
        with contextlib.suppress(Exception):
            links.delete_bridge(s)
        problems += [f"{s}: {t}" for t in traces(s)]
    return problems


def run(runs: int) -> Result:
    preflight()
    shutil.rmtree(LOGS, ignore_errors=True)
    cached = host_cache_has_image(Path(__file__).resolve().parent.parent / "examples" / "shop"
                                  / "stack.yaml")
    srv = Server(DATA, POOL, port=PORT)
    stacks = [STACK]
    results: list[dict[str, Any]] = []
    facts: dict[str, Any] = {"cached": cached}
    failed = True
    writer: subprocess.Popen[str] | None = None
    reader = Reader()
    try:
        make_volume()
        srv.start()
        file = stack_file()
        log(f"bringing up {STACK} (image {'cached' if cached else 'not cached: debootstrap'})")
        t0 = time.monotonic()
        must(srv.cli("apply", "-f", str(file), "-y", "--timeout", "900", timeout=960), "apply")
        wait(lambda: serving(WEB_PORT), 120, f"{STACK} serving on {WEB_PORT}")
        facts["bringup"] = time.monotonic() - t0
        log(f"{STACK} serving after {facts['bringup']:.0f} s; filling the db")
        facts["db_bytes"], facts["rows"], facts["fill_s"] = fill_db()
        facts["used_filled"] = used()
        log(f"db {facts['db_bytes'] / MiB:.0f} MiB in {facts['fill_s']:.0f} s; volume used "
            f"{facts['used_filled'] / MiB:.0f} MiB")
        writer = start_writer()
        reader.start()
        time.sleep(2)  # the load running before the first snapshot
        if writer.poll() is not None:
            raise RuntimeError(f"the writer exited {writer.returncode}: "
                               f"{writer.stderr.read() if writer.stderr else ''}")
        for n in range(1, runs + 1):
            stacks.append(f"try{n}")
            results.append(one_run(srv, n))
        reader.done.set()
        reader.join(10)
        stop_writer(writer)
        facts["writes"] = writer_gaps([(r["started"], r["started"] + r["snapshot"])
                                       for r in results])
        writer = None
        facts["db_bytes_end"] = db_size()
        facts["alone"], facts["empty"] = freeze_alone(), empty_freeze()
        facts["flush_volume"], facts["flush_host"] = flush_ms(MOUNT), flush_ms(ROOT)
        facts["agent_lines"] = [line for line in (DATA / "server.log").read_text().splitlines()
                                if re.search(r"snapshot b\d+\.new: \d+ instance", line)]
        failed = False
    finally:
        reader.done.set()
        if writer is not None and writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(10)
        if failed and (DATA / "server.log").exists():
            LOGS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / "server.log", LOGS / "server.log")
            print(f"   the server's log kept in {LOGS}", file=sys.stderr, flush=True)
        problems = cleanup(srv, stacks)
        problems += remove_volume()
        if problems and failed:  # the run's own error is the one to see; this one beside it
            print("   cleanup: " + "; ".join(problems), file=sys.stderr, flush=True)
        elif problems:
            raise RuntimeError("cleanup: " + "; ".join(problems))
    return _result(results, facts, reader)


def _result(runs: list[dict[str, Any]], facts: dict[str, Any], reader: Reader) -> Result:
    what = (__doc__ or "\n\n").split("\n\n", 1)[1].split("\n\n    ")[0]
    r = Result("snapshot", "Snapshot and clone of the shop", what)
    snap = [x["snapshot"] for x in runs]
    server = [x["server"] for x in runs if x["server"] is not None]
    largest = [max(x["frozen"].values()) for x in runs]
    db = [x["frozen"]["db-0"] for x in runs]
    clone = [x["clone"] for x in runs]
    added = [(x["used_after"] - x["used_before"]) / MiB for x in runs]
    r.add("snapshot (5 instances, db 512 MiB)", "rackfire: `snapshot create` (CLI)", snap, "s")
    r.add("snapshot (5 instances, db 512 MiB)", "the server's take (its event)", server, "s",
          part=True)
    r.add("freeze", "the largest instance's", largest, "ms")
    r.add("freeze", "the db's", db, "ms", part=True)
    r.add("clone to serving", "rackfire: `clone --from` to HTTP 200 on the clone's port",
          clone, "s")
    r.add("clone to serving", "the CLI's return (--no-wait)", [x["clone_cli"] for x in runs],
          "s", part=True)
    r.add("space", "the XFS volume's used space: a snapshot adds", added, "MiB", part=True)
    if "alone" in facts:
        freezes, thaws, fs = facts["alone"]
        r.add("what a freeze costs here", f"one filesystem's FIFREEZE, alone ({fs} "
              "filesystems x 3, idle)", freezes, "ms", part=True)
        r.add("what a freeze costs here", "its FITHAW", thaws, "ms", part=True)
        r.add("what a freeze costs here", "FIFREEZE of a new, empty, idle ext4 (64 MiB)",
              facts["empty"], "ms", part=True)
        r.add("what a freeze costs here", "a 4 KiB write + fdatasync on the XFS volume",
              facts["flush_volume"], "ms", part=True)
        r.add("what a freeze costs here", "the same on the host filesystem under its image",
              facts["flush_host"], "ms", part=True)
    for what_, xs, bound, unit in (
            ("snapshot of the shop", snap, SNAPSHOT_TARGET, "s"),
            ("each instance's freeze", largest, FREEZE_TARGET, "ms"),
            ("clone of the shop to serving", clone, CLONE_TARGET, "s")):
        fmt = "{:.1f}" if unit == "ms" else "{:.2f}"
        r.targets.append(Target(
            f"{what_} <= {bound:g} {unit} (every run: the max)",
            max(xs) <= bound if xs else None,
            f"median {fmt.format(statistics.median(xs))} {unit}, max "
            f"{fmt.format(max(xs))} {unit}" if xs else "not measured"))
    if not runs:
        return r
    writes, med_gap, max_gap, gap_snap = facts["writes"]
    last = runs[-1]
    r.notes = [
        f"The db: {facts['db_bytes'] / MiB:.0f} MiB (`pg_database_size`) after "
        f"{facts['rows']} rows of ~1 KB were added in {facts['fill_s']:.0f} s, "
        f"{facts['db_bytes_end'] / MiB:.0f} MiB at the end; the volume held "
        f"{facts['used_filled'] / MiB:.0f} MiB then. Every copy was a "
        f"{'/'.join(sorted({m for x in runs for m in x['methods']}))}.",
        f"Space: the volume's used space rose by {statistics.median(added):.1f} MiB median "
        f"({max(added):.1f} max) across a snapshot (the writer's rows and the snapshot's "
        f"metadata and XFS log included), while the copies' own accounting (`held`, shared "
        f"extents counted for each sharer) was {last['held'] / MiB:.0f} MiB in the last run: "
        "reflinks share the extents, a snapshot stores what changes after it.",
        f"Load: the writer committed {writes} rows (one every {WRITER_PERIOD * 1000:.0f} ms "
        f"asked; median gap {med_gap:.0f} ms); the longest gap between two commits was "
        f"{max_gap:.0f} ms anywhere and {gap_snap:.0f} ms around a snapshot. The reader got "
        f"{reader.ok} pages, {len(reader.failed)} failures"
        + (f" ({', '.join(reader.failed[:3])})" if reader.failed else "") + ".",
        _freeze_note(runs, facts),
        "The snapshot's figure is the CLI's wall clock: a Python CLI start and one API call "
        "beside the server's own take (the row below it, from its event: the hosts' settle, "
        "freeze, reflinks, thaw and the record).",
        "The clone, last run, from the server's actions and releases: "
        f"{last['clone_steps']}.",
        f"Bring-up of the shop (not measured): {facts['bringup']:.0f} s, its image "
        f"{'from the host cache' if facts['cached'] else 'debootstrapped first'}.",
        "This machine: 2 cores, shared with other work while it ran (see the load "
        "average below).",
    ]
    return r


def _freeze_note(runs: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    """What the freeze window is made of, from the figures of this run."""
    reported = [max(x["frozen"].values()) for x in runs]
    logged = [float(m.group(1)) for line in facts.get("agent_lines", [])
              if (m := re.search(r"frozen ([\d.]+) ms", line))]
    text = ("Freeze: the agent reports one figure per host, the time from its first "
            "FIFREEZE to its last FITHAW, for every instance on it (so the db's is the "
            "host's)" + (f"; its log says the same ({', '.join(f'{x:.0f}' for x in logged)} "
                         "ms)" if logged else ""))
    if "alone" not in facts:
        return text + "."
    freezes, _, fs = facts["alone"]
    med = statistics.median(freezes)
    vol, host = (statistics.median(facts[k]) for k in ("flush_volume", "flush_host"))
    return (text + f". It freezes the {fs} mounted filesystems of the shop's instances "
            f"(5 root disks, the db's data disk) one after another. One FIFREEZE alone, as "
            f"the kernel is by default (measured here with the agent's setting off), takes "
            f"{med:.0f} ms median ({min(freezes):.0f}-{max(freezes):.0f}): {fs} x "
            f"{med:.0f} = {fs * med:.0f} ms, against {statistics.median(reported):.0f} ms "
            f"measured. It is not the writing back: a 4 KiB write and its fdatasync take "
            f"{vol:.1f} ms on the volume ({host:.1f} ms on the host filesystem under it), and "
            f"a new, empty ext4 takes {statistics.median(facts['empty']):.0f} ms to freeze "
            "too. The kernel's freeze (freeze_super) takes the superblock's three freeze "
            "levels one after another, each a percpu rwsem whose write side waits for an RCU "
            f"grace period (this kernel: {_kernel()}); a thaw does not wait. So the agent "
            "asks for expedited grace periods (/sys/kernel/rcu_expedited) while it freezes, "
            "and sets it back after (runtime/freeze.py).")


def _kernel() -> str:
    """The release, and what of its config makes an RCU grace period long."""
    found = []
    with contextlib.suppress(OSError):
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
        for key in ("CONFIG_HZ", "CONFIG_PREEMPT_NONE", "CONFIG_PREEMPT_VOLUNTARY",
                    "CONFIG_PREEMPT", "CONFIG_PREEMPT_DYNAMIC", "CONFIG_RCU_LAZY"):
            if m := re.search(rf"(?m)^{key}=(\S+)$", config):
                found.append(f"{key.removeprefix('CONFIG_')}={m.group(1)}")
    return ", ".join([os.uname().release, *found])


if __name__ == "__main__":  # `python -m bench snapshot` keeps results; this only prints
    print("\n".join(render_result(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
