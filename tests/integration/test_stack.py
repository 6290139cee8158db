"""A stack's life through the real CLI and a real server: runc, netns, HAProxy, ext4 disks."""

from __future__ import annotations

import collections
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from harness import (
    Server,
    free_port,
    host_traces,
    runc_exec,
    runc_ids,
    unique,
    wait_for,
    write_stack,
)

pytestmark = pytest.mark.root

WEB = """\
stack: {stack}
images:
  base: {{from: host}}
roles:
  web:
    image: base
    count: {count}
    command: ["python3", "-m", "http.server", "8000", "--directory", "/srv"]
    resources: {{cpu: 0.5, memory: 128M, disk: 64M, pids: 200}}
    ports: ["{port}:8000"]
    files:
      /srv/index.html: "{greeting} from {{{{ instance.name }}}} at {{{{ instance.ip }}}}"
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
  client:
    image: base
    uses: [web]
    resources: {{memory: 64M, disk: 32M}}
    files:
      /etc/peers: >-
        {{% for w in roles.web.instances %}}{{{{ w.name }}}}={{{{ w.ip }}}} {{% endfor %}}
    command: ["sleep", "100000"]
"""


def web_stack(tmp: Path, stack: str, port: int, count: int = 3, greeting: str = "hello") -> Path:
    return write_stack(tmp, WEB.format(stack=stack, port=port, count=count, greeting=greeting))


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def by_name(server: Server, stack: str) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in server.ps(stack)}


def test_up_serves_spreads_resolves_and_reapply_is_noop(server: Server, tmp_path: Path) -> None:
    stack, port = unique("st"), free_port()
    f = web_stack(tmp_path, stack, port)
    server.cli("apply", "-f", str(f), "-y")
    rows = by_name(server, stack)
    assert sorted(rows) == ["client-0", "web-0", "web-1", "web-2"]
    assert all(r["state"] == "running" and r["runtime"] == "container" for r in rows.values())
    assert {rows[f"web-{i}"]["health"] for i in range(3)} == {"healthy"}
    ips = {r["ip"] for r in rows.values()}
    assert len(ips) == 4

    # The published port spreads requests over the role, each page rendered per instance.
    answers = collections.Counter(get(f"http://127.0.0.1:{port}/") for _ in range(9))
    assert set(answers) == {f"hello from web-{i} at {rows[f'web-{i}']['ip']}" for i in range(3)}
    assert all(n == 3 for n in answers.values())

    # Peers resolve by instance name and by role name inside the stack.
    client = f"{stack}.client.0"
    out = runc_exec(client, "python3", "-c",
                    "import socket,urllib.request as u;"
                    "print(socket.gethostbyname('web-1'));"
                    "print(sorted({a[4][0] for a in socket.getaddrinfo('web', 8000)}));"
                    "print(u.urlopen('http://web-2:8000/').read().decode())")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == rows["web-1"]["ip"]
    assert lines[1] == str(sorted(rows[f"web-{i}"]["ip"] for i in range(3)))
    assert lines[2] == f"hello from web-2 at {rows['web-2']['ip']}"
    assert runc_exec(client, "cat", "/etc/peers").stdout.startswith(
        f"web-0={rows['web-0']['ip']} ")

    # Re-applying the same file does nothing; plan says so with exit 0.
    assert server.cli("plan", "-f", str(f), check=False).returncode == 0
    before = {n: r["pid"] for n, r in by_name(server, stack).items()}
    server.cli("apply", "-f", str(f), "-y")
    assert {n: r["pid"] for n, r in by_name(server, stack).items()} == before

    server.cli("destroy", stack, "-y")
    assert server.ps(stack) == []
    assert host_traces(stack) == []
    assert not list((server.data_dir / "instances").glob(f"{stack}.*"))  # disk images too
    assert not (server.data_dir / "stacks" / stack).exists()


def test_template_change_touches_only_that_role_and_scale_is_surgical(
        server: Server, tmp_path: Path) -> None:
    stack, port = unique("tp"), free_port()
    server.cli("apply", "-f", str(web_stack(tmp_path, stack, port)), "-y")
    before = by_name(server, stack)

    # A change in web's template: only web is reconfigured, in place (same IP).
    changed = web_stack(tmp_path, stack, port, greeting="howdy")
    plan = server.cli("plan", "-f", str(changed), "--json", check=False)
    assert plan.returncode == 2
    actions = json.loads(plan.stdout)["actions"]
    assert {(a["kind"], a["role"]) for a in actions} == {("reconfigure", "web")}
    server.cli("apply", "-f", str(changed), "-y")
    after = by_name(server, stack)
    assert after["client-0"]["pid"] == before["client-0"]["pid"]
    assert all(after[f"web-{i}"]["ip"] == before[f"web-{i}"]["ip"] for i in range(3))
    assert all(after[f"web-{i}"]["pid"] != before[f"web-{i}"]["pid"] for i in range(3))
    assert get(f"http://127.0.0.1:{port}/").startswith("howdy from web-")

    # count 3 -> 1 destroys web-2 and web-1 only; the client's peer list follows.
    smaller = web_stack(tmp_path, stack, port, count=1, greeting="howdy")
    actions = json.loads(server.cli("plan", "-f", str(smaller), "--json",
                                    check=False).stdout)["actions"]
    assert [(a["kind"], a["instance"]) for a in actions if a["kind"] == "destroy"] == [
        ("destroy", f"{stack}/web/2"), ("destroy", f"{stack}/web/1")]
    server.cli("apply", "-f", str(smaller), "-y")
    rows = by_name(server, stack)
    assert sorted(rows) == ["client-0", "web-0"]
    assert rows["web-0"]["pid"] == after["web-0"]["pid"]
    peers = runc_exec(f"{stack}.client.0", "cat", "/etc/peers").stdout
    assert peers.strip() == f"web-0={rows['web-0']['ip']}"
    hosts = runc_exec(f"{stack}.client.0", "cat", "/etc/hosts").stdout
    assert "web-1" not in hosts and "web-0" in hosts


def test_memory_limit_oom_kills_only_the_offender(server: Server, tmp_path: Path) -> None:
    stack = unique("oom")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  hog:
    image: base
    resources: {{memory: 64M, disk: 32M}}
    command: ["python3", "-c",
              "import time; time.sleep(2); x = bytearray(200 << 20); time.sleep(600)"]
  calm:
    image: base
    count: 2
    resources: {{memory: 64M, disk: 32M}}
    command: ["sleep", "100000"]
""")
    server.cli("apply", "-f", str(f), "-y")
    calm = {n: r["pid"] for n, r in by_name(server, stack).items() if n.startswith("calm")}
    hog_log = Path(str(by_name(server, stack)["hog-0"]["log"]))
    # The hog is killed by the kernel's OOM killer; rackfire notices and restarts it.
    wait_for(lambda: "killed by SIGKILL (OOM)" in _actions_text(server, stack), 60, "an OOM kill")
    assert hog_log.exists()
    rows = by_name(server, stack)
    assert {n: r["pid"] for n, r in rows.items() if n.startswith("calm")} == calm
    assert all(rows[n]["state"] == "running" for n in calm)


def _actions_text(server: Server, stack: str) -> str:
    return " ".join(f"{a['kind']} {a['reason']}" for a in _all_actions(server, stack))


def _all_actions(server: Server, stack: str) -> list[dict[str, str]]:
    db = sqlite3.connect(server.data_dir / "rackfire.db")
    try:
        rows = db.execute("SELECT kind, instance, reason FROM actions WHERE stack=?",
                          (stack,)).fetchall()
    finally:
        db.close()
    return [{"kind": k, "instance": i, "reason": r} for k, i, r in rows]


def test_disk_limit_gives_enospc(server: Server, tmp_path: Path) -> None:
    stack = unique("dsk")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  filler:
    image: base
    resources: {{disk: 32M}}
    command: ["sleep", "100000"]
""")
    server.cli("apply", "-f", str(f), "-y")
    out = runc_exec(f"{stack}.filler.0", "sh", "-c",
                    "dd if=/dev/zero of=/var/tmp/fill bs=1M count=64; echo rc=$?")
    assert "No space left on device" in out.stderr
    assert "rc=1" in out.stdout
    size = runc_exec(f"{stack}.filler.0", "sh", "-c", "du -m /var/tmp/fill").stdout.split()[0]
    assert int(size) <= 32


def test_server_restart_readopts_without_restarting(server: Server, tmp_path: Path) -> None:
    stack, port = unique("ra"), free_port()
    f = web_stack(tmp_path, stack, port, count=2)
    server.cli("apply", "-f", str(f), "-y")
    before = {n: (r["pid"], r["ip"]) for n, r in by_name(server, stack).items()}
    server.cli("server", "stop")
    # Instances and the published port keep working while no server runs.
    assert get(f"http://127.0.0.1:{port}/").startswith("hello from web-")
    server.start()
    time.sleep(2)  # a few reconcile and health rounds
    assert {n: (r["pid"], r["ip"]) for n, r in by_name(server, stack).items()} == before
    assert server.cli("plan", "-f", str(f), check=False).returncode == 0


def test_kill9_during_apply_converges_without_duplicates(
        server: Server, tmp_path: Path) -> None:
    stack = unique("k9")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  worker:
    image: base
    count: 10
    resources: {{memory: 32M, disk: 32M}}
    command: ["sleep", "100000"]
""")
    apply = subprocess.Popen([sys.executable, "-m", "rackfire", "apply", "-f", str(f), "-y"],
                             env=server.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    instances = server.data_dir / "instances"
    try:
        wait_for(lambda: instances.is_dir() and len(list(instances.iterdir())) >= 3, 60,
                 "the apply to be under way")
        server.kill9()
    finally:
        apply.kill()
        apply.wait(30)
    server.start()
    wait_for(lambda: server.api(f"/v1/stacks/{stack}")["converged"], 120, "convergence")
    rows = server.ps(stack)
    assert sorted(r["name"] for r in rows) == [f"worker-{i}" for i in range(10)]
    assert all(r["state"] == "running" for r in rows)
    assert len({r["ip"] for r in rows}) == 10
    assert sorted(c for c in runc_ids() if c.startswith(f"{stack}.")) == sorted(
        f"{stack}.worker.{i}" for i in range(10))
    server.cli("destroy", stack, "-y")
    assert host_traces(stack) == []


def test_a_port_another_program_holds_is_refused_before_any_change(
        server: Server, tmp_path: Path) -> None:
    stack, port = unique("bp"), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out = server.cli("apply", "-f", str(web_stack(tmp_path, stack, port)), "-y",
                         check=False)
    assert out.returncode == 1
    assert f"host port {port} is in use" in out.stderr and "Traceback" not in out.stderr
    assert server.ps(stack) == [] and server.api("/v1/stacks") == []
    assert host_traces(stack) == []


def test_the_api_wants_the_token(server: Server) -> None:
    assert httpx.get(server.url + "/v1/health", timeout=5).status_code == 200
    r = httpx.get(server.url + "/v1/stacks", timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert (server.data_dir / "token").stat().st_mode & 0o077 == 0
    assert server.data_dir.stat().st_mode & 0o077 == 0
    out = subprocess.run([sys.executable, "-m", "rackfire", "ps"], capture_output=True,
                         text=True, env={**os.environ, "RACKFIRE_URL": server.url,
                                         "RACKFIRE_TOKEN": "wrong"}, check=False)
    assert out.returncode == 1 and "token" in out.stderr and "Traceback" not in out.stderr
