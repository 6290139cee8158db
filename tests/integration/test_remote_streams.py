"""`rackfire logs` and `rackfire exec` for instances on joined hosts, on the 3-host test bed
(the server runs `--no-local-host`, so every instance is on a joined host): the API streams
the log from the instance's agent and relays the exec websocket to it."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from test_cluster import Cluster, cluster, destroy  # noqa: F401 - cluster: the fixture
from test_exec_logs import rackfire, read_until, shell_session

from harness import unique, wait_for, write_stack

pytestmark = pytest.mark.root

# Two instances (spread: on two hosts), each writing seven numbered lines, then idle.
TALK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  talk:
    image: base
    count: 2
    command: [sh, -c, "for i in 1 2 3 4 5 6 7; do echo $(hostname) line$i; done; exec sleep 100000"]
    resources: {{memory: 32M, disk: 32M}}
    stop_timeout: 1s
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_logs_and_exec_of_instances_on_joined_hosts(cluster: Cluster) -> None:  # noqa: F811
    c = cluster
    stack = unique("rs")
    c.server.cli("apply", "-f", str(write_stack(c.tmp, TALK.format(stack=stack))), "-y",
                 timeout=300)
    rows = {r["name"]: r for r in json.loads(c.server.cli("ps", stack, "--json").stdout)}
    hosts = {rows[n]["host"] for n in ("talk-0", "talk-1")}
    assert len(hosts) == 2 and hosts <= {h.name for h in c.bed.hosts}, rows
    # Its log's path on its own host, as that host's agent reports it.
    assert all(r["log"].endswith(f"/instances/{r['id']}/console.log") for r in rows.values())
    for i in (0, 1):
        wait_for(lambda i=i: f"talk-{i} line7" in c.server.cli(
            "logs", f"{stack}/talk/{i}").stdout, 30, f"talk-{i}'s seventh line")

    # --tail: the last lines of the instance's console, from its host's agent.
    assert c.server.cli("logs", f"{stack}/talk/0", "--tail", "5").stdout == "".join(
        f"talk-0 line{i}\n" for i in range(3, 8))
    # A role across two hosts: each line prefixed, merged in the order they were written
    # (the agents send the stamped records; the server merges them).
    merged = c.server.cli("logs", f"{stack}/talk", "-n", "2", "-t").stdout.splitlines()
    stamps = [line.split(" | ")[1].split(" ")[0] for line in merged]
    assert stamps == sorted(stamps) and all(s.endswith("Z") for s in stamps), merged
    assert sorted(line.split(" | ")[0] + " | " + line.split(" ", 3)[3] for line in merged) == [
        "talk-0 | talk-0 line6", "talk-0 | talk-0 line7",
        "talk-1 | talk-1 line6", "talk-1 | talk-1 line7"]
    as_json = c.server.cli("logs", stack, "-n", "1", "--json").stdout.splitlines()
    assert sorted((json.loads(line) for line in as_json), key=lambda o: o["instance"]) == [
        {"instance": "talk-0", "line": "talk-0 line7"},
        {"instance": "talk-1", "line": "talk-1 line7"}]

    # exec runs in the instance, on its host: output, exit code, stderr apart, stdin.
    out = c.server.cli("exec", f"{stack}/talk/0", "--", "sh", "-c", "echo hi; exit 3",
                       check=False)
    assert (out.returncode, out.stdout, out.stderr) == (3, "hi\n", "")
    out = c.server.cli("exec", f"{stack}/talk-1", "--", "sh", "-c",
                       'echo "$(hostname) $RACKFIRE_INDEX"; echo oops >&2')
    assert (out.stdout, out.stderr) == ("talk-1 1\n", "oops\n")
    out = c.server.cli("exec", "-i", f"{stack}/talk/0", "--", "sh", "-c", "wc -l",
                       input="a\nb\n")
    assert out.stdout.strip() == "2"
    audit = [e for e in json.loads(c.server.cli("events", stack, "--json").stdout)
             if e["action"] == "exec"]
    assert any(e["reason"] == "sh -c 'echo hi; exit 3': exit 3" for e in audit), audit
    # A terminal, resized on the way, through both websockets.
    seen, code = shell_session(c.server, f"{stack}/talk/1", b"# ")
    assert b"\r\n42\r\n" in seen and code == 3

    # Refusals are errors with a hint, never tracebacks.
    for args, needle in [(("exec", f"{stack}/talk/9", "--", "true"), "no instance"),
                         (("exec", f"{stack}/talk/0", "--", "no-such-command"),
                          "no-such-command"),
                         (("logs", f"{stack}/talk/9"), "no instance")]:
        out = c.server.cli(*args, check=False)
        assert out.returncode != 0 and needle in out.stderr, out.stderr
        assert "Traceback" not in out.stderr

    # A client that goes away kills the command on the instance's host.
    marker = "sleep 4242"
    gone = rackfire(c.server, "exec", f"{stack}/talk/0", "--", *marker.split(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running() -> bool:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return any(line.startswith(marker) for line in ps.splitlines())

    try:
        wait_for(running, 20, "the command to run")
        gone.kill()
        gone.wait(10)
        wait_for(lambda: not running(), 20, "the command to be killed")
    finally:
        _stop(gone)

    # -f: the history, then what each instance writes after the follow began, as it comes.
    one = rackfire(c.server, "logs", "-f", "-n", "1", f"{stack}/talk/0",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    role = rackfire(c.server, "logs", "-f", "-n", "1", f"{stack}/talk",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert one.stdout is not None and role.stdout is not None
        seen_one = read_until(one.stdout.fileno(), b"talk-0 line7\n", 20)
        seen_role = read_until(role.stdout.fileno(), b"talk-1 | talk-1 line7\n", 20)
        time.sleep(0.5)  # the follows are past their history
        for i in (1, 0):
            c.server.cli("exec", f"{stack}/talk/{i}", "--", "sh", "-c",
                         f"echo live-from-{i} >> /proc/1/fd/1")
        assert read_until(one.stdout.fileno(), b"live-from-0\n", 10, seen_one) == (
            b"talk-0 line7\nlive-from-0\n")
        seen_role = read_until(role.stdout.fileno(), b"talk-0 | live-from-0\n", 10, seen_role)
        assert b"talk-1 | live-from-1\n" in seen_role

        # Ctrl-C ends a follow quietly.
        one.send_signal(signal.SIGINT)
        assert one.wait(10) == 0
        assert one.stderr is not None and one.stderr.read() == b""

        # A follow ends by itself when its instances are gone.
        destroy(c, stack)
        assert role.wait(30) == 0
    finally:
        _stop(one)
        _stop(role)
