"""Hosts fail, on the 3-host bed: a host's death (its agent, its watchdog, its instances and
its link gone at once), an agent-only crash, a partition, a flapping link and the server
killed in the middle of a failover. A stateless role (`web` x3, one per rack) is replaced at
once; a singleton (`solo`, a witness: it prints its incarnation every 100 ms) only after its
host's fence; the checker asserts no two of its incarnations ever ran at once.

Each case runs RACKFIRE_CHAOS_RUNS times (1 in `make test`, 20 in `make chaos`) and prints
its figures (pytest -s shows them; `make chaos` does)."""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from test_cluster import Cluster, cluster, destroy, web_stack
from witness import SCRIPT, Witness, overlaps

from harness import unique, wait_for, write_stack

pytestmark = pytest.mark.root
RUNS = int(os.environ.get("RACKFIRE_CHAOS_RUNS", "1"))
PARTITION = float(os.environ.get("RACKFIRE_CHAOS_PARTITION", "8"))  # seconds (60 in chaos)
__all__ = ["cluster"]  # the 3-host bed fixture, shared with test_cluster


def chaos_stack(stack: str, spread: str = "host") -> str:
    """`web` x3 (test_cluster's), spread as asked, and the singleton witness `solo`."""
    script = "\n".join("        " + line for line in SCRIPT.splitlines())
    return web_stack(stack, 3, extra=f"""\
    placement: {{spread: {spread}}}
  solo:
    image: base
    ha: singleton
    command: [python3, -u, /srv/witness.py]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
    files:
      /srv/witness.py: |
{script}
""")


def ps(c: Cluster, stack: str) -> dict[str, dict[str, Any]]:
    return {f"{r['role']}/{r['index']}": r for r in c.server.ps(stack)}


def serving(c: Cluster, stack: str, avoid: str = "") -> bool:
    """Every instance runs (web healthy) on a host other than `avoid`."""
    rows = ps(c, stack)
    return len(rows) == 4 and all(
        r["state"] == "running" and r["host"] != avoid
        and (r["role"] != "web" or r["health"] == "healthy") for r in rows.values())


def one_copy_each(c: Cluster, stack: str) -> bool:
    """Exactly one running container per instance, over every bed host."""
    ids = [f"{stack}.{k.replace('/', '.')}" for k in ps(c, stack)]
    return bool(ids) and all(len(c.running_on(i)) == 1 for i in ids)


def kill_host(c: Cluster, host: str) -> None:
    """The host dies: its agent, its watchdog, its HAProxy and its instances at once, its
    link down."""
    c.bed.cut(host)
    c.kill_agent(host)
    c.bed.kill_all(host)
    for cid in c.runc(host, "list", "-q").stdout.split():
        c.runc(host, "kill", cid, "KILL")


def revive(c: Cluster, host: str, stack: str) -> None:
    """It boots again: link up, its agent started (the instances are dead; the controller
    destroys what was replaced)."""
    c.bed.cut(host, up=True)
    c.start_agent(host)
    wait_for(lambda: c.hosts()[host]["state"] == "ready", 60, f"{host} back")
    wait_for(lambda: one_copy_each(c, stack) and serving(c, stack), 90,
             "one copy of each instance, all serving")


@contextmanager
def witnessed(c: Cluster, spread: str = "host") -> Iterator[tuple[str, Witness]]:
    """The chaos stack, serving, its singleton witnessed; at the end no two of its
    incarnations ran at once, and its destroy leaves nothing on any host."""
    stack = unique("chaos")
    file = write_stack(c.tmp, chaos_stack(stack, spread))
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    wait_for(lambda: serving(c, stack), 120, "the stack serving")
    dirs = {h.name: c.agent_dir(h.name) for h in c.bed.hosts}
    witness = Witness(dirs, f"{stack}.solo.0").start()
    try:
        yield stack, witness
    finally:
        witness.stop()
    assert overlaps(witness.runs()) == []
    destroy(c, stack)


def report(name: str, figures: dict[str, list[float]]) -> None:
    for what, xs in figures.items():
        if xs:
            print(f"chaos {name}: {what}: median {statistics.median(xs):.2f}s, "
                  f"max {max(xs):.2f}s over {len(xs)} run(s)")


def die_once(c: Cluster, stack: str, figures: dict[str, list[float]]) -> None:
    victim = ps(c, stack)["solo/0"]["host"]
    before = ps(c, stack)["solo/0"]["incarnation"]
    died = time.time()
    kill_host(c, victim)
    wait_for(lambda: all(r["host"] != victim and r["state"] == "running"
                         and r["health"] == "healthy"
                         for k, r in ps(c, stack).items() if k.startswith("web")),
             60, "web replaced")
    figures["web replaced"].append(time.time() - died)
    wait_for(lambda: serving(c, stack, avoid=victim), 60, "the singleton replaced")
    figures["singleton replaced"].append(time.time() - died)
    assert ps(c, stack)["solo/0"]["incarnation"] > before
    revive(c, victim, stack)


def test_host_death_replaces_stateless_at_once_and_the_singleton_after_its_fence(
        cluster: Cluster) -> None:
    c = cluster
    figures: dict[str, list[float]] = {"web replaced": [], "singleton replaced": []}
    try:
        with witnessed(c) as (stack, witness):
            for _ in range(RUNS):
                die_once(c, stack, figures)
            witness.stop()
            assert len(witness.runs()) == RUNS + 1  # one run per failover, and the first
            events = c.server.cli("events", "--json").stdout
            assert "is lost: placed again on" in events
            assert "ready -> suspect" in events or "ready -> lost" in events
    finally:
        report("host death", figures)


def crash_agent_once(c: Cluster, stack: str) -> None:
    host = ps(c, stack)["solo/0"]["host"]
    before = {k: (r["host"], r["started_at"], r["incarnation"]) for k, r in ps(c, stack).items()}
    c.kill_agent(host)  # kill -9: its watchdog and instances live on
    c.start_agent(host)
    wait_for(lambda: c.hosts()[host]["state"] == "ready", 30, f"{host}'s agent back")
    time.sleep(2)  # a few heartbeats: whatever it would do, it did
    after = {k: (r["host"], r["started_at"], r["incarnation"]) for k, r in ps(c, stack).items()}
    assert after == before
    assert all(r["restarts"] == 0 for r in ps(c, stack).values())
    assert not (c.agent_dir(host) / "watchdog" / "fenced.json").exists()


def test_an_agent_crash_restarts_nothing(cluster: Cluster) -> None:
    with witnessed(cluster) as (stack, witness):
        for _ in range(RUNS):
            crash_agent_once(cluster, stack)
        witness.stop()
        assert len(witness.runs()) == 1


def partition_once(c: Cluster, stack: str, flap: bool) -> float:
    """Seconds from the heal to one copy of each instance."""
    host = ps(c, stack)["solo/0"]["host"]
    if flap:  # a flapping link: down and up a few times, then the partition
        for _ in range(3):
            c.bed.cut(host)
            time.sleep(0.7)
            c.bed.cut(host, up=True)
            time.sleep(0.7)
    c.bed.cut(host)
    time.sleep(PARTITION)
    wait_for(lambda: serving(c, stack, avoid=host), 60, "served from the others")
    c.bed.cut(host, up=True)
    healed = time.time()
    wait_for(lambda: one_copy_each(c, stack), 60, "one copy of each instance")
    took = time.time() - healed
    wait_for(lambda: c.hosts()[host]["state"] == "ready", 30, f"{host} ready")
    return took


def test_a_partition_heals_to_one_copy_per_index(cluster: Cluster) -> None:
    c = cluster
    figures: dict[str, list[float]] = {"one copy each after heal": []}
    lease = max(h["lease"] for h in c.hosts().values())
    try:
        with witnessed(c) as (stack, _):
            for run in range(RUNS):
                figures["one copy each after heal"].append(
                    partition_once(c, stack, run % 2 == 1))
    finally:
        report("partition", figures)
    # One lease, as the issue asks: the first heartbeat after the heal (a stuck one is given
    # up after 2 s and sent again at once) names the replaced copies, destroyed at once. The
    # second is for this check's own polling (a `ps` and a `runc state` per copy, ~0.4 s)
    # on a shared machine. (It took 4 to 9 s while the bed's hosts shared cgroups: a host's
    # delete of its old copy emptied the replacement's cgroup of the same name.)
    assert max(figures["one copy each after heal"]) <= lease + 1


def test_the_server_killed_mid_failover_finishes_it(cluster: Cluster) -> None:
    c = cluster
    with witnessed(c) as (stack, _):
        victim = ps(c, stack)["solo/0"]["host"]
        kill_host(c, victim)
        wait_for(lambda: c.hosts()[victim]["state"] == "lost", 30, f"{victim} lost")
        c.server.kill9()  # web may be placed again already; the singleton waits its fence
        c.server.start()
        wait_for(lambda: serving(c, stack, avoid=victim), 90, "the failover finished")
        revive(c, victim, stack)


def test_with_a_rack_down_web_spread_over_racks_still_serves(cluster: Cluster) -> None:
    """One host per rack on the bed: its death takes a rack down. `spread: rack` is hard:
    the lost replica is not crammed into a rack that has one (it is held, and says why);
    the other two keep serving, and the singleton is placed again after its fence."""
    c = cluster
    with witnessed(c, spread="rack") as (stack, _):
        victim = ps(c, stack)["solo/0"]["host"]
        kill_host(c, victim)
        # (between its placement elsewhere and its start there, ps has no solo/0 row)
        wait_for(lambda: ps(c, stack).get("solo/0", {}).get("host") not in (None, victim)
                 and ps(c, stack)["solo/0"]["state"] == "running", 60, "the singleton moved")
        rows = ps(c, stack)
        up = [r for k, r in rows.items() if k.startswith("web") and r["host"] != victim]
        assert len(up) == 2 and all(r["health"] == "healthy" for r in up)
        [held] = [r for k, r in rows.items() if k.startswith("web") and r["host"] == victim]
        assert held["state"] == "lost" and "already in rack" in held["health_message"]
        revive(c, victim, stack)


def test_fence_refusals_change_nothing(cluster: Cluster) -> None:
    c = cluster
    before = c.hosts()
    r = c.server.cli("host", "fence", "nosuchhost", check=False)
    assert r.returncode != 0 and "no host named nosuchhost" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    own = socket.gethostname().split(".")[0].lower()  # the server's own host's name
    r = c.server.cli("host", "fence", own, check=False)
    assert r.returncode != 0 and "server's own host" in r.stderr + r.stdout
    assert c.hosts().keys() == before.keys()
    assert all(h["state"] == "ready" and h["epoch"] == before[n]["epoch"]
               for n, h in c.hosts().items())
