"""Backups through the real CLI and server, with real restic, to a directory and to a real
local S3 endpoint (moto's server): back a stack up, verify it by reading it back, destroy the
stack, restore it from the bucket onto a new stack with the backup's data. A wrong password
and an unreachable repository are refused with nothing kept; the repository's password and
keys appear in no answer, event or log. The data dir is ext4 here: the snapshot under each
backup is a sparse copy, not a reflink (test_snapshots.py covers those)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.harness.s3 import S3Bucket

from harness import Server, free_port, host_traces, runc_exec, unique, wait_for, write_stack

pytestmark = pytest.mark.root

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
    command: [sleep, "100000"]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
"""


def sh(instance_id: str, script: str) -> str:
    proc = runc_exec(instance_id, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_backup_destroy_restore_from_the_bucket(server: Server, tmp_path: Path,
                                                s3_bucket: S3Bucket) -> None:
    stack, again = unique("bk"), unique("back")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack))),
               "--timeout", "120")
    sh(f"{stack}.db.0", "echo v1 > /data/value; head -c 4194304 /dev/urandom > /data/blob; "
                        "sync")
    blob = sh(f"{stack}.db.0", "md5sum < /data/blob")
    password = "pw-" + os.urandom(8).hex()
    (tmp_path / "pw").write_text(password + "\n")
    (tmp_path / "wrong").write_text("not-the-password\n")

    server.cli("backup", "repo", "add", "local", str(tmp_path / "repo"),
               "--password-file", str(tmp_path / "pw"))
    # The same repository with a wrong password: refused, not kept.
    wrong = server.cli("backup", "repo", "add", "bad", str(tmp_path / "repo"),
                       "--password-file", str(tmp_path / "wrong"), check=False)
    assert wrong.returncode != 0 and "password" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
    # One that cannot be reached: refused at once, not kept.
    env = {"AWS_ACCESS_KEY_ID": s3_bucket.key_id, "AWS_SECRET_ACCESS_KEY": s3_bucket.secret}
    closed = f"s3:http://127.0.0.1:{free_port()}/{s3_bucket.bucket}"
    gone = server.cli("backup", "repo", "add", "gone", closed, "--password-file",
                      str(tmp_path / "pw"), env=env, check=False)
    assert gone.returncode != 0 and "Traceback" not in gone.stderr, gone.stderr
    s3 = f"s3:{s3_bucket.endpoint}/{s3_bucket.bucket}"
    server.cli("backup", "repo", "add", "s3", s3, "--password-file", str(tmp_path / "pw"),
               env=env)
    repos = json.loads(server.cli("backup", "repo", "ls", "--json").stdout)
    assert [r["name"] for r in repos] == ["local", "s3"]

    # A backup of the stack that does not exist, to a repository that does not: refused.
    nothing = server.cli("backup", "create", "no-such-stack", "--to", "local", check=False)
    assert nothing.returncode != 0 and "no stack named" in nothing.stderr
    unknown = server.cli("backup", "create", stack, "--to", "nowhere", check=False)
    assert unknown.returncode != 0 and "no backup repository named nowhere" in unknown.stderr

    local = json.loads(server.cli("backup", "create", stack, "--to", "local", "--json").stdout)
    assert local["state"] == "ready" and {p["instance"] for p in local["parts"]} == {
        "db-0", "web-0"}
    verified = json.loads(server.cli("backup", "verify", local["ref"], "--json").stdout)
    assert verified["read"] >= 4 << 20  # the blob, read back through its digests
    up = json.loads(server.cli("backup", "create", stack, "--to", "s3", "--name", "nightly",
                               "--json").stdout)
    assert up["state"] == "ready"
    assert not json.loads(server.cli("snapshot", "ls", "--json").stdout)  # taken, dropped

    sh(f"{stack}.db.0", "echo v2 > /data/value; sync")
    server.cli("destroy", stack, "-y")
    wait_for(lambda: not host_traces(stack), 30, f"{stack} to leave no trace")
    listed = json.loads(server.cli("backup", "ls", stack, "--json").stdout)
    assert [b["name"] for b in listed] == [local["name"], "nightly"]

    server.cli("backup", "restore", f"{stack}@nightly", "--to", again, "--timeout", "120")
    assert sh(f"{again}.db.0", "cat /data/value") == "v1"
    assert sh(f"{again}.db.0", "md5sum < /data/blob") == blob

    # No secret anywhere it could be read back.
    seen = [server.cli("backup", "ls", "--json").stdout,
            server.cli("backup", "repo", "ls", "--json").stdout,
            server.cli("events", "--json").stdout,
            (server.data_dir / "server.log").read_text()]
    for secret in (password, s3_bucket.secret):
        assert not [s for s in seen if secret in s]

    server.cli("backup", "rm", f"{stack}@nightly")
    assert [b["name"] for b in json.loads(server.cli("backup", "ls", "--json").stdout)] == [
        local["name"]]
    server.cli("destroy", again, "-y")
    wait_for(lambda: not host_traces(again), 30, f"{again} to leave no trace")
    # What was read back for the restore goes once its instances were made from it.
    wait_for(lambda: not json.loads(server.cli("snapshot", "ls", "--json").stdout), 40,
             "the snapshot read back to be removed")
    assert not (server.data_dir / "snapshots" / stack).exists()

