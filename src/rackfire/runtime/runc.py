"""runc on one root (its state dir): a container's state, started detached, stopped, its
limits updated live, a command run in it. Containers are named by instance id; what they run
on (the bundle, the disks, the netns) is container.py's.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rackfire.errors import ExecError
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, Resources
from rackfire.runtime import runcstate
from rackfire.runtime.base import ExecHandle
from rackfire.runtime.execproc import RuncExecProcess, start_on_pty
from rackfire.runtime.oci import CPU_PERIOD


class Runc:
    def __init__(self, root: Path) -> None:
        self.root = root

    def state(self, cid: str) -> str | None:
        return self.state_pid(cid)[0]

    def state_pid(self, cid: str) -> tuple[str | None, int | None]:
        c = runcstate.container(self.root, cid)
        return (c.status, c.pid) if c else (None, None)

    def has(self, cid: str) -> bool:
        """Whether runc has a container of that id, running or not."""
        return (self.root / cid).exists()

    def call(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Only for commands that start no container: those may use pipes safely.
        proc = subprocess.run(["runc", "--root", str(self.root), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if check and proc.returncode != 0:
            raise ExecError(f"runc {args[0]} failed: {proc.stderr.strip()}")
        return proc

    def run_detached(self, cid: str, bundle: Path, pid_file: Path, *,
                     create: bool = False) -> tuple[str, ...]:
        """The argv of `runc run --detach` (`runc create` with `create`: made, its init
        waiting for `runc start`), for the log writer to start (logwriter.Launch): the
        container inherits runc's stdio, and its init's pid goes to `pid_file`."""
        verb = ("create",) if create else ("run", "--detach")
        return (shutil.which("runc") or "runc", "--root", str(self.root), *verb,
                "--pid-file", str(pid_file), "--bundle", str(bundle), "--", cid)

    def stop(self, cid: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout`; then remove the container (and cgroup)."""
        state, pid = self.state_pid(cid)
        if state is None:
            return
        if state == "running":
            # PID 1 of a pid namespace never gets a signal it has no handler for: when the
            # command does not catch SIGTERM, waiting for it to act on one is pure delay.
            if pid is not None and not _catches_sigterm(pid):
                timeout = 0.0
            self.call("kill", cid, "TERM", check=False)
            deadline = time.monotonic() + timeout
            while self.state(cid) == "running" and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.state(cid) == "running":
                self.call("kill", "--all", cid, "KILL", check=False)
                deadline = time.monotonic() + 5
                while self.state(cid) == "running" and time.monotonic() < deadline:
                    time.sleep(0.02)
        self.call("delete", "--force", cid, check=False)

    def update_limits(self, key: InstanceKey, new: Resources, old: Resources | None) -> None:
        proc = self.call("update", *_update_args(new), key.id, check=False)
        if proc.returncode == 0:
            return
        # runc writes memory, then cpu, then pids, and stops at the first the kernel refuses
        # (its own roll-back re-applies the new values): put back what may have taken.
        if old is not None:
            self.call("update", *_update_args(old), key.id, check=False)
        why = _runc_error(proc.stderr)
        hint = ("the kernel refuses a memory limit below what the instance uses now (it "
                "cannot swap); give it more, or stop and start it to run under the new limit"
                if "memory" in why else "")
        raise ExecError(f"cannot resize {key} live (its limits are unchanged): {why}",
                        hint=hint)

    def exec(self, cid: str, argv: list[str], tty: bool) -> ExecHandle:
        """`runc exec` in the foreground: it takes env, cwd, user, capabilities and rlimits
        from the bundle's config.json (the running command's), and passes the command's
        exit status on. With a tty, runc's own stdio is our pty: `runc exec -t` makes a pty
        inside the container (a controlling terminal, so job control and Ctrl-C work),
        copies between the two, and resizes the inner one on SIGWINCH. (--console-socket
        would need --detach, which loses the exit status.)"""
        args = ["runc", "--root", str(self.root), "exec", "--cwd", "/"]
        if not tty:
            return ExecHandle(RuncExecProcess(
                [*args, "--", cid, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True))
        return start_on_pty(lambda pty: RuncExecProcess(
            [*args, "--tty", "--env", "TERM=xterm", "--", cid, *argv],
            stdin=pty, stdout=pty, stderr=pty, start_new_session=True), raw=True)


def _update_args(r: Resources) -> list[str]:
    """`runc update` flags for every limit: -1 lifts one (0 would leave it unchanged)."""
    memory = str(r.memory) if r.memory is not None else "-1"
    quota = str(int(r.cpu * CPU_PERIOD)) if r.cpu is not None else "-1"
    pids = str(r.pids) if r.pids is not None else "-1"
    # swap == memory: no swap, so the limit stays a hard one (as oci_config sets it).
    return ["--memory", memory, "--memory-swap", memory, "--cpu-quota", quota,
            "--cpu-period", str(CPU_PERIOD), "--pids-limit", pids]


def _runc_error(stderr: str) -> str:
    """The messages of runc's `level=error msg="..."` log lines, else its whole stderr."""
    msgs = [m.group(1).replace('\\"', '"') for line in stderr.splitlines()
            if "level=error" in line and (m := re.search(r'msg="((?:[^"\\]|\\.)*)"', line))]
    return "; ".join(msgs) or stderr.strip() or "runc update failed"


def _catches_sigterm(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except (OSError, ValueError):
        pass
    return True  # unknown: be patient
