"""Instance start: from the call to "running, with its IP on the stack network", one
instance and 50 at once, rackfire next to bare runc, LXC, podman and docker (bench/peers.py).

`run(runs)` makes one workspace (prefix `rfs<6 hex>`: /var/tmp/<prefix>, /run/<prefix>), a
busybox rootfs and its tarball, a rackfire server of its own (subnet pool 10.91.0.0/16) and
every peer that sets up (one that does not is skipped, with a note). Each run then takes
every subject once per case, in an order rotated from run to run so that the machine's noise
falls on all alike, removing what was started after each sample (untimed). Everything is
removed in `finally`, then checked for: anything left is a note and an error.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers
from bench.report import SELF, Result, ratio_target
from bench.rfserver import BenchServer
from rackfire.api.client import ApiError, Client
from rackfire.model.instance import InstanceKey
from rackfire.net import links, names
from rackfire.runtime.container import RUNC_ROOT, ContainerRuntime

POOL = "10.91.0.0/16"
POLL = 0.025  # seconds between two GET /v1/instances
WARM_POLL = 0.005  # a warm start is tens of ms: a 25 ms poll would add half of it on average
MANY = 50
TIMEOUT = 300.0
ONE, AT_ONCE, WARM = "one instance", f"{MANY} at once", "warm start"

STACK = """\
stack: {stack}
roles:
  box:
    image: bb
    count: {count}
    command: {command}
    resources: {{memory: 32M, disk: 64M}}
"""

WHAT = f"""\
From the first call to the moment every instance asked for runs and has its IP on its
network, as the tool itself reports it. All subjects start the same busybox rootfs (busybox-static
and its applet links, imported from one tarball where the tool imports images) with the command
`/bin/sleep 3600` and a 32 MiB memory limit. *{ONE}*: one start. *{AT_ONCE}*: rackfire gets one
`POST /v1/apply` of a stack whose one role has `count: {MANY}`; each peer gets {MANY} starts
released together on {MANY} threads, and the time runs until the last one is running with its
IP. *{WARM}*: rackfire scales a role at min 1 with one warm instance (made and stopped
beforehand) to 2; bare runc runs `runc start` of a container `runc create`d beforehand; the
other peers are not asked. rackfire's time ends when a `GET /v1/instances?stack=` (polled
every {POLL * 1000:.0f} ms, every {WARM_POLL * 1000:.0f} ms for the warm start) answers with
every instance `running` and an IP. Each run takes
every subject once per case, in an order rotated from run to run; what was started is removed
after each sample, untimed. How each subject was run is in the notes below."""


@dataclass(frozen=True)
class Timeline:
    """One rackfire sample, seconds from the apply call (server side from its actions)."""

    answered: float  # the apply call returned
    first_create: float  # first create action journalled (it starts as it is journalled)
    last_done: float  # last create action finished
    reported: float  # the poll that saw them all running
    create_p50: float  # one create action, start to finish (4 run at a time)


class Rackfire:
    """rackfire through its API: one stack per sample, destroyed after it."""

    name = SELF

    def __init__(self, ws: peers.Workspace) -> None:
        self.ws = ws
        self.server = BenchServer(ws.work / "rackfire", POOL)
        self.client: Client | None = None
        self.live: list[str] = []  # applied and not yet destroyed
        self.made: list[str] = []  # every stack applied, for the leftovers check
        self.timelines: dict[int, list[Timeline]] = {}  # by instance count
        self.polls: list[float] = []  # seconds per GET /v1/instances
        self.warm_parts: list[tuple[float, float, float]] = []  # answered, created, done

    @property
    def api(self) -> Client:
        assert self.client is not None, "setup() first"
        return self.client

    def setup(self) -> None:
        self.server.start()
        self.client = Client(self.server.url, data_dir=self.server.data_dir)
        # Built once, here; the stacks use it without declaring it, so apply finds it built
        # (a declared `from: tarball` would be uploaded by a client, which this is not).
        self.api.build_image(name="bb", source="tarball", path=str(self.ws.tarball))

    def start_one(self, i: int = 0) -> float:
        return self._start(1)

    def start_many(self, n: int) -> float:
        return self._start(n)

    def _start(self, count: int) -> float:
        stack = f"{self.ws.prefix}-{len(self.made) + 1}"
        self.made.append(stack)
        self.live.append(stack)
        text = STACK.format(stack=stack, count=count,
                            command='["/bin/sleep", "3600"]')
        wall0, t0 = time.time(), time.perf_counter()
        self.api.apply(text, "stack.yaml", None, None)
        answered = time.perf_counter() - t0
        while True:
            asked = time.perf_counter()
            rows = self.api.instances(stack)
            now = time.perf_counter()
            self.polls.append(now - asked)
            failed = [r for r in rows if r["state"] == "failed"]
            if failed:
                raise RuntimeError(f"rackfire {failed[0]['name']} failed: {failed[0]['failed']}")
            if sum(r["state"] == "running" and bool(r["ip"]) for r in rows) == count:
                break
            if now - t0 > TIMEOUT:
                raise RuntimeError(f"rackfire: {stack} not running after {TIMEOUT:.0f} s: {rows}")
            time.sleep(POLL)
        elapsed = now - t0
        self.timelines.setdefault(count, []).append(
            self._timeline(stack, wall0, answered, elapsed))
        return elapsed

    def start_warm(self) -> float:
        """A role at min 1 with one warm instance (made and stopped, untimed); timed: a
        scale to 2 until both run with their IP. The warm one is started, not created."""
        stack = f"{self.ws.prefix}-{len(self.made) + 1}"
        self.made.append(stack)
        self.live.append(stack)
        text = STACK.format(stack=stack, count=1, command='["/bin/sleep", "3600"]').replace(
            "    count: 1\n", "    scale: {min: 1, max: 2, warm: 1, cooldown: 1h, "
            "target: {cpu: 90%}}\n")
        self.api.apply(text, "stack.yaml", None, None)
        self._wait(stack, lambda rows: sorted(r["state"] for r in rows) == [
            "running", "stopped"], "one running, one warm")
        wall0, t0 = time.time(), time.perf_counter()
        self.api.scale(stack, "box", 2)
        answered = time.perf_counter() - t0
        self._wait(stack, lambda rows: sum(r["state"] == "running" and bool(r["ip"])
                                           for r in rows) == 2, "the warm one running",
                   WARM_POLL)
        elapsed = time.perf_counter() - t0
        (created, finished), = self._actions(stack, "restart")
        self.warm_parts.append((answered, created - wall0, finished - wall0))
        return elapsed

    def _wait(self, stack: str, done: Callable[[list[Any]], bool], what: str,
              poll: float = POLL) -> None:
        t0 = time.perf_counter()
        while not done(rows := list(self.api.instances(stack))):
            if time.perf_counter() - t0 > TIMEOUT:
                raise RuntimeError(f"rackfire: {stack}: not {what} after {TIMEOUT:.0f} s: "
                                   f"{rows}")
            time.sleep(poll)

    def _actions(self, stack: str, kind: str) -> list[tuple[float, float]]:
        """(created, finished) of the stack's done actions of `kind`, from its journal."""
        db = sqlite3.connect(f"file:{self.server.data_dir / 'rackfire.db'}?mode=ro", uri=True)
        try:
            return [(a, b) for a, b in db.execute(
                "SELECT created, finished FROM actions WHERE stack=? AND kind=? AND "
                "state='done'", (stack, kind))]
        finally:
            db.close()

    def _timeline(self, stack: str, wall0: float, answered: float, reported: float) -> Timeline:
        rows = self._actions(stack, "create")
        return Timeline(answered, min(r[0] for r in rows) - wall0,
                        max(r[1] for r in rows) - wall0, reported,
                        statistics.median(r[1] - r[0] for r in rows))

    def clear(self) -> None:
        for stack in self.live:
            self.api.destroy(stack)
        deadline = time.monotonic() + TIMEOUT
        for stack in self.live:
            while True:
                try:
                    self.api.stack(stack)
                except ApiError as e:
                    if e.status == 404:
                        break
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rackfire: {stack} not destroyed after {TIMEOUT:.0f} s")
                time.sleep(0.05)
        self.live.clear()

    def teardown(self) -> None:
        try:
            if self.server.alive():
                self.clear()
        finally:
            self.server.stop()
            self._remove_by_hand()
            if self.client is not None:
                self.client.close()

    def _remove_by_hand(self) -> None:
        """What the server did not get to remove (it died, or a destroy timed out), with
        rackfire's own runtime code."""
        base = self.server.data_dir / "instances"
        if base.is_dir():
            rt = ContainerRuntime(base, host="bench")
            for entry in base.iterdir():
                with contextlib.suppress(Exception):
                    rt.destroy(InstanceKey.parse_id(entry.name))
        for stack in self.made:
            with contextlib.suppress(Exception):
                links.delete_bridge(stack)

    def leftovers(self) -> list[str]:
        bridges = {names.bridge_name(s) for s in self.made}
        veths = {names.veth_name(f"{s}.box.{i}") for s in self.made for i in range(MANY)}
        found = [f"rackfire link {n}" for n in links.owned_links() if n in bridges | veths]
        found += [f"rackfire runc container {c}" for c in peers.runc_ids(RUNC_ROOT)
                  if c.startswith(self.ws.prefix)]
        loops = peers.sh(["losetup", "-a"], check=False).stdout
        found += [f"loop {line}" for line in loops.splitlines() if self.ws.prefix in line]
        return found

    def describe(self) -> str:
        return (f"rackfire: a `rackfire server` of its own (data dir under the prefix, subnet "
                f"pool {POOL}, its local host only), the busybox tarball built once as image "
                "`bb` (`from: tarball`) before any timing; per sample a new stack (one role, "
                "`/bin/sleep 3600`, memory 32M, disk 64M: each instance also gets its own "
                "ext4 disk, a netns with a veth on the stack's bridge and the stack's hosts "
                "file) applied with `POST /v1/apply`, then `GET /v1/instances?stack=` every "
                f"{POLL * 1000:.0f} ms until all are running with an IP; `DELETE "
                "/v1/stacks/NAME` after each sample")


def host_leftovers(ws: peers.Workspace, host: peers.HostPaths) -> list[str]:
    """Anything on the host that still carries the prefix, or host-wide paths made."""
    p = ws.prefix
    found = [f"link {n}" for n, _ in peers.link_names().values() if p in n]
    netns = Path("/run/netns")
    found += [f"netns {n.name}" for n in netns.iterdir() if p in n.name] if netns.is_dir() else []
    found += [f"mount {m}" for m in peers.mounts_under("/") if p in m]
    found += [f"cgroup {c}" for c in peers.cgroups_with(p)]
    found += [f"process {x}" for x in peers.processes_with(p)]
    found += [f"dir {d}" for d in (ws.work, ws.run) if d.exists()]
    return found + host.leftovers()


def host_load() -> str:
    """What else is on the host that rackfire's calls scale with."""
    mounts = len(Path("/proc/self/mountinfo").read_text().splitlines())
    shared = len(list(RUNC_ROOT.iterdir())) if RUNC_ROOT.is_dir() else 0
    return (f"{mounts} mounts, {shared} containers in rackfire's runc root {RUNC_ROOT}, load "
            f"average {Path('/proc/loadavg').read_text().split()[0]}")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _breakdown(rf: Rackfire) -> list[str]:
    out = []
    for count, tl in sorted(rf.timelines.items()):
        case = ONE if count == 1 else AT_ONCE
        out.append(
            f"rackfire, {case}, where the time goes (medians over {len(tl)} samples, from the "
            f"apply call): the call answered at {_median([t.answered for t in tl]):.3f} s, "
            f"the first create started at {_median([t.first_create for t in tl]):.3f} s, the "
            f"last create finished at {_median([t.last_done for t in tl]):.3f} s, and the poll "
            f"saw them all running at {_median([t.reported for t in tl]):.3f} s; one create "
            f"action took {_median([t.create_p50 for t in tl]):.3f} s (server side, "
            "4 at a time).")
    if rf.warm_parts:
        answered, created, done = (_median([p[i] for p in rf.warm_parts]) for i in range(3))
        out.append(f"rackfire, {WARM}, where the time goes (medians over {len(rf.warm_parts)} "
                   f"samples, from the scale call): the call answered at {answered * 1000:.0f} "
                   f"ms (it plans, to answer with the plan), the reconcile journalled the "
                   f"restart at {created * 1000:.0f} ms and it was done (`runc start`) at "
                   f"{done * 1000:.0f} ms.")
    if rf.polls:
        out.append(f"A `GET /v1/instances` poll took {_median(rf.polls) * 1000:.0f} ms "
                   f"(median; max {max(rf.polls) * 1000:.0f} ms): for it the server reads runc's "
                   "state file and the meta.json of every instance, while it creates them.")
    return out


Cases = list[tuple[str, Callable[[peers.Subject], float]]]
CASES: Cases = [(ONE, lambda s: s.start_one(0)), (AT_ONCE, lambda s: s.start_many(MANY)),
                (WARM, lambda s: s.start_warm())]  # type: ignore[attr-defined]


def _takes(case: str, s: peers.Subject) -> bool:
    """The warm start is rackfire's and bare runc's only (`runc create` then `start`)."""
    return case != WARM or hasattr(s, "start_warm")


def _set_up(ws: peers.Workspace, rf: Rackfire, made: list[peers.Subject],
            notes: list[str]) -> list[peers.Subject]:
    """Every subject that sets up and starts one instance (untimed, a warm-up too)."""
    ws.create()
    rf.setup()
    rf.start_one(0)
    rf.clear()
    rf.timelines.clear()
    rf.polls.clear()
    ready: list[peers.Subject] = [rf]
    for cls in peers.PEERS:
        peer = cls(ws)
        made.append(peer)
        try:
            peer.setup()
            peer.start_one(0)
            peer.clear()
            ready.append(peer)
        except Exception as e:  # a peer that cannot run here is skipped, not fatal
            notes.append(f"{peer.name}: skipped, it failed to set up: {e}")
            with contextlib.suppress(Exception):
                peer.teardown()
    return ready


def _measure(runs: int, ready: list[peers.Subject], rf: Rackfire,
             notes: list[str]) -> dict[tuple[str, str], list[float]]:
    """samples[case, subject]; each run rotates the order. A peer that fails is left out
    from then on (with a note); rackfire failing fails the measurement."""
    samples: dict[tuple[str, str], list[float]] = {}
    broken: set[str] = set()
    for r in range(runs):
        order = ready[r % len(ready):] + ready[:r % len(ready)]
        for case, measure in CASES:
            for s in (s for s in order if s.name not in broken and _takes(case, s)):
                print(f"   run {r + 1}/{runs}: {case}: {s.name}", flush=True)
                try:
                    samples.setdefault((case, s.name), []).append(measure(s))
                    s.clear()
                except Exception as e:
                    if s is rf:
                        raise
                    broken.add(s.name)
                    notes.append(f"{s.name}: failed in run {r + 1} ({case}), left out from "
                                 f"there on: {e}")
                    with contextlib.suppress(Exception):
                        s.clear()
    return samples


def _tear_down(ws: peers.Workspace, made: list[peers.Subject], host: peers.HostPaths,
               notes: list[str]) -> list[str]:
    """Remove everything; what is left on the host."""
    left = []
    for s in reversed(made):
        try:
            s.teardown()
        except Exception as e:
            notes.append(f"{s.name}: teardown failed: {e}")
        try:  # before the workspace goes: the peers' runc roots are in it
            left += s.leftovers()
        except Exception as e:
            left.append(f"{s.name}: the leftovers check failed: {e}")
    ws.remove()
    host.tidy()
    left = sorted(set(left + host_leftovers(ws, host)))
    if left:
        print(f"   LEFT ON THE HOST: {'; '.join(left)}", file=sys.stderr, flush=True)
    return left


def run(runs: int) -> Result:
    result = Result("start", "Instance start", WHAT)
    installed = peers.ensure_installed()
    if installed:
        result.notes.append(f"Installed for this run: {', '.join(installed)}.")
    ws = peers.Workspace("rfs" + secrets.token_hex(3))
    print(f"   prefix {ws.prefix}", flush=True)
    host, before = peers.HostPaths(), host_load()
    rf = Rackfire(ws)
    made: list[peers.Subject] = [rf]
    ready: list[peers.Subject] = []
    try:
        ready = _set_up(ws, rf, made, result.notes)
        samples = _measure(runs, ready, rf, result.notes)
    finally:
        left = _tear_down(ws, made, host, result.notes)
    result.notes.append(f"The host, besides this run: {before} at the start; "
                        f"{host_load()} at the end (other sessions' servers share that runc "
                        "root, and every mount on the host is in /proc/self/mountinfo).")
    result.notes += [s.describe() for s in ready]
    result.notes += _breakdown(rf)
    result.notes.append(f"Everything carried the prefix {ws.prefix}; after the run, links, "
                        "netns, mounts, cgroups, processes, runc containers, loop devices and "
                        "host-wide dirs the tools make were checked: "
                        + ("; ".join(left) if left else "nothing was left."))
    if left:
        raise RuntimeError(f"left on the host: {'; '.join(left)}")
    for case, _ in CASES:
        for s in ready:
            if _takes(case, s):
                result.add(case, s.name, samples.get((case, s.name), []), "s")
    result.targets += [
        ratio_target(result, AT_ONCE, "podman", 2, f"{AT_ONCE}: ≥ 2x faster than podman"),
        ratio_target(result, AT_ONCE, "docker", 2, f"{AT_ONCE}: ≥ 2x faster than docker"),
        ratio_target(result, AT_ONCE, "bare runc", 1 / 3, f"{AT_ONCE}: within 3x of bare runc"),
        ratio_target(result, AT_ONCE, "bare runc", 1 / 1.3,
                     f"{AT_ONCE}: within 1.3x of bare runc"),
        ratio_target(result, WARM, "bare runc", 1 / 2, f"{WARM}: within 2x of `runc start`"),
    ]
    return result
