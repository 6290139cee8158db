"""A replicated data disk (`data: {replicas: 2}`) on the 3-host bed: a singleton writes a
sequence to its data disk, each number synced; its standby copy on another host (another
rack) is kept by shipping the changed extents of frozen snapshots every few seconds. Its
host dies; after the fence it starts on the standby's host from the standby copy: a whole,
consistent prefix of the sequence, at most a few shipments behind (the RPO, said in the
failover's event), and a new standby gets a whole copy. Destroying it leaves nothing on any
host."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from test_chaos import kill_host
from test_cluster import Cluster, cluster, destroy

from harness import unique, wait_for, write_stack

pytestmark = pytest.mark.root
__all__ = ["cluster"]

EVERY = 5.0  # control/replicas.py EVERY

STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    command: [sh, /srv/seq.sh]
    files:
      /srv/seq.sh: |
        # One number after another, each synced: what a copy holds is a prefix of them.
        touch /data/seq
        i=$(tail -n1 /data/seq)
        i=${{i:-0}}
        while :; do i=$((i+1)); echo $i >> /data/seq; sync /data/seq; sleep 0.05; done
    resources: {{memory: 32M, disk: 32M}}
    data: {{path: /data, size: 64M, replicas: 2}}
    stop_timeout: 1s
"""


def where(c: Cluster, stack: str) -> str:
    """The host the db runs on ("" while it runs nowhere: `ps` has no row for it between
    its placement elsewhere and its start there)."""
    rows = json.loads(c.server.cli("ps", stack, "--json").stdout)
    return str(rows[0]["host"]) if rows and rows[0]["state"] == "running" else ""


def seq(c: Cluster, stack: str, host: str) -> list[int]:
    proc = c.runc(host, "exec", f"{stack}.db.0", "cat", "/data/seq")
    return [int(x) for x in proc.stdout.split()] if proc.returncode == 0 else []


def events(c: Cluster, stack: str, action: str) -> list[dict[str, str]]:
    return [e for e in json.loads(c.server.cli("events", stack, "--json").stdout)
            if e["action"] == action and e["result"] == "ok"]


def test_the_standby_copy_takes_over_after_the_fence(cluster: Cluster) -> None:
    c, stack = cluster, unique("rv")
    c.server.cli("apply", "-f", str(write_stack(c.tmp, STACK.format(stack=stack))), "-y",
                 timeout=300)
    wait_for(lambda: where(c, stack), 60, "the db running")
    first = where(c, stack)
    wait_for(lambda: events(c, stack, "replicate"), 60, "a whole standby copy")
    [whole] = events(c, stack, "replicate")
    standby = whole["reason"].rsplit(" ", 1)[1]
    racks = {h["name"]: h["labels"].get("rack") for h in
             json.loads(c.server.cli("hosts", "--json").stdout)}
    assert standby != first and racks[standby] != racks[first]
    time.sleep(2 * EVERY)  # a few shipments of what it writes meanwhile
    before = seq(c, stack, first)
    killed = time.monotonic()
    kill_host(c, first)
    wait_for(lambda: where(c, stack) == standby, 60, "the db on its standby's host")
    took = time.monotonic() - killed
    after = seq(c, stack, standby)
    # A whole prefix of what it wrote: consecutive from 1, nothing torn.
    assert after[: len(before)] == list(range(1, min(len(before), len(after)) + 1))
    # It went on writing from what the copy held; the copy was at most a few shipments
    # behind the last number seen before the kill (20 a second).
    gaps = [a for a, b in itertools.pairwise(after) if b != a + 1]
    assert not gaps, f"a gap in the sequence after {gaps[0]}"
    lost = len(before) - min(len(after), len(before))
    assert lost <= 20 * (2 * EVERY + 2), f"{lost} writes behind"
    [failover] = [e for e in events(c, stack, "failover") if "standby copy" in e["reason"]]
    assert "RPO" in failover["reason"] and standby in failover["reason"]
    print(f"\nfailover from the standby copy after {took:.1f} s; copy {lost} writes "
          f"(~{lost / 20:.1f} s) behind the last seen: {failover['reason']}")
    # A new standby, on the host left, gets a whole copy.
    wait_for(lambda: len(events(c, stack, "replicate")) >= 2, 60, "a new standby copy")
    c.bed.cut(first, up=True)
    c.start_agent(first)
    wait_for(lambda: c.hosts()[first]["state"] == "ready", 60, f"{first} back")
    wait_for(lambda: c.running_on(f"{stack}.db.0") == [standby], 60,
             "one copy of the db, on its new host")
    destroy(c, stack)
