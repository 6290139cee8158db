"""Snapshots, restores and clones through the real CLI and server, on real disks: the data
dir on a loop-mounted XFS made with reflink=1 (as an operator's would be for instant
snapshots), so the copies share extents. Snapshot, write more, restore: the data is the
snapshot's, on the data disk and the root disk alike; a restore onto a new stack makes a
copy; a clone gets its own disks, network and ports, takes a pushed upgrade the original
does not, and takes over the original's port when promoted; bad requests change nothing;
destroying the stacks leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from harness import Server, free_port, host_traces, runc_exec, unique, wait_for, write_stack

pytestmark = pytest.mark.root

MiB = 1 << 20

STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    command: [sleep, "100000"]
    resources: {{memory: 64M, disk: 32M}}
    data: {{path: /data, size: 64M}}
    stop_timeout: 1s
  web:
    image: base
    count: 2
    command: [sleep, "100000"]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
"""


@pytest.fixture
def data_root(xfs: Path) -> Path:
    return xfs


def sh(instance_id: str, script: str) -> str:
    proc = runc_exec(instance_id, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_snapshot_write_restore_and_copy(server: Server, tmp_path: Path, xfs: Path) -> None:
    stack = unique("snap")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack))),
               "--timeout", "120")
    db, web = f"{stack}.db.0", f"{stack}.web.1"
    sh(db, "echo v1 > /data/value; head -c 16777216 /dev/urandom > /data/blob; "
           "echo r1 > /var/tmp/root-mark; sync")
    sh(web, "echo w1 > /var/tmp/web-mark; sync")
    blob = sh(db, "md5sum < /data/blob")

    # Bad requests first: each refused, nothing made.
    missing = server.cli("snapshot", "create", "no-such-stack", check=False)
    assert missing.returncode != 0 and "no stack named no-such-stack" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = server.cli("snapshot", "create", stack, "--name", "Bad_Name", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr

    before = used(xfs)
    taken = json.loads(server.cli("snapshot", "create", stack, "--name", "before",
                                  "--json").stdout)
    assert taken["state"] == "ready" and taken["ref"] == f"{stack}@before"
    copies = {c["instance"]: c for c in taken["copies"]}
    assert set(copies) == {"db-0", "web-0", "web-1"}
    assert {c["method"] for c in copies.values()} == {"reflink"}
    assert [d["name"] for d in copies["db-0"]["disks"]] == ["disk.img", "data.img"]
    assert copies["db-0"]["disks"][1]["held"] >= 16 * MiB  # the blob is in it
    # Reflinks share the extents: the snapshot itself adds next to nothing.
    assert used(xfs) - before < 4 * MiB, used(xfs) - before
    # A second snapshot of the same name is refused; another name is fine.
    again = server.cli("snapshot", "create", stack, "--name", "before", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    server.cli("snapshot", "create", f"{stack}/web/0", "--name", "web-only")

    # Write more after it.
    sh(db, "echo v2 > /data/value; rm /var/tmp/root-mark; head -c 1048576 /dev/urandom "
           ">> /data/blob; sync")
    sh(web, "echo w2 > /var/tmp/web-mark; sync")

    # Onto running instances: refused without -y, nothing changed.
    refused = server.cli("restore", f"{stack}@before", check=False)
    assert refused.returncode != 0 and "-y" in refused.stderr, refused.stderr
    assert sh(db, "cat /data/value") == "v2"

    server.cli("restore", f"{stack}@before", "-y", "--timeout", "120")
    assert sh(db, "cat /data/value") == "v1"
    assert sh(db, "md5sum < /data/blob") == blob
    assert sh(db, "cat /var/tmp/root-mark") == "r1"  # the root disk is the snapshot's too
    assert sh(web, "cat /var/tmp/web-mark") == "w1"
    assert {r["state"] for r in server.ps(stack)} == {"running"}

    # Onto a new stack: a copy with its own disks; the original untouched by it.
    copy = unique("copy")
    server.cli("restore", f"{stack}@before", "--to", copy, "--timeout", "120")
    assert sh(f"{copy}.db.0", "cat /data/value") == "v1"
    sh(f"{copy}.db.0", "echo copy > /data/value")
    assert sh(db, "cat /data/value") == "v1"

    listed = json.loads(server.cli("snapshot", "ls", stack, "--json").stdout)
    assert [s["name"] for s in listed] == ["before", "web-only"]
    table = server.cli("snapshot", "ls").stdout
    assert f"{stack}@before" in table and "reflink" not in table
    server.cli("snapshot", "rm", f"{stack}@web-only")
    assert not (server.data_dir / "snapshots" / stack / "web-only").exists()
    gone = server.cli("restore", f"{stack}@web-only", "-y", check=False)
    assert gone.returncode != 0 and "no snapshot" in gone.stderr

    for name in (stack, copy):
        server.cli("destroy", name, "-y")
        wait_for(lambda n=name: not host_traces(n), 30, f"{name} to leave no trace")
    assert not (server.data_dir / "snapshots" / stack).exists()
    assert json.loads(server.cli("snapshot", "ls", "--json").stdout) == []


WEB = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    app: ./app
    command: ["python3", "-m", "http.server", "8000", "--directory", "/app"]
    resources: {{memory: 64M, disk: 32M}}
    ports: ["{port}:8000"]
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
    stop_timeout: 1s
  box:
    image: base
    command: [sleep, "100000"]
    resources: {{memory: 32M, disk: 32M}}
    data: {{path: /data, size: 32M}}
    stop_timeout: 1s
"""


def page(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text


def test_clone_trial_upgrade_promote(server: Server, tmp_path: Path) -> None:
    stack, trial, port, other = unique("prod"), unique("trial"), free_port(), free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text("one\n")
    server.cli("up", "-f", str(write_stack(tmp_path, WEB.format(stack=stack, port=port))),
               "--timeout", "120")
    sh(f"{stack}.box.0", "echo prod-data > /data/value; sync")

    # A clone name that exists is refused, nothing made.
    taken = server.cli("clone", stack, stack, check=False)
    assert taken.returncode != 0 and "exists" in taken.stderr
    assert json.loads(server.cli("snapshot", "ls", "--json").stdout) == []
    # So is one whose moved port is busy: no stack, and no snapshot taken for it stays.
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        offset = busy.getsockname()[1] - port
        held = server.cli("clone", stack, trial, "--port-offset", str(offset), check=False)
    assert held.returncode != 0 and "port" in held.stderr, held.stderr
    assert json.loads(server.cli("snapshot", "ls", "--json").stdout) == []
    assert trial not in {s["name"] for s in server.api("/v1/stacks")}

    server.cli("clone", stack, trial, "--port-offset", str(other - port), "--timeout", "120")
    assert page(port) == page(other) == "one\n"
    assert sh(f"{trial}.box.0", "cat /data/value") == "prod-data"
    # Its own disks: a write to the clone is not seen by the original.
    sh(f"{trial}.box.0", "echo trial-data > /data/value; sync")
    assert sh(f"{stack}.box.0", "cat /data/value") == "prod-data"
    # Its own network, no traffic between them.
    [orig] = [r for r in server.ps(stack) if r["role"] == "web"]
    probe = runc_exec(f"{trial}.web.0", "python3", "-c",
                      f"import socket; socket.create_connection(('{orig['ip']}', 8000), 2)")
    assert probe.returncode != 0, "the clone reached the original's instance"
    assert {r["ip"] for r in server.ps(trial)}.isdisjoint({r["ip"] for r in server.ps(stack)})

    # The trial upgrade: pushed to the clone only.
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "index.html").write_text("two\n")
    server.cli("push", f"{trial}/web", str(v2))
    assert page(other) == "two\n" and page(port) == "one\n"
    d = json.loads(server.cli("diff", stack, trial, "--json").stdout)
    assert [r["role"] for r in d["releases"]] == ["web"]
    assert any('"host_port"' in line for line in d["spec"])  # the ports moved
    assert stack in server.cli("diff", stack, trial).stdout

    # Promote: the clone serves on the original's port; the original is stopped, kept.
    refused = server.cli("promote", trial, stack, check=False)  # no tty, no -y
    assert refused.returncode != 0 and "-y" in refused.stderr
    server.cli("promote", trial, stack, "-y", "--timeout", "120")
    wait_for(lambda: page(port) == "two\n", 30, "the clone on the original's port")
    assert {r["state"] for r in server.ps(stack)} == {"stopped"}
    with pytest.raises(httpx.TransportError):
        page(other)

    for name in (stack, trial):
        server.cli("destroy", name, "-y")
        wait_for(lambda n=name: not host_traces(n), 30, f"{name} to leave no trace")
