"""A command started inside an instance (`rackfire exec`, exec health checks).

`kill()` and `terminate()` signal the command's whole process group, not only the process we
started: runc does not pass SIGKILL on (killing `runc exec` would orphan the command inside
the container), and a shell's children would outlive the shell. `send_signal()` is left as is:
SIGWINCH must reach `runc exec`, which resizes the container's terminal on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tty
from collections.abc import Callable
from pathlib import Path

from rackfire.runtime.base import ExecHandle


class ExecProcess(subprocess.Popen[bytes]):
    """The command itself, started in its own session."""

    def terminate(self) -> None:
        self._signal_command(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_command(signal.SIGKILL)

    def _targets(self) -> list[int]:
        return [self.pid]

    def _signal_command(self, sig: signal.Signals) -> None:
        if self.poll() is not None:
            return
        targets = self._targets()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # its own group (it is a session leader)
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        if not targets:  # not started yet: stop the starter itself
            self.send_signal(sig)


class RuncExecProcess(ExecProcess):
    """`runc exec` in the foreground: the command is runc's child (runc clones it with
    CLONE_PARENT) and a session leader inside the container."""

    def _targets(self) -> list[int]:
        pids: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    pids += [int(p) for p in (task / "children").read_text().split()]
        return pids


def start_on_pty(start: Callable[[int], ExecProcess], *, raw: bool = False) -> ExecHandle:
    """`start(slave)` with a new pty's slave as its stdio; the handle keeps the master. `raw`
    makes the slave raw from the start: `runc exec -t` makes it raw too, but only once it
    runs, and what came before (a ^D) would be taken as a line discipline's (echoed as ^@)
    instead of being passed to the container's own pty."""
    master, slave = os.openpty()
    try:
        if raw:
            tty.setraw(slave)
        proc = start(slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return ExecHandle(proc, master)
