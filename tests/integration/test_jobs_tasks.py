"""Runs in real runc containers, through the real CLI and server: `rackfire run` prints the
task's log and exits with its exit code (or 128 + the signal that killed it); a failing
cron job's exit code shows in `jobs` and `events`; a role that does not exist is refused
before anything is made; a run's instance is gone once it ended."""

from __future__ import annotations

import json
import time

import pytest

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: [sleep, "100000"]
    env: {{GREETING: hello from the role}}
    resources: {{memory: 64M, disk: 32M}}
  tick:
    image: base
    command: [sh, -c, "echo tick $RACKFIRE_RUN; exit 3"]
    schedule: "* * * * *"
    resources: {{memory: 32M, disk: 32M}}
"""


def test_run_returns_the_tasks_exit_code_and_a_failing_job_shows(server: Server,
                                                                  tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = unique("jobs")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack))))

    # The role's env and config, its own command: the log printed, the code passed on.
    done = server.cli("run", f"{stack}/web", "--", "sh", "-c", 'echo "$GREETING"; exit 7',
                      check=False, timeout=120)
    assert done.returncode == 7, done.stderr
    assert "hello from the role" in done.stdout
    assert "failed: exited 7" in done.stderr
    ok = server.cli("run", f"{stack}/web", "--", "true", timeout=120)
    assert ok.returncode == 0 and "succeeded: exited 0" in ok.stderr
    # Over its 64M: the kernel's OOM killer ends it (PID 1 of its namespace) by SIGKILL.
    killed = server.cli("run", f"{stack}/web", "--", "python3", "-c",
                        "a = b'x' * (300 << 20)", check=False, timeout=120)
    assert killed.returncode == 128 + 9, killed.stderr
    assert "failed: killed by SIGKILL (OOM)" in killed.stderr

    # Refused before any change: no such role, and no run recorded for it.
    bad = server.cli("run", f"{stack}/nope", "--", "true", check=False)
    assert bad.returncode != 0 and "has no role nope; its roles: web, tick" in bad.stderr
    assert "Traceback" not in bad.stderr

    # The job's next slot runs once, fails with its code, and says so.
    def failed_run() -> dict | None:  # type: ignore[type-arg]
        jobs = json.loads(server.cli("jobs", stack, "--json").stdout)
        return next((r for r in jobs["runs"] if r["kind"] == "job" and r["state"] == "failed"),
                    None)

    run = wait_for(failed_run, 90, "the job's first slot to fail")
    assert (run["exit_code"], run["reason"]) == (3, "exited 3")
    assert f"tick {run['number']}" in run["log"]
    events = server.cli("events", stack).stdout
    assert "exited 3" in events
    table = server.cli("jobs", stack).stdout
    assert "* * * * *" in table and "failed: exited 3" in table

    # Ended runs leave nothing running: only web's instance stays.
    def only_web() -> bool:
        rows = json.loads(server.cli("ps", stack, "--json").stdout)
        return [r["name"] for r in rows] == ["web-0"]

    wait_for(only_web, 30, "the runs' instances to go")
    time.sleep(0.5)
