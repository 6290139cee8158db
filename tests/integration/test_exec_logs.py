"""`rackfire exec` and `rackfire logs` through the real CLI and a real server, in runc
containers and plain processes; and `exec` health checks."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

# Five numbered lines on its console, then idle.
LINES = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    command: [sh, -c, "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 100000"]
    env: {{GREETING: hi there}}
    resources: {{memory: 64M, disk: 32M}}
"""


def lines_stack(server: Server, tmp_path: Path, stack: str) -> None:
    server.cli("up", "-f", str(write_stack(tmp_path, LINES.format(stack=stack))))
    # The console lines are written as the command starts: wait until they are there.
    for i in (0, 1):
        log = server.data_dir / "instances" / f"{stack}.web.{i}" / "console.log"
        wait_for(lambda log=log: log.exists() and "line5" in log.read_text(), 10, "line5")


def rackfire(server: Server, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "rackfire", *args], env=server.env, **kw)


def read_until(fd: int, needle: bytes, timeout: float, seen: bytes = b"") -> bytes:
    """Read `fd` until `needle` shows up; everything read so far (raises on timeout)."""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the pty's other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {seen!r}")
            seen += chunk
    return seen


def shell_session(server: Server, instance: str, prompt: bytes) -> tuple[bytes, int]:
    """`rackfire exec -it INSTANCE -- sh` on a pty, as a person at a terminal would."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = rackfire(server, "exec", "-it", instance, "--", "sh", stdin=slave, stdout=slave,
                    stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        seen = read_until(master, prompt, 20)
        os.write(master, b"echo $((6*7)); stty size\n")
        seen = read_until(master, b"30 100", 10, seen)
        # A resize of the local window reaches the remote terminal.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)  # the CLI has no controlling tty here
        time.sleep(0.5)
        os.write(master, b"stty size\n")
        seen = read_until(master, b"40 120", 10, seen)
        os.write(master, b"exit 3\n")
        code = proc.wait(20)
        return seen, code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_exec_runs_in_the_instance_with_its_env_exit_code_and_tty(
        server: Server, tmp_path: Path) -> None:
    stack = unique("ex")
    lines_stack(server, tmp_path, stack)

    # Exit code and output come back, stdout and stderr apart.
    out = server.cli("exec", f"{stack}/web/0", "--", "sh", "-c",
                     "echo to-out; echo to-err >&2; exit 7", check=False)
    assert (out.returncode, out.stdout, out.stderr) == (7, "to-out\n", "to-err\n")
    [audit] = [e for e in json.loads(server.cli("events", stack, "--json").stdout)
               if e["action"] == "exec"]
    assert audit["target"] == f"{stack}/web/0" and "@" in audit["actor"]
    assert audit["reason"] == "sh -c 'echo to-out; echo to-err >&2; exit 7': exit 7"

    # Its environment, hostname and cwd; any of the instance spellings.
    out = server.cli("exec", f"{stack}/web-1", "--", "sh", "-c",
                     'echo "$RACKFIRE_ROLE $RACKFIRE_INDEX $GREETING|$(hostname)|$(pwd)"')
    assert out.stdout == "web 1 hi there|web-1|/\n"
    assert server.cli("exec", f"{stack}.web.0", "--", "hostname").stdout == "web-0\n"

    # stdin is forwarded with -i (and not without).
    out = server.cli("exec", "-i", f"{stack}/web/0", "--", "sh", "-c", "wc -l", input="a\nb\n")
    assert out.stdout.strip() == "2"
    out = server.cli("exec", f"{stack}/web/0", "--", "sh", "-c", "wc -l", input="a\nb\n")
    assert out.stdout.strip() == "0"

    # An interactive shell on a terminal.
    seen, code = shell_session(server, f"{stack}/web/0", b"# ")
    assert b"\r\n42\r\n" in seen and code == 3

    # Refusals are errors with a hint, never tracebacks.
    for args, needle in [
        ((f"{stack}/web/9", "--", "true"), "no instance"),
        ((stack, "--", "true"), "is not one instance"),
        ((f"{stack}/web/x/y", "--", "true"), "is not STACK"),
    ]:
        out = server.cli("exec", *args, check=False)
        assert out.returncode == 1 and needle in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = server.cli("exec", f"{stack}/web/0", "--", "no-such-command", check=False)
    assert out.returncode != 0 and "no-such-command" in out.stderr

    # The websocket wants the token, as the rest of the API does.
    ws_url = server.url.replace("http", "ws", 1) + f"/v1/instances/{stack}.web.0/exec"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with connect(ws_url, additional_headers=headers, proxy=None) as ws:
            assert json.loads(ws.recv(timeout=10))["error"]["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with connect(ws_url, additional_headers=server.auth, proxy=None) as ws:
        ws.send(json.dumps({"argv": ["sh", "-c", "read x; echo got $x"], "tty": False}))
        ws.send(b"hello\n")
        frames = []
        while not isinstance(frame := ws.recv(timeout=10), str):
            frames.append(frame)
        assert json.loads(frame) == {"exit": 0}
        assert b"".join(frames) == b"\x01got hello\n"
    out = subprocess.run([sys.executable, "-m", "rackfire", "exec", f"{stack}/web/0", "--",
                          "true"], env={**server.env, "RACKFIRE_TOKEN": "wrong"},
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "token" in out.stderr and "Traceback" not in out.stderr

    server.cli("destroy", stack, "-y")


def test_logs_tail_prefixes_and_follow(server: Server, tmp_path: Path) -> None:
    stack = unique("lg")
    lines_stack(server, tmp_path, stack)

    assert server.cli("logs", f"{stack}/web/0", "--tail", "2").stdout == "line4\nline5\n"
    everything = server.cli("logs", f"{stack}/web-0", "-n", "0").stdout.splitlines()
    assert everything[0].startswith("--- rackfire: starting") and everything[1:] == [
        f"line{i}" for i in range(1, 6)]
    # A role's history is merged in the order its lines were written (by their stamps).
    assert sorted(server.cli("logs", f"{stack}/web", "-n", "1").stdout.splitlines()) == [
        "web-0 | line5", "web-1 | line5"]
    merged = server.cli("logs", stack, "-n", "2", "-t").stdout.splitlines()
    stamps = [line.split(" | ")[1].split(" ")[0] for line in merged]
    assert stamps == sorted(stamps) and all(s.endswith("Z") for s in stamps), merged
    assert sorted(line.split(" | ")[0] + " " + line.split(" ", 3)[3] for line in merged) == [
        "web-0 line4", "web-0 line5", "web-1 line4", "web-1 line5"]
    as_json = server.cli("logs", f"{stack}/web", "-n", "1", "--json").stdout.splitlines()
    assert sorted((json.loads(line) for line in as_json), key=lambda o: o["instance"]) == [
        {"instance": "web-0", "line": "line5"}, {"instance": "web-1", "line": "line5"}]
    [stamped] = server.cli("logs", f"{stack}/web/1", "-n", "1", "-t", "--json").stdout \
        .splitlines()
    assert json.loads(stamped)["line"] == "line5" and json.loads(stamped)["time"] in stamps
    assert json.loads(server.cli("logs", f"{stack}/web/1", "-n", "1", "--json").stdout) == {
        "instance": "web-1", "line": "line5"}

    for target, needle in [(f"{stack}/web/7", "no instance"), (f"{stack}/db", "no instances"),
                           (unique("nostack"), "no stack"), ("a/b/c/d", "is not STACK")]:
        out = server.cli("logs", target, check=False)
        assert out.returncode == 1 and needle in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    r = httpx.get(f"{server.url}/v1/instances/{stack}.web.0/logs", timeout=10)
    assert r.status_code == 401

    # -f: the history, then what the instance writes after the follow began, as it comes.
    one = rackfire(server, "logs", "-f", "-n", "1", f"{stack}/web/1",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    role = rackfire(server, "logs", "-f", "-n", "1", f"{stack}/web",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert one.stdout is not None and role.stdout is not None
        seen_one = read_until(one.stdout.fileno(), b"line5\n", 20)
        seen_role = read_until(role.stdout.fileno(), b"web-1 | line5\n", 20)
        for i in (1, 0):
            server.cli("exec", f"{stack}/web/{i}", "--", "sh", "-c",
                       f"echo live-from-{i} >> /proc/1/fd/1")
        assert read_until(one.stdout.fileno(), b"live-from-1\n", 10, seen_one) == (
            b"line5\nlive-from-1\n")
        seen_role = read_until(role.stdout.fileno(), b"web-0 | live-from-0\n", 10, seen_role)
        assert b"web-1 | live-from-1\n" in seen_role

        # Ctrl-C ends a follow quietly.
        role.send_signal(signal.SIGINT)
        assert role.wait(10) == 0
        assert role.stderr is not None and role.stderr.read() == b""

        # A follow ends by itself when its instance is destroyed.
        server.cli("destroy", stack, "-y")
        assert one.wait(20) == 0
    finally:
        for p in (one, role):
            if p.poll() is None:
                p.kill()
                p.wait(10)
            for pipe in (p.stdout, p.stderr):
                if pipe is not None:
                    pipe.close()


def test_exec_health_check(server: Server, tmp_path: Path) -> None:
    stack = unique("eh")
    file = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  db:
    image: base
    command: [sleep, "100000"]
    resources: {{memory: 64M, disk: 32M}}
    health:
      exec: [sh, -c, "test ! -f /tmp/bad || {{ echo found /tmp/bad >&2; exit 3; }}"]
      interval: 300ms
      retries: 1
      grace: 0s
    restart: {{attempts: 1, window: 10m}}
""")
    server.cli("up", "-f", str(file))
    row = server.ps(stack)[0]
    assert row["health"] == "healthy"

    # The check runs inside the instance: a file there makes it fail, with its exit code and
    # last line; /tmp is on the instance's disk, so a restart does not help and it fails.
    server.cli("exec", f"{stack}/db/0", "--", "touch", "/tmp/bad")
    row = wait_for(lambda: (r := server.ps(stack)[0])["state"] == "failed" and r, 60,
                   "db-0 to fail its check")
    assert "exit 3: found /tmp/bad" in row["health_message"], row
    server.cli("destroy", stack, "-y")


def test_exec_and_logs_on_the_process_runtime(tmp_path: Path) -> None:
    server = Server(tmp_path / "pdata", runtime="process")
    stack = unique("pe")
    file = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: [sh, -c, "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 100000"]
    env: {{GREETING: hi there}}
""")
    server.start()
    try:
        server.cli("up", "-f", str(file))
        workdir = (server.data_dir / "instances" / f"{stack}.web.0" / "work").resolve()
        out = server.cli("exec", f"{stack}/web/0", "--", "sh", "-c",
                         'echo "$RACKFIRE_ROLE $GREETING|$(pwd)"; echo oops >&2; exit 5',
                         check=False)
        assert (out.returncode, out.stdout, out.stderr) == (
            5, f"web hi there|{workdir}\n", "oops\n")
        wait_for(lambda: "line5" in server.cli("logs", f"{stack}/web/0").stdout, 10, "line5")
        assert server.cli("logs", f"{stack}/web/0", "-n", "2").stdout == "line4\nline5\n"
        assert server.cli("logs", stack, "-n", "1").stdout == "web-0 | line5\n"
        seen, code = shell_session(server, f"{stack}/web/0", b"# ")
        assert b"\r\n42\r\n" in seen and code == 3
        server.cli("destroy", stack, "-y")
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.cli("destroy", stack, "-y", check=False)
        server.stop()
