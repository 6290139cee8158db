#!/usr/bin/env python3
"""Zero-downtime deploys of the shop stack (examples/shop), timed under load.

    .venv/bin/python -m bench.deploy [--pushes 3] [--baseline 10] [--json] [--out FILE]

Needs root, runc and debootstrap (the shop's image is built once and cached host-wide in
/var/cache/rackfire; a cold build takes minutes and needs the network). It starts its own
`rackfire server` (its own data dir under /var/tmp, a free API port, subnet pool
10.87.0.0/16) and brings up a copy of examples/shop with its own stack name (`dep<6 hex>`)
and a free host port, so that a running demo or test is left be. Then, with
tests/integration/loadgen.py sending GET / through the published port from a process of its
own (4 workers, a fresh connection per request), it times each phase:

    baseline        nothing changes (--baseline seconds): what the stack serves at rest
    push v2..vN+1   `push STACK/app DIR`, a new VERSION file each time, default update policy
    push broken     a BROKEN file: the health check says 500, the release is rolled back by
                    itself and the CLI exits 1 (expected)
    rollback        `rollback STACK/app`: back to the release live before
    scale 6, 2      `scale STACK/app 6`, then `scale STACK/app 2`

For each: the CLI command's wall time (from the call until it returns: converged), and what
the load generator saw from 1 s before the command to 1 s after it returned: requests,
failed requests (any non-2xx, refused, reset or timed-out request), requests/s (answered
ones over that window), which releases and instances answered. The lb's HAProxy reloads
are counted from `rackfire events STACK --json` (action "reload" on the lb); `ps --json`
says whether the lb instance was ever restarted (restarts, pid).

It prints an aligned table (or, with --json, the whole result as JSON on stdout; progress
goes to stderr), and with --out also writes the JSON to FILE. At the end, even on failure,
it destroys the stack, stops its server by pid and removes its temp dir; what is left, if
anything, is listed, and the exit status is 1 if anything was left or went unexpectedly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.rfserver import BenchServer, free_port
from rackfire.agent.proxy import Proxy
from rackfire.images.build import debootstrap_key
from rackfire.images.hostcache import HostCache
from rackfire.net import links, names
from rackfire.runtime.container import ContainerRuntime
from rackfire.runtime.layout import list_instance_dirs

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
LOADGEN = ROOT / "tests" / "integration" / "loadgen.py"
RUNC_ROOT = "/run/rackfire/runc"
POOL = "10.87.0.0/16"
CONCURRENCY = 4
LEAD_IN = 1.0  # seconds of load before each command starts ...
TRAIL = 1.0  # ... and after it returns
CLI_TIMEOUT = 900.0  # a cold debootstrap of the shop's image takes minutes
COLD_BUILD_S = 60.0  # an apply slower than this most likely ran debootstrap


# -- small helpers ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)



def shop_copy(work: Path, stack: str, port: int) -> Path:
    """examples/shop with its own stack name and host port (as tests/integration/test_shop.py
    makes it), so a running demo is left be."""
    dst = work / "shop"
    shutil.copytree(SHOP, dst, ignore=shutil.ignore_patterns("__pycache__", "VERSION",
                                                              "BROKEN"))
    text = (dst / "stack.yaml").read_text()
    text = re.sub(r"(?m)^stack: shop$", f"stack: {stack}", text)
    text = text.replace('"8080:80"', f'"{port}:80"')
    if f"stack: {stack}" not in text or f'"{port}:80"' not in text:
        raise RuntimeError("examples/shop/stack.yaml changed shape: cannot rename the copy")
    (dst / "stack.yaml").write_text(text)
    return dst


def host_cache_has_image(stack_file: Path) -> bool | None:
    """Whether the host-wide debootstrap cache already holds the stack's image (None if the
    stack has no debootstrap image)."""
    spec = yaml.safe_load(stack_file.read_text())
    for image in (spec.get("images") or {}).values():
        if isinstance(image, dict) and image.get("from") == "debootstrap":
            key = debootstrap_key(image.get("suite", "bookworm"), image.get("packages", []),
                                  image.get("mirror"))
            return HostCache("debootstrap").get(key) is not None
    return None


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in
                   Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    haproxy = run(["haproxy", "-v"]) if shutil.which("haproxy") else None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "debian": Path("/etc/debian_version").read_text().strip(),
        "python": platform.python_version(),
        "runc": run(["runc", "--version"]).stdout.splitlines()[0],
        "host_haproxy": haproxy.stdout.splitlines()[0] if haproxy and haproxy.stdout else None,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- the server -------------------------------------------------------------------------------


class Server(BenchServer):
    """rackfire's own server, with what this benchmark reads of it."""

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return super().cli(*args, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        proc = self.cli(*args, "--json", timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"rackfire {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return json.loads(proc.stdout)


def new_server(data_dir: Path) -> Server:
    return Server(data_dir, POOL)


# -- load and phases --------------------------------------------------------------------------


@contextlib.contextmanager
def load(url: str, out: Path) -> Iterator[dict[str, Any]]:
    """tests/integration/loadgen.py as a process of its own for the duration of the block
    (from LEAD_IN before to TRAIL after its body); its report fills the dict at the end."""
    proc = subprocess.Popen([sys.executable, str(LOADGEN), url, "--out", str(out),
                             "--concurrency", str(CONCURRENCY)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report: dict[str, Any] = {}
    try:
        time.sleep(LEAD_IN)
        if proc.poll() is not None:
            raise RuntimeError(f"loadgen exited {proc.returncode} at start")
        yield report
        time.sleep(TRAIL)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    report.update(json.loads(out.read_text()))


@dataclass
class Phase:
    name: str
    command: list[str]
    expected_exit: int = 0
    hold: float = 0.0  # no command: just load for this long (the baseline)
    seconds: float = 0.0
    exit_code: int | None = None
    started: float = 0.0  # time.time() when the command started
    finished: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    problems: list[str] = field(default_factory=list)
    lb_reloads: int = 0

    def to_json(self) -> dict[str, Any]:
        ld = self.load
        return {
            "phase": self.name, "command": self.command, "seconds": round(self.seconds, 2),
            "exit_code": self.exit_code, "expected_exit": self.expected_exit,
            "requests": ld.get("total"), "ok": ld.get("ok"), "failed": ld.get("failed"),
            "req_per_s": round(ld["ok"] / ld["duration"], 1) if ld.get("duration") else None,
            "load_window_s": ld.get("duration"), "failures": ld.get("failures", []),
            "releases_served": self.releases(), "instances_served": ld.get("instances", {}),
            "lb_reloads": self.lb_reloads, "started": self.started, "finished": self.finished,
            "problems": self.problems, "output": self.output,
        }

    def releases(self) -> list[dict[str, Any]]:
        """The releases that answered, in the order they first did, with their first and
        last answer relative to the command's start (negative: before it)."""
        rel = self.load.get("releases", {})
        return [{"release": name, "count": r["count"],
                 "first_s": round(r["first"] - self.started, 2),
                 "last_s": round(r["last"] - self.started, 2)}
                for name, r in sorted(rel.items(), key=lambda kv: kv[1]["first"])]


def run_phase(srv: Server, phase: Phase, url: str, work: Path) -> Phase:
    log(f"phase {phase.name}: rackfire {' '.join(phase.command)}")
    slug = re.sub(r"[^a-z0-9]+", "-", phase.name.lower()).strip("-")
    with load(url, work / f"load-{slug}.json") as report:
        phase.started = time.time()
        t = time.perf_counter()
        if phase.command:
            proc = srv.cli(*phase.command)
            phase.exit_code = proc.returncode
            phase.output = (proc.stdout + proc.stderr).strip()[-2000:]
        else:  # the baseline: load, no change
            time.sleep(phase.hold)
            phase.exit_code = 0
        phase.seconds = time.perf_counter() - t
        phase.finished = time.time()
    phase.load = report
    if phase.exit_code != phase.expected_exit:
        phase.problems.append(f"exit {phase.exit_code}, expected {phase.expected_exit}: "
                              f"{phase.output[-500:]}")
    if report.get("failed"):
        phase.problems.append(f"{report['failed']} failed requests: "
                              f"{report.get('failures', [])[:3]}")
    log(f"phase {phase.name}: {phase.seconds:.1f} s, exit {phase.exit_code}, "
        f"{report.get('total')} requests, {report.get('failed')} failed")
    return phase


# -- cleanup and leftovers --------------------------------------------------------------------


def mounts_under(prefix: str) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


def runc_ids() -> list[str]:
    proc = run(["runc", "--root", RUNC_ROOT, "list", "--format", "json"])
    return [c["id"] for c in (json.loads(proc.stdout or "null") or [])]


def leftovers(stack: str, work: Path) -> list[str]:
    """Anything on the host with the stack's name or under the work dir."""
    found = [f"netns {n}" for n in links.owned_netns() if n.startswith(f"rf-{stack}.")]
    found += [f"link {n}" for n in links.owned_links() if n == names.bridge_name(stack)]
    found += [f"container {c}" for c in runc_ids() if c.startswith(f"{stack}.")]
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        parent = ctrl / "rackfire"
        if parent.is_dir():
            found += [f"cgroup {ctrl.name}/rackfire/{p.name}" for p in parent.iterdir()
                      if p.is_dir() and p.name.startswith(f"{stack}.")]
    found += [f"mount {m}" for m in mounts_under(str(work) + "/")]
    found += [f"loop {line}" for line in run(["losetup", "-a"]).stdout.splitlines()
              if str(work) in line]
    found += [f"process {line.strip()}" for line in run(["ps", "-eo", "pid,args"]).stdout
              .splitlines() if str(work) in line]
    if work.exists():
        found.append(f"dir {work}")
    return sorted(set(found))


def cleanup(srv: Server, stack: str, work: Path, applied: bool) -> list[str]:
    """Destroy the stack through the server, stop the server by pid, remove the work dir; if
    the server could not destroy something, remove it with rackfire's own code."""
    problems: list[str] = []
    data = srv.data_dir
    if applied and srv.alive():
        log(f"destroying {stack}")
        proc = srv.cli("destroy", stack, "-y", timeout=300)
        if proc.returncode != 0:
            problems.append(f"destroy exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    srv.stop()
    # What the server did not get to: the host-side port proxy (detached HAProxy, by its
    # pidfile), the containers and their disks, the stack's bridge.
    with contextlib.suppress(Exception):
        Proxy(data / "stacks" / stack, stack).stop()
    instances = data / "instances"
    if instances.is_dir():
        rt = ContainerRuntime(instances, host="bench")
        for key, _ in list_instance_dirs(instances):
            try:
                rt.destroy(key)
            except Exception as e:  # record it, go on with the rest
                problems.append(f"destroying {key}: {e}")
    with contextlib.suppress(Exception):
        links.delete_bridge(stack)
    if mounts_under(str(work) + "/"):
        problems.append(f"mounts left under {work}; not removed")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return problems


# -- report -----------------------------------------------------------------------------------


def note(p: dict[str, Any]) -> str:
    """A word on what answered during the phase."""
    rel = p["releases_served"]
    if p["phase"].startswith(("push v", "rollback")) and len(rel) >= 2:
        old, new = rel[-2], rel[-1]
        return (f"{old['release'][:6]} until +{old['last_s']:.1f} s, "
                f"{new['release'][:6]} from +{new['first_s']:.1f} s")
    if p["phase"].startswith("scale"):
        return f"{len(p['instances_served'])} app instances answered"
    served = ", ".join(r["release"][:6] for r in rel)
    extra = " (rolled back)" if p["phase"] == "push broken" and p["exit_code"] == 1 else ""
    return f"exit {p['exit_code']}{extra}; served by {served or 'nothing'}"


def print_table(result: dict[str, Any]) -> None:
    m, b = result["machine"], result["bringup"]
    print(f"\nshop stack deploys under load ({CONCURRENCY} workers), {result['started']}")
    print(f"machine: {m['nproc']} cores ({m['cpu']}), {m['mem_total_mib']} MiB, "
          f"kernel {m['kernel']}, Debian {m['debian']}, load avg at start "
          f"{' '.join(m['loadavg_start'])}")
    hit = {True: "cache hit", False: "cache miss (debootstrap ran)", None: "no image"}
    print(f"bring-up: apply -f ... -y {b['seconds']:.1f} s, exit {b['exit_code']}; host "
          f"image cache: {hit[b['cache_entry_before']]} "
          f"({'consistent with' if b['timing_says_hit'] == b['cache_entry_before'] else 'NOT'}"
          f" the timing: {'under' if b['timing_says_hit'] else 'over'} {COLD_BUILD_S:.0f} s)")
    head = ("phase", "seconds", "requests", "failed", "req/s", "lb reloads", "what answered")
    rows = [(p["phase"], f"{p['seconds']:.1f}", str(p["requests"]), str(p["failed"]),
             f"{p['req_per_s']:.1f}" if p["req_per_s"] is not None else "-",
             str(p["lb_reloads"]), note(p)) for p in result["phases"]]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {1, 2, 3, 4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print()
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    lb = result["lb"]
    print(f"\nlb: {lb['reloads']} HAProxy reloads in all ({lb['reloads_failed']} failed), "
          f"restarts {lb['restarts']}, pid {lb['pid_after_apply']} -> {lb['pid_at_end']}, "
          f"{'never restarted' if lb['never_restarted'] else 'RESTARTED or replaced'}")
    if result["problems"]:
        print("problems:")
        for p in result["problems"]:
            print(f"  - {p}")
    print(f"leftovers: {', '.join(result['leftovers']) or 'none'}")


# -- main -------------------------------------------------------------------------------------


def benchmark(srv: Server, stack: str, shop: Path, url: str, work: Path, pushes: int,
              baseline: float, result: dict[str, Any]) -> None:
    stack_file = shop / "stack.yaml"
    cached = host_cache_has_image(stack_file)
    srv.start()
    log(f"server on {srv.url}, data dir {srv.data_dir}; applying {stack} (port {url})")
    t = time.perf_counter()
    proc = srv.cli("apply", "-f", str(stack_file), "-y")
    seconds = time.perf_counter() - t
    result["bringup"] = {"seconds": round(seconds, 2), "exit_code": proc.returncode,
                         "cache_entry_before": cached,
                         "timing_says_hit": seconds < COLD_BUILD_S,
                         "output": (proc.stdout + proc.stderr).strip()[-2000:]}
    result["applied"] = True
    log(f"apply: {seconds:.1f} s, exit {proc.returncode}")
    if proc.returncode != 0:
        raise RuntimeError(f"apply exited {proc.returncode}: {proc.stderr.strip()[-1000:]}")
    page = httpx.get(url, timeout=10)
    if page.status_code != 200:
        raise RuntimeError(f"GET {url}: {page.status_code} {page.text[:300]}")
    lb_before = next(r for r in srv.cli_json("ps", stack) if r["role"] == "lb")

    applied_at = time.time()
    phases = [Phase("baseline", [], hold=baseline)]
    last = shop / "app"
    for i in range(2, pushes + 2):
        d = work / f"v{i}"
        shutil.copytree(last, d)
        (d / "VERSION").write_text(f"v{i}\n")
        phases.append(Phase(f"push v{i}", ["push", f"{stack}/app", str(d)]))
        last = d
    broken = work / "broken"
    shutil.copytree(last, broken)
    (broken / "BROKEN").write_text("the health check says 500\n")
    phases.append(Phase("push broken", ["push", f"{stack}/app", str(broken)], expected_exit=1))
    phases.append(Phase("rollback", ["rollback", f"{stack}/app"]))
    phases.append(Phase("scale 2 -> 6", ["scale", f"{stack}/app", "6"]))
    phases.append(Phase("scale 6 -> 2", ["scale", f"{stack}/app", "2"]))

    done: list[Phase] = []
    try:
        for phase in phases:
            done.append(run_phase(srv, phase, url, work))
            if phase.name == "push broken" and "rolled back" not in phase.output:
                phase.problems.append("the CLI did not say the release was rolled back")
    finally:
        # Reloads of the lb, per phase (by time) and in all, from the events.
        events = srv.cli_json("events", stack, "-n", "10000")
        reloads = [e for e in events if e["action"] == "reload"
                   and e["target"].startswith(f"{stack}/lb/")]
        for p in done:
            p.lb_reloads = sum(1 for e in reloads if e["result"] == "ok"
                               and p.started - LEAD_IN <= e["time"] <= p.finished + TRAIL)
        # Anything else that happened to the lb after the bring-up: a restart, a replace,
        # an unhealthy check would all show here.
        lb_events = [e for e in events if e["target"].startswith(f"{stack}/lb")
                     and e["action"] != "reload" and e["time"] > applied_at]
        lb_now = [r for r in srv.cli_json("ps", stack) if r["role"] == "lb"]
        lb_end = lb_now[0] if len(lb_now) == 1 else {}
        result["lb"] = {
            "reloads": sum(1 for e in reloads if e["result"] == "ok"),
            "reloads_failed": sum(1 for e in reloads if e["result"] != "ok"),
            "reloads_during_phases": sum(p.lb_reloads for p in done),
            "restarts": lb_end.get("restarts"), "pid_after_apply": lb_before["pid"],
            "pid_at_end": lb_end.get("pid"), "instances_at_end": [r["name"] for r in lb_now],
            "other_events": lb_events,
            "never_restarted": (lb_end.get("restarts") == 0
                                and lb_end.get("pid") == lb_before["pid"]
                                and lb_end.get("state") == "running"),
        }
        result["phases"] = [p.to_json() for p in done]
        result["releases"] = srv.cli_json("releases", f"{stack}/app")
        for p in done:
            result["problems"] += [f"{p.name}: {x}" for x in p.problems]
        if not result["lb"]["never_restarted"]:
            result["problems"].append(f"lb restarted or replaced: {lb_end}, {lb_events}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Time zero-downtime deploys of the shop stack under load.")
    ap.add_argument("--pushes", type=int, default=3, help="good releases pushed (3)")
    ap.add_argument("--baseline", type=float, default=10.0,
                    help="seconds of load with no change, first (10)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("runc"):
        print("needs root and runc", file=sys.stderr)
        return 1
    if not 1 <= args.pushes <= 20 or not 1 <= args.baseline <= 300:
        print("--pushes must be 1..20 and --baseline 1..300", file=sys.stderr)
        return 1

    stack, port = f"dep{uuid.uuid4().hex[:6]}", free_port()
    work = Path(tempfile.mkdtemp(prefix=f"rf-{stack}-", dir="/var/tmp"))
    srv = new_server(work / "data")
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "deploy", "started": started.isoformat(timespec="seconds"),
        "config": {"stack": stack, "port": port, "pool": POOL, "pushes": args.pushes,
                   "baseline_s": args.baseline, "concurrency": CONCURRENCY,
                   "lead_in_s": LEAD_IN, "trail_s": TRAIL, "work": str(work)},
        "machine": machine(), "problems": [], "applied": False,
    }
    log(f"stack {stack}, work dir {work}")
    try:
        shop = shop_copy(work, stack, port)
        benchmark(srv, stack, shop, f"http://127.0.0.1:{port}/", work, args.pushes,
                  args.baseline, result)
    except Exception as e:  # reported, then cleaned up
        result["problems"].append(f"{type(e).__name__}: {e}")
        log(f"failed: {type(e).__name__}: {e}")
    finally:
        log("cleaning up")
        result["problems"] += cleanup(srv, stack, work, result["applied"])
        result["leftovers"] = leftovers(stack, work)
        result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    elif "bringup" in result and "lb" in result:
        print_table(result)
    else:
        print(f"problems: {result['problems']}\nleftovers: {result['leftovers']}")
    return 1 if result["problems"] or result["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
