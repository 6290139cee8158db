"""Stack bring-up: the shop stack from nothing to serving its first request, and the hello
stack with 50 web instances, each on a server of its own started for the run."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.deploy import (
    ROOT,
    Server,
    cleanup,
    host_cache_has_image,
    leftovers,
    shop_copy,
)
from bench.report import Result
from bench.rfserver import free_port

POOL = "10.93.0.0/16"
HELLO = ROOT / "examples" / "hello" / "stack.yaml"
WEB = 50
WEB_RESOURCES = "resources: {cpu: 0.5, memory: 128M, disk: 256M, pids: 200}"


def hello_copy(work: Path, stack: str, port: int) -> Path:
    """examples/hello with its own name and port, and 50 web instances."""
    text = HELLO.read_text()
    new = re.sub(r"(?m)^stack: hello$", f"stack: {stack}", text)
    new = new.replace('"8080:8000"', f'"{port}:8000"')
    new = re.sub(r"(?m)^(  web:\n(?:    .*\n)*?    count: )3$", rf"\g<1>{WEB}", new)
    # 50 x 0.5 cores would not fit on this host: rackfire never overcommits. No cpu limit.
    new = new.replace(WEB_RESOURCES, "resources: {memory: 64M, disk: 64M, pids: 200}")
    if new.count(stack) != 1 or f'"{port}:8000"' not in new or f"count: {WEB}" not in new \
            or WEB_RESOURCES in new:
        raise RuntimeError("examples/hello/stack.yaml changed shape: cannot make the copy")
    out = work / "hello.yaml"
    out.write_text(new)
    return out


def timeline(srv: Server, stack: str, since: float) -> str:
    """When each role's creates began and ended, and the release layer was built, in
    seconds from the apply (from the server's own SQLite: actions, releases)."""
    db = sqlite3.connect(f"file:{srv.data_dir / 'rackfire.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT instance, created, finished FROM actions WHERE stack=? AND "
                          "kind='create' ORDER BY created", (stack,)).fetchall()
        built = db.execute("SELECT role, created FROM releases WHERE stack=? AND layer != ''",
                           (stack,)).fetchall()  # a role with no app has no layer to build
    finally:
        db.close()
    roles: dict[str, list[float]] = {}
    for instance, created, finished in rows:
        role = instance.split("/")[1] if "/" in instance else instance.split(".")[1]
        span = roles.setdefault(role, [created, finished or created])
        span[0], span[1] = min(span[0], created), max(span[1], finished or created)
    parts = [f"release layer of {role} built +{t - since:.1f} s" for role, t in built]
    parts += [f"{role} created +{a - since:.1f} to +{b - since:.1f} s"
              for role, (a, b) in roles.items()]
    return "; ".join(parts)


def bring_up(srv: Server, stack_file: Path, port: int) -> tuple[float, float]:
    """`rackfire apply -f FILE -y` from the call: seconds to the first answer (any HTTP
    status below 500) on the published port, and to the CLI's return (all converged)."""
    cmd = [sys.executable, "-m", "rackfire", "apply", "-f", str(stack_file), "-y",
           "--timeout", "900"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=srv.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    with httpx.Client(timeout=2) as http:
        while first is None:
            try:
                if http.get(f"http://127.0.0.1:{port}/").status_code < 500:
                    first = time.monotonic() - t0
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None and proc.returncode != 0:
                raise RuntimeError(f"apply exited {proc.returncode}: "
                                   f"{(proc.stdout.read() if proc.stdout else '')[-1500:]}")
            if time.monotonic() - t0 > 900:
                proc.kill()
                raise RuntimeError("no answer on the published port within 900 s")
            time.sleep(0.05)
    out, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"apply exited {proc.returncode}: {out[-1500:]}")
    return first, time.monotonic() - t0


def one_run(i: int, timelines: dict[str, str]) -> dict[str, float]:
    """A fresh server (empty data dir: images and release layers built again; the host's
    debootstrap cache is used) for each stack, so each starts from nothing."""
    tag = uuid.uuid4().hex[:6]
    out: dict[str, float] = {}
    for name, make in (("shop", shop_copy), ("hello", None)):
        stack = f"bu{tag}{name}"
        work = Path(tempfile.mkdtemp(prefix=f"rfbu{tag}-", dir="/var/tmp"))
        srv = Server(work / "data", POOL)
        port, applied, problems = free_port(), False, []
        try:
            srv.start()
            file = (make(work, stack, port) / "stack.yaml" if make
                    else hello_copy(work, stack, port))
            applied, since = True, time.time()
            first, converged = bring_up(srv, file, port)
            timelines[name] = timeline(srv, stack, since)
            out[f"{name} first"], out[f"{name} converged"] = first, converged
            print(f"   run {i + 1}: {name}: first answer {first:.1f} s, converged "
                  f"{converged:.1f} s", flush=True)
        finally:
            problems = cleanup(srv, stack, work, applied)
        left = leftovers(stack, work)
        if problems or left:
            raise RuntimeError(f"{name}: cleanup problems {problems}, left behind {left}")
    return out


def run(runs: int) -> Result:
    cached = host_cache_has_image(ROOT / "examples" / "shop" / "stack.yaml")
    r = Result("bringup", "Stack bring-up", f"""\
`rackfire apply -f FILE -y` on a server started for the run with an empty data dir, timed
from the CLI call to the first answer on the stack's published port (polled every 50 ms)
and to the CLI's return (every instance running and healthy). **shop**: a copy of
`examples/shop` (lb, app x2, mem, db; the app's release layer is built from its source,
PostgreSQL runs initdb on its new data disk); the first answer is a page served through
lb → app → mem + db. Its image comes from the host's debootstrap cache
({'warm' if cached else 'cold: the first run ran debootstrap'}); the rest is built. **hello
x{WEB}**: `examples/hello` with {WEB} web instances (python3 http.server, a health check
every 2 s, behind the published port; no cpu reservation and 64M of memory each, where
the example asks 0.5 cores and 128M: 50 x 0.5 cores do not fit on 2 cores, and rackfire
never overcommits) and the poller.""")
    samples: dict[str, list[float]] = {}
    timelines: dict[str, str] = {}
    for i in range(runs):
        for k, v in one_run(i, timelines).items():
            samples.setdefault(k, []).append(v)
    r.add("shop: to the first answer", "rackfire", samples["shop first"], "s")
    r.add("shop: to converged", "rackfire", samples["shop converged"], "s")
    r.add(f"hello x{WEB}: to the first answer", "rackfire", samples["hello first"], "s")
    r.add(f"hello x{WEB}: to converged", "rackfire", samples["hello converged"], "s")
    for name, line in timelines.items():
        r.notes.append(f"{name}, last run, from the server's actions and releases: {line}.")
    r.notes.append("Peers: a like-for-like bring-up needs an orchestrator over the engines. "
                   "Nomad and Kamal are not packaged for Debian 12 and cannot be fetched "
                   "here; Debian's docker-compose 1.29 is, but it would need the shop's "
                   "image built as a Docker image with its own Dockerfiles, which this bench "
                   "does not have: no peer figure. The instance start measurement compares "
                   "the engines themselves.")
    return r
