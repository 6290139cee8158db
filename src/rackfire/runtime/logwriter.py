"""Starting and reading an instance's console log writer (runtime/logshim.py, a process of
its own beside each instance run, which stamps and rotates the log), from the runtime's
side: the pipes the instance writes into, its limits file, the log's size on disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import marshal
import os
import py_compile
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rackfire.model.instance import Exit
from rackfire.model.logs import parse, rotated
from rackfire.model.stack import MAX_LOG_FILES, LogLimits
from rackfire.runtime import logshim

SHIM = Path(logshim.__file__)
COMPILED = Path("/run/rackfire/logshim")  # the writer's program, compiled: see `program`


def limits_path(log: Path) -> Path:
    """The writer re-reads it about once a second."""
    return log.with_name("console.limits")


def exit_path(log: Path) -> Path:
    """Where the writer records how the run's main process ended."""
    return log.with_name("exit.json")


def write_limits(log: Path, limits: LogLimits) -> None:
    """Set the log's limits; a running writer takes them within LIMITS_CHECK (1 s)."""
    path = limits_path(log)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{limits.max_size} {limits.max_files}\n")
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Launch:
    """A run for the writer to start: with a `pid_file`, `argv` is a launcher (`runc run
    --detach`) and the main process is the pid it writes there."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path | None = None
    pid_file: Path | None = None


@dataclass(slots=True)
class Writer:
    pid: int  # the writer's own
    main: int | None  # the run's main process, None if it did not start
    rc: int | None  # the launcher's exit status (with a pid file)
    error: str  # why the run could not start at all
    ended: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> bool:
        """Until it has written everything (every writer of the pipes is gone) and its
        main process has ended: whether it is done."""
        return self.ended.wait(timeout)


@functools.cache
def _compiled_name() -> str:
    source = SHIM.read_bytes()
    return f"{hashlib.sha256(source).hexdigest()[:16]}.{sys.implementation.cache_tag}.pyc"


def program() -> str:
    """What the writers run: the shim compiled once per source (`python X.pyc` runs it as
    it is), so that no writer compiles it (3.5 ms) or keeps what compiling left in its
    memory (1.2 MB each); the source itself where /run/rackfire cannot be written. Looked
    for at each start: a removed one is compiled again, never a start that fails."""
    name = _compiled_name()
    target = COMPILED / name
    if not target.exists():
        tmp = COMPILED / f"{name}.{os.getpid()}.tmp"
        try:
            COMPILED.mkdir(parents=True, exist_ok=True)
            py_compile.compile(str(SHIM), cfile=str(tmp), doraise=True)
            os.replace(tmp, target)
        except (OSError, py_compile.PyCompileError):
            with contextlib.suppress(OSError):
                tmp.unlink()
            return str(SHIM)
    return str(target)


def launch(log: Path, limits: LogLimits, banner: str, run: Launch) -> Writer:
    """Start a writer for `log`, its first record `banner`, and have it start `run` with
    its stdout and stderr the writer's pipes: the run's main process is the writer's
    child, whose exit it records (`read_exit`)."""
    write_limits(log, limits)
    log.touch()  # there from the start, as the runtime returns (the writer appends to it)
    with contextlib.suppress(FileNotFoundError):
        exit_path(log).unlink()  # an earlier run's
    request = {"argv": list(run.argv), "env": run.env, "exit_file": str(exit_path(log)),
               "cwd": str(run.cwd) if run.cwd else None,
               "pid_file": str(run.pid_file) if run.pid_file else None}
    argv = [sys.executable, "-I", "-S", program(), str(log), str(limits_path(log)), banner]
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        # posix_spawn, not Popen: the writer outlives this process, and a Popen object
        # still running when it is collected warns. An empty environment: it lives as long
        # as the instance, and needs nothing of the server's (its tokens least of all);
        # the run's env comes in the request, never on a command line.
        pid = os.posix_spawn(sys.executable, argv, {}, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, req_r, 0), (os.POSIX_SPAWN_DUP2, ans_w, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2)])
    except OSError:
        for fd in (req_w, ans_r):
            os.close(fd)
        raise
    finally:
        for fd in (req_r, ans_w, devnull):
            os.close(fd)
    # marshal both ways: the writer imports no json (7 ms and 1 MB more each)
    with os.fdopen(req_w, "wb") as f:
        f.write(marshal.dumps(request))
    with os.fdopen(ans_r, "rb") as f:
        data = f.read()  # with a pid file: once the launcher has exited
    try:
        answer = marshal.loads(data)  # noqa: S302 (a pipe from our own writer)
    except (EOFError, ValueError, TypeError):
        answer = None
    if not isinstance(answer, dict):
        answer = {"error": "the log writer ended before it started the run"}
    writer = Writer(pid, answer.get("pid"), answer.get("rc"), answer.get("error", ""))
    # Reaped as soon as it ends (not a zombie until the next start), by a thread of its own
    # blocked in waitpid: no SIGCHLD handler to share with the rest of the server.
    threading.Thread(target=_reap, args=(writer,), name=f"logwriter-{pid}",
                     daemon=True).start()
    return writer


def _reap(writer: Writer) -> None:
    """Collect the writer when it ends (it is this process' child until this process exits;
    then init's)."""
    with contextlib.suppress(ChildProcessError):  # reaped by someone else: ended too
        os.waitpid(writer.pid, 0)
    writer.ended.set()


def read_exit(log: Path, pid: int | None) -> Exit | None:
    """How the run whose main process was `pid` ended, if its writer saw it end."""
    try:
        data = json.loads(exit_path(log).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or pid is None or data.get("pid") != pid:
        return None  # an earlier run's, or not the writer's
    code, sig = data.get("code"), data.get("signal")
    return Exit(code if isinstance(code, int) else None, sig if isinstance(sig, int) else None,
                float(data.get("at") or 0.0))


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


def tail_lines(log: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    """The last lines of the current file (of its last `max_bytes`), without their stamps;
    "" if there is none."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(parse(line).content.decode(errors="replace").rstrip()
                     for line in data.splitlines()[-lines:] if line)


def tail_text(log: Path, lines: int = 5) -> str:
    """The last lines of the current file, without their stamps, for an error message."""
    if not log.exists():
        return "(no log)"
    texts = [t.strip() for t in tail_lines(log, lines).splitlines()]
    return " | ".join(t for t in texts if t) or "(no output)"
