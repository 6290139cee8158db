"""Failover: from a host's death to its instances' replacements serving on their published
ports, for a stateless role and for a singleton, with the detection part and the restart
part apart.

A fresh test bed of 3 simulated hosts (a netns each on an underlay bridge, a real agent in
each with a heartbeat every 0.5 s, label rack=r1..r3) and a server with `--no-local-host`
and its default liveness (lease 3 s; fence after the lease + 1 s; 1 s for the watchdog's
kill). One stack: `web` x3 (`placement: {spread: host}`) and `solo` (`ha: singleton`),
both a python http.server that answers `<hostname> <incarnation>` (`web-1 2`), with an HTTP
health check every 300 ms and a published port (web 8080, solo 8081: one HAProxy per stack
on each host, in front of every ready instance on any host: the routing mesh), and a floating
address (`vip:`, the underlay's .100) that one host holds. Per run:

- the host that holds `solo/0` (every other run: the one that holds the VIP, when that is
  another) dies as the chaos suite kills one: its underlay link down,
  its agent SIGKILLed, its watchdog stopped, its runc containers SIGKILLed (at once, in
  that order; the clock starts before the link goes);
- *detection*: until the server's `host/<name>` event `... -> lost` (its time, on this
  machine's clock; the detector looks every 0.25 s);
- *serving*: until the lost instance's replacement answers HTTP 200 on its published port
  on its new host: each surviving host's underlay IP:port is probed from the root netns
  every 50 ms (a new connection each: HAProxy balances connections), and only an answer
  naming that instance with a new incarnation counts. When the dead host held more than
  one `web` instance, the last of them to serve is the run's figure;
- *on the VIP*: the same answer, from the VIP's address (whichever host holds it now; the
  host that died held it in some runs, said per run);
- *restart* = serving - detection; *placed again*: until the controller's `failover`
  event for the instance (the placement on a surviving host; for the singleton, after the
  fence);
- then the host comes back (link up, its agent started again) and the run ends when each
  instance again has exactly one container on the bed, running, and all serve.

    sudo .venv/bin/python -m bench failover --runs 10   # as root
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.report import Result, Row, Target, render_result
from bench.rfserver import BenchServer

ROOT = Path("/tmp/bench-failover")
DATA = ROOT / "data"  # `testbed down` removes it whole: the state file stays outside
STATE = ROOT / "bed.json"
LOGS = ROOT / "logs"  # kept only when a run failed
PORT = 7597
POOL = "10.94.0.0/16"
HOSTS = 3
INTERVAL = 0.5  # agents' heartbeat, as the bed starts them
STACK = "fo"
WEB_PORT, SOLO_PORT = 8080, 8081
PROBE = 0.05  # seconds between two probe rounds
TIMEOUT = 90.0  # a failover or a revival that takes longer is a failure, reported
STATELESS_TARGET, SINGLETON_TARGET = 5.0, 15.0

WEB = """\
import http.server, os, socket
BODY = f"{socket.gethostname()} {os.environ.get('RACKFIRE_INCARNATION', '0')}".encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(BODY)))
        self.end_headers(); self.wfile.write(BODY)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", 8000), H).serve_forever()
"""


def stack_yaml(vip: str) -> str:
    script = "\n".join("        " + line for line in WEB.splitlines())
    role = f"""\
    image: base
    command: [python3, /srv/web.py]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
    files:
      /srv/web.py: |
{script}
    health: {{http: "http://127.0.0.1:8000/", interval: 300ms}}"""
    return f"""\
stack: {STACK}
vip: {vip}
images: {{base: {{from: host}}}}
roles:
  web:
    count: 3
    placement: {{spread: host}}
    ports: ["{WEB_PORT}:8000"]
{role}
  solo:
    ha: singleton
    ports: ["{SOLO_PORT}:8000"]
{role}
"""


def probe(ip: str, port: int) -> tuple[str, int] | None:
    """(hostname, incarnation) of whoever answers 200 on ip:port, on a new connection."""
    conn = http.client.HTTPConnection(ip, port, timeout=0.5)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read().decode(errors="replace").split()
        if r.status != 200 or len(body) != 2:
            return None
        return body[0], int(body[1])
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def answering(ip: str, port: int, tries: int) -> set[tuple[str, int]]:
    """Who answers on ip:port over `tries` connections (round robin: each a backend)."""
    seen = set()
    for _ in range(tries):
        got = probe(ip, port)
        if got is None:
            break  # nothing bound, or no backend: the next round tries again
        seen.add(got)
    return seen


class Api:
    def __init__(self) -> None:
        token = (DATA / "token").read_text().strip()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30,
                                 trust_env=False,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, route: str, **params: str) -> Any:
        r = self.http.get(route, params=params)
        r.raise_for_status()
        return r.json()

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.get("/v1/hosts")}

    def instances(self) -> dict[str, dict[str, Any]]:
        return {f"{r['role']}/{r['index']}": r for r in self.get("/v1/instances", stack=STACK)}

    def events_since(self, t0: float) -> list[dict[str, Any]]:
        return [e for e in self.get("/v1/events", limit="500") if e["time"] >= t0]


def first(check: Callable[[], Any], t0: float, deadline: float) -> tuple[float, Any] | None:
    """(seconds since t0, what it returned) when `check` first returns something true,
    tried every PROBE seconds until `deadline`; None if it never did."""
    while time.time() < deadline:
        got = check()
        if got:
            return time.time() - t0, got
        time.sleep(PROBE)
    return None


def wait(fn: Callable[[], Any], timeout: float, what: str,
         explain: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}" + explain())


class Bench:
    """The bed, its server and agents, kept in a state file `testbed down` reads."""

    def __init__(self) -> None:
        from rackfire.testbed.bed import Bed

        self.bed = Bed(HOSTS)
        self.server = BenchServer(DATA, POOL, port=PORT,
                                  args=("--listen", "0.0.0.0", "--no-local-host"))
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self.api: Api | None = None

    def agent_dir(self, host: str) -> Path:
        return DATA / f"agent-{host}"

    @property
    def vip(self) -> str:
        assert self.bed.subnet is not None
        return str(self.bed.subnet.network_address + 100)

    def vip_holders(self) -> list[str]:
        return [h.name for h in self.bed.hosts if f" {self.vip}/32 " in self.bed.run_in(
            h, ["ip", "-4", "-o", "addr"]).stdout]

    def save(self) -> None:
        state = {"bed": self.bed.id, "n": HOSTS, "subnet": str(self.bed.subnet),
                 "hosts": [h.name for h in self.bed.hosts],
                 "server": self.server.proc.pid if self.server.proc else 0,
                 "agents": [p.pid for p in self.agents.values()],
                 "data_dir": str(DATA), "port": PORT}
        STATE.write_text(json.dumps(state))

    def up(self) -> Api:
        self.bed.create()
        self.save()
        self.server.start()
        self.save()
        out = self.server.cli("token", "create", "--uses", str(HOSTS))
        if out.returncode != 0:
            raise RuntimeError(f"token create: {out.stderr}")
        self.token = out.stdout.split()[0]
        for h in self.bed.hosts:
            self.start_agent(h.name)
        self.api = api = Api()
        wait(lambda: sum(1 for h in api.hosts().values() if h["state"] == "ready"
                         and h["address"]) == HOSTS, 60, "three agents to join")
        return api

    def start_agent(self, host: str) -> None:
        rack = {h.name: f"r{n}" for n, h in enumerate(self.bed.hosts, 1)}[host]
        d = self.agent_dir(host)
        d.mkdir(parents=True, exist_ok=True)
        self.agents[host] = self.bed.start_agent(
            host, f"http://{self.bed.controller_ip}:{PORT}", self.token, str(d),
            {"rack": rack}, interval=INTERVAL, log=str(d / "agent.log"))
        self.save()

    def kill_host(self, host: str) -> None:
        """As the chaos suite's kill_host: link, agent, watchdog, HAProxy, containers."""
        self.bed.cut(host)
        proc = self.agents.pop(host)
        proc.kill()
        proc.wait(10)
        self.save()
        self.bed.kill_all(host)
        root = self.bed.runc_root(host)
        ids = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True,
                             text=True, timeout=60, check=False).stdout.split()
        for cid in ids:
            subprocess.run(["runc", "--root", root, "kill", cid, "KILL"],
                           capture_output=True, timeout=60, check=False)

    def copies(self) -> dict[str, list[tuple[str, str]]]:
        """Instance id -> (host, runc status) of every container of it on the bed."""
        from rackfire.runtime import runcstate

        out: dict[str, list[tuple[str, str]]] = {}
        for h in self.bed.hosts:
            for cid, c in runcstate.containers(Path(self.bed.runc_root(h.name))).items():
                out.setdefault(cid, []).append((h.name, c.status))
        return out

    def keep_logs(self) -> Path:
        LOGS.mkdir(parents=True, exist_ok=True)
        for src in [DATA / "server.log", *DATA.glob("agent-*/agent.log"),
                    *DATA.glob("agent-*/watchdog/log")]:
            if src.exists():
                name = "_".join(src.relative_to(DATA).parts)
                shutil.copyfile(src, LOGS / name)
        return LOGS

    def down(self) -> None:
        from rackfire.testbed import cluster

        try:
            cluster.down(str(STATE))
        except SystemExit as e:  # it names what it could not remove, and keeps the state
            raise RuntimeError(f"testbed down failed ({e.code}): see above; run "
                               f"`python -m rackfire.testbed down --state {STATE}` "
                               "again") from None
        finally:
            for p in self.agents.values():  # reaped: `down` ended them by pid
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            self.server.stop()  # gone already; this reaps it
            self.bed.destroy()  # no-op but for reaping what it started


def web_on(rows: dict[str, dict[str, Any]], host: str) -> list[str]:
    return sorted(k for k, r in rows.items() if k.startswith("web/") and r["host"] == host)


def all_serve(b: Bench, api: Api) -> bool:
    """Every instance running (and healthy) per the server, and answering on its host's
    published port with the incarnation the server holds."""
    rows = api.instances()
    if len(rows) != 4 or not all(r["state"] == "running" and r["health"] == "healthy"
                                 for r in rows.values()):
        return False
    ip = {h.name: h.ip for h in b.bed.hosts}
    for k, r in rows.items():
        port = SOLO_PORT if k.startswith("solo") else WEB_PORT
        if (r["name"], r["incarnation"]) not in answering(ip[r["host"]], port, 4):
            return False
    return True


def one_copy_each(b: Bench) -> bool:
    found = b.copies()
    ids = [f"{STACK}.web.{i}" for i in range(3)] + [f"{STACK}.solo.0"]
    return all(len(found.get(i, [])) == 1 and found[i][0][1] == "running" for i in ids)


def explain(b: Bench, api: Api, t0: float) -> Callable[[], str]:
    def text() -> str:
        try:
            events = "\n    ".join(f"{e['time'] - t0:+.2f}s {e['target']} {e['action']} "
                                   f"{e['result']}: {e['reason']}"
                                   for e in api.events_since(t0 - 1))
            rows = "\n    ".join(f"{k}: {r['host']} {r['state']} {r['health']} "
                                 f"incarnation {r['incarnation']} {r['health_message']}"
                                 for k, r in sorted(api.instances().items()))
        except (httpx.HTTPError, OSError) as e:
            events, rows = f"(the server did not answer: {e})", ""
        return (f"\n  instances:\n    {rows}\n  containers: {b.copies()}"
                f"\n  events since:\n    {events}")
    return text


def one_run(b: Bench, api: Api, vip_holder: bool = False) -> dict[str, Any]:
    rows = api.instances()
    victim = rows["solo/0"]["host"]
    if vip_holder and (held := b.vip_holders()):
        victim = held[0]
    lost = ["solo/0"] * (rows["solo/0"]["host"] == victim) + web_on(rows, victim)
    old = {k: rows[k]["incarnation"] for k in lost}
    names = {k: rows[k]["name"] for k in lost}
    survivors = [h for h in b.bed.hosts if h.name != victim]
    held_vip = victim in b.vip_holders()
    t0 = time.time()
    b.kill_host(victim)
    killed = time.time() - t0
    deadline = t0 + TIMEOUT

    def new_copy(k: str) -> str | None:
        """The surviving host whose published port answers as k's replacement."""
        port = SOLO_PORT if k == "solo/0" else WEB_PORT
        return next((h.name for h in survivors if any(
            n == names[k] and inc != old[k] for n, inc in answering(h.ip, port, 4))), None)

    def on_vip(k: str) -> bool:
        port = SOLO_PORT if k == "solo/0" else WEB_PORT
        return any(n == names[k] and inc != old[k] for n, inc in answering(b.vip, port, 4))

    # Each watched on its own thread, so that a slow answer to one (the server's, busy
    # with the failover) does not delay the others' figures.
    with ThreadPoolExecutor(2 * len(lost) + 1) as pool:
        lost_job = pool.submit(first, lambda: api.hosts()[victim]["state"] == "lost", t0,
                               deadline)
        jobs = {k: pool.submit(first, partial(new_copy, k), t0, deadline) for k in lost}
        vip_jobs = {k: pool.submit(first, partial(on_vip, k), t0, deadline) for k in lost}
        back_job = pool.submit(first, lambda: bool(answering(b.vip, WEB_PORT, 1)), t0,
                               deadline) if held_vip else None
        served = {k: got for k, j in jobs.items() if (got := j.result()) is not None}
        via_vip = {k: got[0] for k, j in vip_jobs.items() if (got := j.result()) is not None}
        polled = lost_job.result()
        vip_back = back_job.result() if back_job is not None else None
    lost_seen = polled[0] if polled else None
    if len(served) < len(lost) or len(via_vip) < len(lost):
        raise RuntimeError(f"after killing {victim}: "
                           + ", ".join(k for k in lost if k not in served or k not in via_vip)
                           + f" not serving on a surviving host and the VIP within "
                           f"{TIMEOUT:.0f} s" + explain(b, api, t0)())
    events = api.events_since(t0)
    detection = next((e["time"] - t0 for e in events if e["target"] == f"host/{victim}"
                      and e["action"] == "state" and e["result"] == "lost"), lost_seen)
    if detection is None:
        raise RuntimeError(f"{victim} never reported lost" + explain(b, api, t0)())
    placed = {k: next((e["time"] - t0 for e in events
                       if e["target"] == f"{STACK}/{k}" and e["action"] == "failover"
                       and e["result"] == "ok"), None) for k in lost}
    after = api.instances()
    for k in lost:  # the server agrees with what answered
        if after[k]["host"] == victim or after[k]["incarnation"] <= old[k]:
            raise RuntimeError(f"{k} answers on {served[k][1]} but the server has it on "
                               f"{after[k]['host']} (incarnation {after[k]['incarnation']})"
                               + explain(b, api, t0)())
    doubles = {i: c for i, c in b.copies().items() if sum(s == "running" for _, s in c) > 1}
    if doubles:
        raise RuntimeError(f"two running copies after the failover: {doubles}"
                           + explain(b, api, t0)())
    # The host comes back.
    b.bed.cut(victim, up=True)
    back = time.time()
    b.start_agent(victim)
    wait(lambda: api.hosts()[victim]["state"] == "ready", 60, f"{victim} ready again",
         explain(b, api, t0))
    wait(lambda: one_copy_each(b), TIMEOUT, "one copy of each instance", explain(b, api, t0))
    one_copy = time.time() - back
    wait(lambda: all_serve(b, api), TIMEOUT, "every instance serving", explain(b, api, t0))
    webs = [k for k in lost if k.startswith("web/")]
    run = {"victim": victim, "killed_in": killed, "detection": detection,
           "detection_polled": lost_seen, "placed": placed,
           "served": {k: v[0] for k, v in served.items()},
           "moved_to": {k: v[1] for k, v in served.items()}, "one_copy_after_back": one_copy,
           "web_lost": webs, "vip": via_vip, "held_vip": held_vip,
           "vip_back": vip_back[0] if vip_back else None}
    web = max((served[k][0] for k in webs), default=None)
    print(f"   run: {victim} died; lost after {detection:.2f} s; "
          + (f"{len(webs)} web serving after {web:.2f} s; " if web is not None
             else "no web on it; ")
          + (f"solo after {served['solo/0'][0]:.2f} s; " if "solo/0" in served else "")
          + f"on the VIP (held there: {held_vip}) "
          + ", ".join(f"{k} {t:.2f} s" for k, t in sorted(via_vip.items()))
          + f"; one copy each {one_copy:.1f} s after it came back", flush=True)
    return run


def run(runs: int) -> Result:
    if STATE.exists():
        raise RuntimeError(f"{STATE} exists: a bed of this bench is up; remove it with "
                           f"`python -m rackfire.testbed down --state {STATE}`")
    shutil.rmtree(LOGS, ignore_errors=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    b = Bench()
    results: list[dict[str, Any]] = []
    chain: dict[str, Any] = {}
    failed = True
    try:
        api = b.up()
        (ROOT / "stack.yaml").write_text(stack_yaml(b.vip))
        out = b.server.cli("apply", "-f", str(ROOT / "stack.yaml"), "-y", timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"apply: {out.stdout}\n{out.stderr}")
        wait(lambda: all_serve(b, api), 180, "the stack serving", explain(b, api, time.time()))
        chain = next((c for c in api.get("/v1/ha") if c["instance"] == f"{STACK}/solo/0"), {})
        for n in range(runs):
            results.append(one_run(b, api, vip_holder=n % 2 == 1))
        failed = False
    finally:
        if failed:
            with contextlib.suppress(OSError):
                print(f"   logs kept in {b.keep_logs()}", file=sys.stderr, flush=True)
        try:
            b.down()
        finally:
            left = _left(b)
        if left and failed:  # the run's own error is the one to see; this one beside it
            print("   the bench left: " + ", ".join(left), file=sys.stderr, flush=True)
        elif left:
            raise RuntimeError("the bench left: " + ", ".join(left))
        with contextlib.suppress(OSError):
            STATE.unlink(missing_ok=True)
            (ROOT / "stack.yaml").unlink(missing_ok=True)
            if not failed:
                ROOT.rmdir()
    return _result(results, chain)


def _left(b: Bench) -> list[str]:
    """What of this bench is still on the machine: the bed's links and netns, its runc
    roots and containers, HAProxy or rackfire processes of its data dir."""
    left = list(b.bed.leftovers())
    for h in b.bed.hosts:
        root = Path(b.bed.runc_root(h.name))
        if root.exists():
            left.append(f"runc root {root}")
    out = subprocess.run(["pgrep", "-a", "haproxy"], capture_output=True, text=True,
                         check=False).stdout
    left += [f"haproxy {line}" for line in out.splitlines() if str(DATA) in line]
    out = subprocess.run(["pgrep", "-af", "rackfire"], capture_output=True, text=True,
                         check=False).stdout
    left += [f"process {line}" for line in out.splitlines() if str(DATA) in line]
    if b.server.proc is not None and b.server.proc.poll() is None:
        left.append(f"server pid {b.server.proc.pid}")
    return left


def _rows(case: str, total: list[float], detection: list[float], placed: list[float],
          vip: list[float]) -> list[Row]:
    rows = [Row(case, "rackfire: serving (from the kill)", total, "s"),
            Row(case, "on the VIP (from the kill)", vip, "s"),
            Row(case, "detection: until lost", detection, "s", part=True),
            Row(case, "restart: serving - detection", [t - d for t, d in
                                                       zip(total, detection, strict=True)],
                "s", part=True)]
    if placed:
        rows.append(Row(case, "placed again (failover event, from the kill)", placed, "s",
                        part=True))
    return [r for r in rows if r.samples]


def _result(runs: list[dict[str, Any]], chain: dict[str, Any]) -> Result:
    what = (__doc__ or "\n\n").split("\n\n", 1)[1].split("\n\n    ")[0]
    r = Result("failover", "Failover: host death to the replacement serving", what)
    with_web = [x for x in runs if x["web_lost"]]
    web = [max(x["served"][k] for k in x["web_lost"]) for x in with_web]
    web_placed = [max(x["placed"][k] for k in x["web_lost"]) for x in with_web
                  if all(x["placed"][k] is not None for k in x["web_lost"])]
    with_solo = [x for x in runs if "solo/0" in x["served"]]
    solo = [x["served"]["solo/0"] for x in with_solo]
    solo_placed = [x["placed"]["solo/0"] for x in with_solo
                   if x["placed"]["solo/0"] is not None]
    web_vip = [max(x["vip"][k] for k in x["web_lost"]) for x in with_web]
    solo_vip = [x["vip"]["solo/0"] for x in with_solo]
    r.rows += _rows("stateless: web (3 replicas)", web, [x["detection"] for x in with_web],
                    web_placed, web_vip)
    r.rows += _rows("singleton: solo (ha: singleton)", solo,
                    [x["detection"] for x in with_solo], solo_placed, solo_vip)
    r.add("the VIP's holder died", "the VIP answering again (any web)",
          [x["vip_back"] for x in runs if x["vip_back"] is not None], "s")
    r.add("the host back: until one copy of each", "one container per instance",
          [x["one_copy_after_back"] for x in runs], "s", part=True)
    for what_, xs, bound in (("stateless replacement serving", web, STATELESS_TARGET),
                             ("singleton replacement serving", solo, SINGLETON_TARGET)):
        r.targets.append(Target(
            f"{what_} <= {bound:.0f} s after the host dies (every run: the max)",
            max(xs) <= bound if xs else None,
            f"median {statistics.median(xs):.2f} s, max {max(xs):.2f} s" if xs
            else "not measured"))
    xs = web_vip + solo_vip
    r.targets.append(Target(
        f"the same on the stack's VIP (<= {STATELESS_TARGET:.0f} s / "
        f"{SINGLETON_TARGET:.0f} s)", (max(web_vip, default=0) <= STATELESS_TARGET
                                        and max(solo_vip, default=0) <= SINGLETON_TARGET)
        if xs else None, f"web max {max(web_vip, default=0):.2f} s, solo max "
        f"{max(solo_vip, default=0):.2f} s; the dead host held the VIP in "
        f"{sum(x['held_vip'] for x in runs)} of {len(runs)} runs" if xs else "not measured"))
    lost_webs = [len(x["web_lost"]) for x in runs]
    settings = (f"lease {chain.get('lease', 3.0):g} s (the server's default), heartbeats "
                f"every {INTERVAL:g} s, fence after {chain.get('fence_after', '?')} s "
                f"without a renewed lease, {chain.get('grace', '?')} s for the watchdog's "
                "kill")
    r.notes = [
        f"Settings: {settings}; health checks every 300 ms. The server's own worst case "
        f"for solo/0 (`rackfire ha status`): {chain.get('worst_case', '?')} s to its "
        "replacement being started (its start not counted).",
        f"{len(runs)} runs; the host that died held {', '.join(map(str, lost_webs))} web "
        "instance(s) (a replacement stays where it went, so which host holds what "
        "changes from run to run; with 2 lost the later one is the run's figure, with 0 "
        "the run has no stateless figure). Who went where: "
        + "; ".join(f"{x['victim']}: " + ", ".join(f"{k} to {h}" for k, h in
                                                   sorted(x["moved_to"].items()))
                    for x in runs) + ".",
        "Detection is the server's `host/<name> ... -> lost` event time; polled "
        "`/v1/hosts` agreed within "
        + (f"{max(abs(x['detection_polled'] - x['detection']) for x in runs):.2f} s."
           if runs and all(x["detection_polled"] is not None for x in runs) else "?"),
        "Serving is measured on each surviving host's published port (the routing mesh: "
        "any host's port reaches an instance on any host) and on the VIP, from the root "
        "netns (a client on the underlay).",
        "This machine: 2 cores, shared with other work while it ran (see the load "
        "average below).",
    ]
    return r


if __name__ == "__main__":  # `python -m bench failover` keeps results; this only prints
    print("\n".join(render_result(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
