"""Control-plane calls at rest: what the controller asks of its hosts when nothing changes,
and what one reconcile of a stack asks of them.

A test bed of 3 simulated hosts (`rackfire.testbed up`: a netns each, a real agent in each,
a server with `--no-local-host`, so every call reaches an agent over RPC and is counted by
it; the server's own host, called in-process, holds nothing). 10 stacks of one `web` role
(a python http.server with an HTTP health check at the default interval, 2 instances in
even-numbered stacks, 1 in odd: 15 instances), all converged and healthy, then per run:

- *at rest*: each agent's call counts (`GET /agent/v1/_calls`) before and after 60 s, summed
  over the 3 agents, per call name, as calls per second;
- *per apply*: 20 no-change applies of one 2-instance stack (`POST /v1/apply` of the same
  file: the request's checks, then one reconcile), 2 s apart, so that each reconcile ends
  before the next apply; the calls over those 40 s minus the at-rest rate over them, / 20.
  Calls that name a stack (observe, set_hosts, publish, busy_ports) are taken from the
  agents' count for that stack alone, which the rest of the control plane hardly touches;
  the others from the totals;
- *per plan*: the same with 20 `POST /v1/plan` of that file: the request's own share of an
  apply, which is the same code up to the store write;
- *per reconcile*: per apply minus per plan.

No API call is made during a window but those (`GET /v1/stacks` observes every stack). The
server's and agents' rackfire is whichever `import rackfire` finds: run with
`PYTHONPATH=<tree>/src` to measure another tree (it is passed through to them; the notes say
which tree each one imported).

    sudo .venv/bin/python -m bench agent_calls --runs 3
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.report import Result, render_result

ROOT = Path("/tmp/bench-calls")
DATA = ROOT / "data"  # `testbed down` removes it whole: the state file stays outside
STATE = ROOT / "bed.json"
PORT = 7595
POOL = "10.86.0.0/16"
HOSTS = 3
STACKS = 10
REST = 60.0  # seconds of each at-rest window
TRIGGERS = 20  # applies (and plans) per run
SPACING = 2.0  # seconds between two of them: one reconcile takes well under that here
TRIGGERED = "calls0"  # 2 instances: its network, names and ports are on 2 hosts
CALLS_PATH = "/agent/v1/_calls"

WEB = """\
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2")
        self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", 8000), H).serve_forever()
"""


def stack_yaml(name: str, count: int) -> str:
    script = "\n".join("        " + line for line in WEB.splitlines())
    return f"""\
stack: {name}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: {count}
    command: [python3, /srv/web.py]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 2s
    files:
      /srv/web.py: |
{script}
    health: {{http: "http://127.0.0.1:8000/"}}
"""


class Api:
    """The server's HTTP API, as the CLI calls it (without the CLI's waiting, which polls)."""

    def __init__(self) -> None:
        token = (DATA / "token").read_text().strip()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=120,
                                 trust_env=False,
                                 headers={"Authorization": f"Bearer {token}"})

    def post_stack(self, route: str, name: str, text: str) -> dict[str, Any]:
        r = self.http.post(route, json={"yaml": text, "filename": f"{name}.yaml",
                                        "base_dir": None, "expected_generation": None,
                                        "sources": {}})
        if r.status_code != 200:
            raise RuntimeError(f"{route} {name}: HTTP {r.status_code}: {r.text[:500]}")
        return dict(r.json())

    def get(self, route: str, **params: str) -> Any:
        r = self.http.get(route, params=params)
        r.raise_for_status()
        return r.json()


@dataclass(frozen=True)
class Counts:
    """Calls by name over every agent (`calls`), and of the calls that name a stack, those
    of each stack (`by_stack`); `at` is when (epoch seconds), or how long a window was."""

    at: float
    calls: dict[str, int]
    by_stack: dict[str, dict[str, int]]

    def __sub__(self, before: Counts) -> Counts:
        def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {n: a.get(n, 0) - b.get(n, 0) for n in sorted(set(a) | set(b))}

        stacks = set(self.by_stack) | set(before.by_stack)
        return Counts(self.at - before.at, minus(self.calls, before.calls),
                      {s: minus(self.by_stack.get(s, {}), before.by_stack.get(s, {}))
                       for s in sorted(stacks)})

    def of(self, stack: str) -> dict[str, int]:
        """Each call as `stack` alone made it, where the agent can tell (the call names the
        stack), else every call of that name."""
        scoped = {n for c in self.by_stack.values() for n in c}
        mine = self.by_stack.get(stack, {})
        return {n: mine.get(n, 0) if n in scoped else c for n, c in self.calls.items()}


class Agents:
    """The bed's agents' call counts, summed."""

    def __init__(self, hosts: list[dict[str, Any]]) -> None:
        self.clients = []
        for h in hosts:
            key = json.loads((DATA / f"agent-{h['name']}" / "credential.json").read_text())
            self.clients.append(httpx.Client(
                base_url=f"http://{h['address']}", timeout=10, trust_env=False,
                headers={"Authorization": f"Bearer {key['agent_key']}"}))

    def snapshot(self) -> Counts:
        calls: dict[str, int] = {}
        by_stack: dict[str, dict[str, int]] = {}
        stamps = []
        for c in self.clients:
            r = c.get(CALLS_PATH)
            r.raise_for_status()
            body = r.json()
            stamps.append(float(body["now"]))
            for name, n in body["calls"].items():
                calls[name] = calls.get(name, 0) + int(n)
            for stack, counts in body.get("by_stack", {}).items():
                mine = by_stack.setdefault(stack, {})
                for name, n in counts.items():
                    mine[name] = mine.get(name, 0) + int(n)
        return Counts(sum(stamps) / len(stamps), calls, by_stack)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _per_trigger(window: Counts, rest: Counts) -> tuple[dict[str, float], float]:
    """The calls a window of triggers made over the at-rest rate, per trigger: of the
    triggered stack (`Counts.of`); and observe calls of every stack, for comparison."""
    ours, base = window.of(TRIGGERED), rest.of(TRIGGERED)
    scale = window.at / rest.at
    extra = {n: (ours.get(n, 0) - base.get(n, 0) * scale) / TRIGGERS
             for n in sorted(set(ours) | set(base))}
    observe_all = (window.calls.get("observe", 0)
                   - rest.calls.get("observe", 0) * scale) / TRIGGERS
    return extra, observe_all


def _trigger(agents: Agents, api: Api, route: str, text: str) -> Counts:
    """TRIGGERS posts of the stack file to `route`, SPACING apart, in a window of exactly
    TRIGGERS x SPACING seconds: a multiple of the 10 s resync, so that every window holds
    as many resync passes as every other, whatever its phase."""
    before = agents.snapshot()
    t0 = time.monotonic()
    for i in range(TRIGGERS):
        time.sleep(max(0.0, t0 + i * SPACING - time.monotonic()))
        api.post_stack(route, TRIGGERED, text)
    time.sleep(max(0.0, t0 + TRIGGERS * SPACING - time.monotonic()))
    return agents.snapshot() - before


def _wait_converged(api: Api, names: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stacks = {s["name"]: s for s in api.get("/v1/stacks")}
        waiting = [n for n in names if not (n in stacks and stacks[n]["converged"]
                                             and stacks[n]["status"] == "converged"
                                             and not stacks[n]["unready"])]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not converged after {timeout:.0f} s: "
                               + ", ".join(f"{n} ({stacks.get(n, {}).get('message', '?')})"
                                           for n in waiting))
        time.sleep(1.0)


def _imports_from(pid: int) -> str:
    """Where process `pid` (a python) finds rackfire: the same interpreter, environment
    and working dir asked to import it."""
    try:
        env = dict(kv.split("=", 1) for kv in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        exe, cwd = os.readlink(f"/proc/{pid}/exe"), os.readlink(f"/proc/{pid}/cwd")
    except OSError as e:
        return f"unknown ({e})"
    out = subprocess.run([exe, "-c", "import rackfire; print(rackfire.__file__)"], env=env,
                         cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def _tree() -> str:
    import rackfire

    src = Path(rackfire.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                           capture_output=True, text=True, check=False).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return (f"{src} at `{head[:60]}`" + (f" with {len(changed)} changed file(s): "
                                         + ", ".join(changed[:8]) if changed else ""))


def _ours_left(bed: str) -> list[str]:
    """What of this bed is still on the machine: links, namespaces, mounts, runc roots,
    cgroups of its instances."""
    left = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=False).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
             if bed in line]
    with contextlib.suppress(FileNotFoundError):
        left += [f"netns {n}" for n in os.listdir("/run/netns")
                 if bed in n or n.startswith("rf-calls")]
    left += [f"mount {line.split()[4]}" for line in
             Path("/proc/self/mountinfo").read_text().splitlines()
             if line.split()[4].startswith(str(ROOT))]
    left += [f"runc root {p}" for p in Path("/run/rackfire").glob(f"runc-{bed}-*")]
    left += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob("*/rackfire/calls*")]
    return left


def run(runs: int) -> Result:
    from rackfire.testbed import cluster

    if STATE.exists():
        raise RuntimeError(f"{STATE} exists: a bed of this bench is up; remove it with "
                           f"`python -m rackfire.testbed down --state {STATE}`")
    ROOT.mkdir(parents=True, exist_ok=True)
    texts = {f"calls{i}": stack_yaml(f"calls{i}", 2 if i % 2 == 0 else 1)
             for i in range(STACKS)}
    windows: list[tuple[Counts, Counts, Counts]] = []  # at rest, applies, plans
    notes: list[str] = [f"rackfire measured: {_tree()}."]
    bed_id = ""
    try:
        cluster.up(HOSTS, data_dir=str(DATA), port=PORT, pool=POOL, state_path=str(STATE))
        state = json.loads(STATE.read_text())
        bed_id = state["bed"]
        imported = {_imports_from(pid) for pid in [state["server"], *state["agents"]]}
        notes.append("The server and the 3 agents import rackfire from "
                     + ", ".join(f"`{p}`" for p in sorted(imported)) + ".")
        api = Api()
        for name, text in texts.items():
            api.post_stack("/v1/apply", name, text)
        _wait_converged(api, list(texts))
        hosts = [h for h in api.get("/v1/hosts") if not h["local"]]
        placed = api.get("/v1/placements")
        per_stack = {n: len({h for k, h in placed.items() if k.split("/")[0] == n})
                     for n in texts}
        time.sleep(10)  # what convergence enqueued (the settle's 1 s re-checks) is done
        agents = Agents(hosts)
        try:
            for i in range(runs):
                before = agents.snapshot()
                time.sleep(REST)
                rest = agents.snapshot() - before
                applies = _trigger(agents, api, "/v1/apply", texts[TRIGGERED])
                plans = _trigger(agents, api, "/v1/plan", texts[TRIGGERED])
                windows.append((rest, applies, plans))
                a, p = _per_trigger(applies, rest)[0], _per_trigger(plans, rest)[0]
                print(f"   run {i + 1}: at rest {sum(rest.calls.values()) / rest.at:.1f} "
                      f"calls/s; observe per apply {a.get('observe', 0):.2f}, per plan "
                      f"{p.get('observe', 0):.2f}", flush=True)
        finally:
            agents.close()
        notes.append(f"Placements: {sum(per_stack.values())} stack-host pairs for "
                     f"{STACKS} stacks ({TRIGGERED}, the one applied again, on "
                     f"{per_stack[TRIGGERED]} hosts).")
    finally:
        _down(str(STATE))
    left = _ours_left(bed_id) if bed_id else []
    if left:
        raise RuntimeError("the bed left: " + ", ".join(left))
    with contextlib.suppress(OSError):
        ROOT.rmdir()  # empty once the bed is down
    return _result(windows, per_stack, notes)


def _down(state: str) -> None:
    from rackfire.testbed import cluster

    try:
        cluster.down(state)
    except SystemExit as e:  # it names what it could not remove, and keeps the state file
        raise RuntimeError(f"testbed down failed ({e.code}): see above; run "
                           f"`python -m rackfire.testbed down --state {state}` again") from None


REST_CASE = "at rest: calls/s, 3 hosts, 10 stacks"


def _result(windows: list[tuple[Counts, Counts, Counts]], per_stack: dict[str, int],
            notes: list[str]) -> Result:
    what = (__doc__ or "\n\n").split("\n\n", 1)[1].split("\n\n    ")[0]
    r = Result("agent_calls", "Control-plane calls at rest", what)
    rests = [w[0] for w in windows]
    for n in sorted({n for w in rests for n, c in w.calls.items() if c > 0}):
        r.add(REST_CASE, n, [w.calls.get(n, 0) / w.at for w in rests], "calls/s")
    r.add(REST_CASE, "all calls", [sum(w.calls.values()) / w.at for w in rests], "calls/s")
    r.add(REST_CASE, f"observe of one stack ({TRIGGERED})",
          [w.by_stack.get(TRIGGERED, {}).get("observe", 0) / w.at for w in rests], "calls/s")
    applies = [_per_trigger(a, rest) for rest, a, _ in windows]
    plans = [_per_trigger(p, rest) for rest, _, p in windows]
    # What is within noise of 0 is left out: a call that names no stack is counted for all
    # of them, so its share is the difference of two large counts.
    for case, series in (("per no-change apply: calls", applies), ("per plan: calls", plans)):
        for n in sorted({n for w, _ in series for n in w}):
            samples = [w.get(n, 0.0) for w, _ in series]
            if abs(statistics.median(samples)) >= 0.5:
                r.add(case, n, samples, "calls")
        r.add(case, "observe, from every stack's count", [o for _, o in series], "calls")
    per_reconcile = [{n: a.get(n, 0.0) - p.get(n, 0.0) for n in set(a) | set(p)}
                     for (a, _), (p, _) in zip(applies, plans, strict=True)]
    case = "per reconcile (apply - plan): calls"
    r.add(case, "observe", [w.get("observe", 0.0) for w in per_reconcile], "calls")
    r.add(case, "all calls", [sum(v for v in w.values()) for w in per_reconcile], "calls")
    # set_hosts: once per reconcile to each host of the stack (the names are published
    # again), and by nothing else at rest: reconciles counted without the server's help.
    h = per_stack[TRIGGERED]
    case = "reconciles, counted by set_hosts"
    r.add(case, f"per apply (/{h} hosts of {TRIGGERED})",
          [w.get("set_hosts", 0.0) / h for w, _ in applies], "reconciles")
    r.add(case, "at rest, every stack", [w.calls.get("set_hosts", 0) / w.at * STACKS
                                         / sum(per_stack.values()) for w in rests],
          "reconciles/s")
    r.notes = [
        *notes,
        f"Windows: {REST:.0f} s at rest; {TRIGGERS} applies, then {TRIGGERS} plans, "
        f"{SPACING:.0f} s apart ({TRIGGERS * SPACING:.0f} s each, a multiple of the 10 s "
        "resync), each minus the at-rest rate of the same run. Calls that name a stack "
        f"(observe, set_hosts, publish, busy_ports) are counted for {TRIGGERED} alone; "
        "the others (ensure_network, probe) for every stack, and so noisier.",
    ]
    return r


if __name__ == "__main__":  # one run, printed; `python -m bench agent_calls` keeps results
    print("\n".join(render_result(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
