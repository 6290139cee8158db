"""A chatty instance's console log stays within its role's `logs:` cap, on the host's disk,
however much it writes; `logs` and `logs -f` read across the rotations; `stats` shows the
log's size; new limits reach a running instance without a restart. Real server, real CLI,
runc containers, on the server's own host and on a joined one."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_cluster import Cluster, cluster, destroy  # noqa: F401 - cluster: the fixture
from test_exec_logs import rackfire, read_until

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

MAX_SIZE, MAX_FILES = 64 * 1024, 3
CAP = MAX_SIZE * MAX_FILES
LINES = 160_000  # "burst 000001\n" ...: 2 MB as written, over ten times the cap
RECORDS_PER_FILE = MAX_SIZE // len(b"2026-12-06T20:31:47.123456789Z stdout F burst 000001\n")

# It waits for /tmp/go, then writes its burst as fast as `seq` can, then idles.
CHATTY = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  chatty:
    image: base
    command: [sh, -c, "echo waiting; while [ ! -f /tmp/go ]; do sleep 0.1; done;
              seq -f 'burst %06g' 1 {lines}; echo burst-done; exec sleep 100000"]
    resources: {{memory: 64M, disk: 32M}}
    stop_timeout: 1s
    logs: {{max_size: 64K, max_files: {files}}}
"""


def log_files(data_dir: Path, stack: str) -> list[Path]:
    return sorted((data_dir / "instances" / f"{stack}.chatty.0").glob("console.log*"))


def burst_numbers(text: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^burst (\d+)$", text, re.MULTILINE)]


def follow_a_burst(server: Server, stack: str) -> bytes:
    """`logs -f` begun before the instance's burst: everything it printed up to its end."""
    follow = rackfire(server, "logs", "-f", "-n", "1", f"{stack}/chatty/0",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        seen = read_until(follow.stdout.fileno(), b"waiting\n", 20)
        server.cli("exec", f"{stack}/chatty/0", "--", "touch", "/tmp/go")
        return read_until(follow.stdout.fileno(), b"burst-done\n", 60, seen)
    finally:
        follow.kill()
        follow.wait(10)
        for pipe in (follow.stdout, follow.stderr):
            if pipe is not None:
                pipe.close()


def check_followed(seen: bytes) -> None:
    """The follow went on across many rotations (the burst is some 130 files): in order, no
    line twice, up to the last one (lines that rotated away between two of its polls it
    could not see)."""
    followed = burst_numbers(seen)
    assert followed == sorted(set(followed)) and followed[-1] == LINES, followed[-5:]
    rotations = LINES // RECORDS_PER_FILE
    assert rotations > 10 * MAX_FILES and len(followed) > RECORDS_PER_FILE, len(followed)
    print(f"followed {len(followed)} of {LINES} lines across ~{rotations} rotations")


def check_on_disk(files: list[Path]) -> None:
    """At most max_files files, each within max_size: the cap holds."""
    sizes = {p.name: p.stat().st_size for p in files}
    assert len(files) == MAX_FILES and all(s <= MAX_SIZE for s in sizes.values()), sizes
    assert sum(sizes.values()) <= CAP, sizes


def check_newest_kept(text: str) -> None:
    """`logs` reads the rotated files, then the current one: the newest lines, in order."""
    kept = burst_numbers(text.encode())
    assert kept == list(range(kept[0], LINES + 1)) and text.endswith("burst-done\n")
    assert len(kept) > RECORDS_PER_FILE * (MAX_FILES - 1)


def test_a_chatty_instance_keeps_its_log_within_the_cap(server: Server, tmp_path: Path) -> None:
    stack = unique("cap")
    file = write_stack(tmp_path, CHATTY.format(stack=stack, lines=LINES, files=MAX_FILES))
    server.cli("up", "-f", str(file))
    wait_for(lambda: "waiting" in server.cli("logs", f"{stack}/chatty/0").stdout, 20,
             "the instance to start")
    started = server.ps(stack)[0]["started_at"]

    check_followed(follow_a_burst(server, stack))
    check_on_disk(log_files(server.data_dir, stack))
    check_newest_kept(server.cli("logs", f"{stack}/chatty/0", "-n", "0").stdout)
    last = server.cli("logs", f"{stack}/chatty/0", "-n", "3", "-t").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in last] == [
        f"burst {LINES - 1:06d}", f"burst {LINES:06d}", "burst-done"]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", line) for line in last)

    # stats: the log's size over its files, in --json and as a column.
    [row] = json.loads(server.cli("stats", stack, "--json").stdout)
    assert row["log_bytes"] == sum(p.stat().st_size for p in log_files(server.data_dir, stack))
    table = server.cli("stats", stack).stdout
    assert "LOG" in table.splitlines()[0], table

    # Lower limits reach the running instance live: a resize, no restart.
    lower = write_stack(tmp_path, CHATTY.format(stack=stack, lines=LINES, files=2))
    out = server.cli("plan", "-f", str(lower), check=False)
    assert out.returncode == 2 and "resize" in out.stdout, out.stdout  # 2: it has changes
    assert "log limits changed: 64K x 2 files" in out.stdout, out.stdout
    server.cli("apply", "-f", str(lower), "-y")
    wait_for(lambda: len(log_files(server.data_dir, stack)) == 2, 10, "the oldest file to go")
    assert server.ps(stack)[0]["started_at"] == started

    server.cli("destroy", stack, "-y")


def test_the_cap_and_follow_on_a_joined_host(cluster: Cluster) -> None:  # noqa: F811
    c = cluster
    stack = unique("capr")
    file = write_stack(c.tmp, CHATTY.format(stack=stack, lines=LINES, files=MAX_FILES))
    c.server.cli("apply", "-f", str(file), "-y", timeout=300)
    [row] = c.server.ps(stack)
    wait_for(lambda: "waiting" in c.server.cli("logs", f"{stack}/chatty/0").stdout, 30,
             "the instance to start")
    # Followed through its host's agent, which streams the records across rotations.
    start = time.monotonic()
    check_followed(follow_a_burst(c.server, stack))
    assert time.monotonic() - start < 60
    check_on_disk(log_files(c.agent_dir(row["host"]), stack))
    check_newest_kept(c.server.cli("logs", f"{stack}/chatty/0", "-n", "0").stdout)
    [stats] = json.loads(c.server.cli("stats", stack, "--json").stdout)
    assert 0 < stats["log_bytes"] <= CAP
    destroy(c, stack)
