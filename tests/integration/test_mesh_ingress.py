"""The routing mesh on the 3-host bed: every host of a stack publishes its ports to the role's
instances on any host (each host connects from its own address in the stack's subnet,
net/mesh.py), so a client pointed at any surviving host keeps being served when a host dies
and its instances move."""

from __future__ import annotations

import os
import socket
import time

import pytest
from test_chaos import kill_host, ps
from test_cluster import Cluster, cluster, destroy, web_stack

from rackfire.net import mesh

from harness import unique, wait_for, write_stack

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (runs anyway when CI=true)"),
]
__all__ = ["cluster"]
PORT = 29507  # inside the bed's hosts only


def get(ip: str, timeout: float = 2.0) -> str | None:
    """The answering instance's hostname from ip:PORT, or None."""
    try:
        with socket.create_connection((ip, PORT), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.0 200") else None


def answers(ip: str, n: int = 9) -> list[str | None]:
    return [get(ip) for _ in range(n)]


def healthy_web(c: Cluster, stack: str, avoid: str = "") -> bool:
    rows = [r for k, r in ps(c, stack).items() if k.startswith("web")]
    return len(rows) == 3 and all(r["state"] == "running" and r["health"] == "healthy"
                                  and r["host"] != avoid for r in rows)


def test_every_host_serves_every_instance_and_survivors_keep_serving(cluster: Cluster) -> None:
    c = cluster
    stack = unique("mesh")
    file = write_stack(c.tmp, web_stack(stack, 3, extra=f"""\
    placement: {{spread: host}}
    ports: ["{PORT}:8000"]
"""))
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    wait_for(lambda: healthy_web(c, stack), 120, "web x3 serving")
    where = {r["host"] for r in ps(c, stack).values()}
    assert where == {h.name for h in c.bed.hosts}  # one per host
    ips = {h.name: h.ip for h in c.bed.hosts}
    # Round robin over all three from each host: each one's port reaches the others' too.
    for host, ip in ips.items():
        wait_for(lambda ip=ip: len(set(answers(ip)) - {None}) == 3, 30,  # type: ignore[misc]
                 f"{host}'s port answering from all three instances")
        assert None not in answers(ip, 6), f"{host}'s port failed a request"
    for h in c.bed.hosts:  # each host has its own address, and a rule to it
        linked = c.bed.run_in(h, ["ip", "-o", "link"]).stdout
        assert all(n in linked for n in mesh.mesh_names(stack)), h.name
    victim = ps(c, stack)["web/0"]["host"]
    survivors = [ip for host, ip in ips.items() if host != victim]
    died = time.monotonic()
    kill_host(c, victim)
    failed, total, slowest = 0, 0, 0.0
    while not healthy_web(c, stack, avoid=victim) and time.monotonic() - died < 60:
        for ip in survivors:  # the survivors keep serving the whole time
            # 5 s: HAProxy gives a dead backend 2 s to connect, then tries another
            t0 = time.monotonic()
            got = get(ip, timeout=5.0)
            slowest = max(slowest, time.monotonic() - t0)
            total, failed = total + 1, failed + (got is None)
    replaced = time.monotonic() - died
    assert healthy_web(c, stack, avoid=victim), "web/0 not replaced within 60 s"
    for ip in survivors:  # and reach the replacement too (it is on a survivor)
        wait_for(lambda ip=ip: len(set(answers(ip)) - {None}) == 3, 30,  # type: ignore[misc]
                 f"{ip} answering from the three instances again")
    print(f"mesh: web/0 replaced {replaced:.2f}s after its host died; survivors' ports "
          f"failed {failed}/{total} requests meanwhile, the slowest {slowest:.2f}s")
    assert failed == 0  # a dead backend costs time (its connect timeout), not an error
    c.bed.cut(victim, up=True)
    c.start_agent(victim)
    wait_for(lambda: c.hosts()[victim]["state"] == "ready", 60, f"{victim} back")
    destroy(c, stack)
    for h in c.bed.hosts:
        linked = c.bed.run_in(h, ["ip", "-o", "link"]).stdout
        assert not any(n in linked for n in mesh.mesh_names(stack)), h.name
        rules = c.bed.run_in(h, ["ip", "rule"]).stdout
        assert f"lookup {mesh.mesh_table(stack)}" not in rules, h.name
