"""Starting and reading an instance's console log writer (runtime/logshim.py, a process of
its own beside each instance run, which stamps and rotates the log), from the runtime's
side: the pipes the instance writes into, its limits file, the log's size on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rackfire.model.logs import parse, rotated
from rackfire.model.stack import MAX_LOG_FILES, LogLimits
from rackfire.runtime import logshim

SHIM = Path(logshim.__file__)
_spawn_lock = threading.Lock()


def limits_path(log: Path) -> Path:
    """The writer re-reads it about once a second."""
    return log.with_name("console.limits")


def write_limits(log: Path, limits: LogLimits) -> None:
    """Set the log's limits; a running writer takes them within LIMITS_CHECK (1 s)."""
    path = limits_path(log)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(limits)))
    os.replace(tmp, path)


def start(log: Path, limits: LogLimits, banner: str) -> Writer:
    """Start a writer for `log`, its first record `banner`. The caller gives the instance
    the write ends of its pipes, then closes them here (`Writer.close`)."""
    write_limits(log, limits)
    log.touch()  # there from the start, as the runtime returns (the writer appends to it)
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    argv = [sys.executable, "-I", "-S", str(SHIM), str(log), str(limits_path(log)),
            str(r_out), str(r_err), banner]
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        # posix_spawn, not Popen: the writer outlives this process, and a Popen object
        # still running when it is collected warns. The read ends are made inheritable
        # only for this spawn, under the lock, so that no other writer started meanwhile
        # holds them.
        with _spawn_lock:
            for fd in (r_out, r_err):
                os.set_inheritable(fd, True)
            # An empty environment: it lives as long as the instance, and needs nothing of
            # the server's (its tokens least of all).
            pid = os.posix_spawn(sys.executable, argv, {}, setsid=True,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n)
                                               for n in (0, 1, 2)])
    except OSError:
        for fd in (w_out, w_err):
            os.close(fd)
        raise
    finally:
        for fd in (r_out, r_err, devnull):
            os.close(fd)
    writer = Writer(w_out, w_err, pid)
    # Reaped as soon as it ends (not a zombie until the next start), by a thread of its own
    # blocked in waitpid: no SIGCHLD handler to share with the rest of the server.
    threading.Thread(target=_reap, args=(writer,), name=f"logwriter-{pid}",
                     daemon=True).start()
    return writer


@dataclass(slots=True)
class Writer:
    stdout: int  # the write ends of its pipes
    stderr: int
    pid: int
    ended: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        """Close this process' copies of the write ends (the instance has its own)."""
        for fd in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wait(self, timeout: float) -> bool:
        """Until it has written everything (every writer of the pipes is gone): whether it
        is done."""
        return self.ended.wait(timeout)


def _reap(writer: Writer) -> None:
    """Collect the writer when it ends (it is this process' child until this process exits;
    then init's)."""
    with contextlib.suppress(ChildProcessError):  # reaped by someone else: ended too
        os.waitpid(writer.pid, 0)
    writer.ended.set()


def size(log: Path) -> int | None:
    """Bytes in the log's files, rotated ones included; None if it has none."""
    total, found = 0, False
    for i in range(MAX_LOG_FILES + 1):
        try:
            total += rotated(log, i).stat().st_size
            found = True
        except OSError:
            if i:
                break
    return total if found else None


def tail_text(log: Path, lines: int = 5) -> str:
    """The last lines of the current file, without their stamps, for an error message."""
    try:
        data = log.read_bytes()[-64 * 1024:]
    except OSError:
        return "(no log)"
    texts = [parse(line).content.decode(errors="replace").strip()
             for line in data.splitlines()[-lines:]]
    return " | ".join(t for t in texts if t) or "(no output)"
