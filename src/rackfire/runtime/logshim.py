"""An instance's console log writer, the process (as conmon is for podman): it reads the
instance's stdout and stderr from two pipes and writes them to `console.log` as stamped
records (the format of model/logs.py), rotating the file as it goes. runtime/logwriter.py
starts it, one per run of an instance.

It is the only writer of the files and checks each record against `max_size` before it
writes it, so however fast the instance writes, each file stays within `max_size` (a record
is at most MAX_LINE and its stamp, less than the smallest `max_size`) and the log within
`max_size` x `max_files`. A rotation renames `.1` to `.2` ... (the oldest is dropped) and
the current file to `.1`, then starts a new one: a follower sees a new inode.

It runs in a session of its own and outlives a restarted server (the instance keeps
writing into the same pipes); it ends when every writer of the pipes is gone (the instance
stopped). It re-reads the limits file (JSON) about once a second, so a resize reaches a
running instance. It holds an flock on `console.lock` while it runs: the writer of the
instance's next run waits for it to finish (LOCK_WAIT). One that waited in vain (the
previous run's writer is still fed by a stray process of that run) says so in the log and
neither rotates nor prunes, so that one writer alone renames the files, until it gets the
lock: meanwhile it appends to whatever file is current, which may pass `max_size`.

It is also the run's reaper (as conmon is): it starts the run itself, as a child subreaper
(PR_SET_CHILD_SUBREAPER), so the instance's main process is its child, or becomes its
child when the launcher (`runc run --detach`) exits, and nobody else learns how it ended.
It writes that to `exit.json` beside the log: `{"pid", "code", "signal", "at"}`. The
launch request (a marshalled dict: argv, env, cwd, exit_file, pid_file) comes on its stdin
and its answer (`{"pid", "rc"}` or `{"error"}`, marshalled) goes to its stdout, both pipes of
the runtime's;
with a `pid_file` (runc's), the main process is the pid written there, and the answer
waits for the launcher's exit status. Secrets in the env never show in its command line.

Standard library only, run with `-I -S` from its compiled form (logwriter.program): one
runs beside every instance, so it imports as little as it can (no json, signal.py or
contextlib: each imports more). That leaves 3.2 MB of memory of its own (RssAnon, Python
3.11, idle; the bare interpreter is 2.6 MB of it, ctypes for prctl 0.5 MB; it was 5.5 MB with
those imports, from source) and about 10 ms of CPU to start. A burst of short lines (64 KiB
of 21-byte lines a read, 12 MB in all) takes it to 4.6 MB, which it keeps.

    python -I -S logshim.pyc LOG LIMITS [BANNER]   < request   > answer
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import marshal
import os
import select
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: it runs beside every instance
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:  # signal.py imports enum: 13 ms and 0.9 MB more, in every writer
    import _signal as signal

# As model/logs.py and model/stack.py say (tests/unit/test_log_rotation.py checks).
MAX_LINE = 16 * 1024
MAX_FILES = 100
IDLE_FLUSH = 1.0  # a line left without its newline this long is written as a part
LIMITS_CHECK = 1.0  # how often the limits file is looked at
LOCK_WAIT = 10.0  # how long a new writer waits for the previous one to finish
NOT_ROTATING = (b"--- rackfire: the log writer of the previous run is still running (a "
                b"process of that run holds its pipes): this log is not rotated until it ends")


class suppress:
    """As contextlib's, which would import collections and functools (0.8 MB)."""

    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.errors)


def timestamp(ns: int) -> bytes:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % frac


def encode(ts: bytes, stream: bytes, content: bytes, partial: bool = False) -> bytes:
    return b"%s %s %s %s\n" % (ts, stream, b"P" if partial else b"F", content)


def rotated(path: str, index: int) -> str:
    return path if index == 0 else f"{path}.{index}"


class RotatingLog:
    """Appends whole records to `path`, rotating it before a record would pass max_size."""

    def __init__(self, path: str, max_size: int, max_files: int, *,
                 rotating: bool = True) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        self.rotating = rotating  # False: another writer holds the lock (see `take_over`)
        self._fd: int | None = None
        self._ino = -1
        self._size = 0
        self._open()
        self._prune()

    def set_limits(self, max_size: int, max_files: int) -> None:
        self.max_size, self.max_files = max_size, max_files
        self._prune()

    def take_over(self) -> None:
        """It holds the lock now: the only writer, it rotates again."""
        self.rotating = True
        self._prune()

    def write(self, records: list[bytes]) -> None:
        if not self.rotating:
            self._follow()
            self._write(b"".join(records))
            return
        size = self._size
        total = sum(map(len, records))
        if size + total <= self.max_size:  # the common case: no rotation in this batch
            self._write(b"".join(records))
            return
        batch: list[bytes] = []
        for rec in records:
            if size and size + len(rec) > self.max_size:
                self._write(b"".join(batch))
                batch = []
                self._rotate()
                size = self._size
            batch.append(rec)
            size += len(rec)
        self._write(b"".join(batch))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o640)
            st = os.fstat(self._fd)
            self._ino, self._size = st.st_ino, st.st_size
        except OSError:
            self._fd = None  # its dir is gone (the instance destroyed): the rest is dropped
            self._size = 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._fd is not None:
            try:
                n = os.write(self._fd, view)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return  # disk full: dropped rather than blocking the instance
            self._size += n
            view = view[n:]

    def _follow(self) -> None:
        """Without the lock: the other writer may have rotated; append to the current file."""
        try:
            same = os.stat(self.path).st_ino == self._ino
        except OSError:
            same = False
        if not same:
            self.close()
            self._open()

    def _rotate(self) -> None:
        self.close()
        try:
            if os.stat(self.path).st_ino != self._ino:
                return  # not ours any more (a later run's, after a destroy): leave it be
        except OSError:
            return
        with suppress(OSError):
            if self.max_files == 1:
                os.unlink(self.path)
            else:
                for i in range(self.max_files - 1, 0, -1):  # the oldest is replaced: dropped
                    with suppress(FileNotFoundError):
                        os.replace(rotated(self.path, i - 1), rotated(self.path, i))
        self._open()

    def _prune(self) -> None:
        """Drop rotated files past max_files (the limit was lowered)."""
        if not self.rotating:
            return
        for i in range(self.max_files, MAX_FILES + 1):
            with suppress(OSError):
                os.unlink(rotated(self.path, i))
        if self._size > self.max_size:
            self._rotate()


class Stream:
    """One of the pipes: its bytes cut into records, a line at a time."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.partial = b""
        self.since = 0  # time.time_ns() its partial line began
        self.idle_from = 0.0  # monotonic: when its partial was last added to

    def feed(self, data: bytes, now_ns: int) -> list[bytes]:
        """Records of the whole lines in `data`, keeping the rest; long lines in parts."""
        if not self.partial:
            self.since = now_ns
        self.idle_from = time.monotonic()
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out: list[bytes] = []
        ts = timestamp(self.since)
        if lines:
            out.extend(self._parts(ts, lines[0], last=True))
            ts = timestamp(now_ns)  # the next lines began in this read
            head = b"%s %s F " % (ts, self.name)  # stamped once a read: a line costs ~1 us
            for line in lines[1:]:
                if len(line) <= MAX_LINE:
                    out.append(head + line + b"\n")
                else:
                    out.extend(self._parts(ts, line, last=True))
        if len(self.partial) >= MAX_LINE:
            out.extend(self._parts(ts, self.partial, last=False))
            self.partial = b""
        elif lines:
            self.since = now_ns
        return out

    def flush(self, *, eof: bool) -> list[bytes]:
        if not self.partial:
            return []
        line, self.partial = self.partial, b""
        return [encode(timestamp(self.since), self.name, line, partial=not eof)]

    def _parts(self, ts: bytes, line: bytes, last: bool) -> list[bytes]:
        out = []
        while len(line) > MAX_LINE:
            out.append(encode(ts, self.name, line[:MAX_LINE], partial=True))
            line = line[MAX_LINE:]
        out.append(encode(ts, self.name, line, partial=not last))
        return out


def read_limits(path: str) -> tuple[int, int] | None:
    """The limits file: `MAX_SIZE MAX_FILES` (logwriter.write_limits)."""
    try:
        with open(path) as f:
            size, files = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    return (size, files) if size > 0 and 1 <= files <= MAX_FILES else None


def pump(fds: dict[int, bytes], log: RotatingLog, limits: str | None = None,
         lock_fd: int | None = None, reaper: Reaper | None = None) -> None:
    """Copy the pipes into `log` until every one of them ends (and the reaper's main process
    has ended); while `log` is not rotating, try for the lock on `lock_fd` about once a
    second."""
    streams = {fd: Stream(name) for fd, name in fds.items()}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    if reaper is not None:
        poller.register(reaper.wakeup, select.POLLIN)
    checked = time.monotonic()
    stamp = _mtime(limits)
    while streams or (reaper is not None and not reaper.done):
        events = poller.poll(IDLE_FLUSH * 500)  # ms
        out: list[bytes] = []
        now_ns = time.time_ns()
        if reaper is not None:
            reaper.reap()  # each turn: a SIGCHLD may come between two polls
        for fd, _ in events:
            if reaper is not None and fd == reaper.wakeup:
                with suppress(OSError):
                    os.read(fd, 4096)
                continue
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            s = streams[fd]
            if data:
                out.extend(s.feed(data, now_ns))
            else:  # every writer of this pipe is gone
                out.extend(s.flush(eof=True))
                poller.unregister(fd)
                os.close(fd)
                del streams[fd]
        now = time.monotonic()
        for s in streams.values():
            if s.partial and now - s.idle_from >= IDLE_FLUSH:  # a prompt, a progress bar
                out.extend(s.flush(eof=False))
        if reaper is not None and reaper.exit is not None:
            out.extend(_drain(streams, now_ns))  # what it wrote before it ended
            log.write(out)
            out = []
            reaper.record()
        if out:
            log.write(out)
        if now - checked < LIMITS_CHECK:
            continue
        checked = now
        if not log.rotating and lock_fd is not None and lock(lock_fd, 0):
            log.take_over()  # the previous run's writer has ended
        if limits is not None and (mtime := _mtime(limits)) != stamp:
            stamp = mtime
            if (new := read_limits(limits)) is not None:
                log.set_limits(*new)


def _drain(streams: dict[int, Stream], now_ns: int) -> list[bytes]:
    """Records of what the pipes hold now, without waiting for more."""
    out: list[bytes] = []
    for fd, s in streams.items():
        os.set_blocking(fd, False)
        try:
            while data := os.read(fd, 1 << 16):
                out.extend(s.feed(data, now_ns))
        except OSError:  # empty for now (BlockingIOError), or gone: the loop sees its end
            pass
        finally:
            os.set_blocking(fd, True)
    return out


def _mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


def lock(fd: int, timeout: float, between: Callable[[], None] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if between is not None:
                between()
            time.sleep(0.02)


class Reaper:
    """The run's processes, as their subreaper: the launcher, and the main process (the
    launcher itself, or the pid its pid file names once it has exited)."""

    def __init__(self, request: dict[str, object], answer: int) -> None:
        self.exit_file = str(request["exit_file"])
        self.pid_file = request.get("pid_file")
        self.answer: int | None = answer
        self.launcher = 0
        self.main: int | None = None
        self.ended: dict[int, int] = {}  # pid -> wait status, of children not known yet
        self.done = False
        self.exit: tuple[int, int] | None = None  # the main process' end, not yet recorded
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
        self.wakeup = r
        # Orphans of the launcher (the container's init) become this process' children.
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def launched(self, pid: int) -> None:
        self.launcher = pid
        if self.pid_file is None:
            self.main = pid
            self._answer({"pid": pid})

    def failed(self, error: str) -> None:
        self.done = True
        self._answer({"error": error})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.ended[pid] = status
        if self.pid_file is not None and self.launcher in self.ended and self.answer is not None:
            rc = os.waitstatus_to_exitcode(self.ended.pop(self.launcher))
            self.main = _read_pid(str(self.pid_file)) if rc == 0 else None
            self._answer({"pid": self.main, "rc": rc})
            if self.main is None:
                self.done = True
        if self.main is not None and self.main in self.ended:
            self.exit = (self.main, self.ended.pop(self.main))  # `record`ed by pump
        self.ended = {p: s for p, s in self.ended.items() if p == self.launcher}

    def _answer(self, answer: dict[str, object]) -> None:
        if self.answer is None:
            return
        with suppress(OSError):
            os.write(self.answer, marshal.dumps(answer))
            os.close(self.answer)
        self.answer = None

    def record(self) -> None:
        """Write how the main process ended, once what it wrote before is in the log: a
        reader that sees the exit finds its last lines (a job's result among them)."""
        assert self.exit is not None
        self._record(*self.exit)
        self.exit, self.done = None, True

    def _record(self, pid: int, status: int) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        tmp = f"{self.exit_file}.tmp"
        with suppress(OSError):  # its dir is gone: the instance was destroyed
            with open(tmp, "w") as f:  # JSON, written by hand: json imports re (7 ms)
                f.write(f'{{"pid": {pid}, "code": {_json_int(code)}, '
                        f'"signal": {_json_int(sig)}, "at": {time.time():.6f}}}')
            os.replace(tmp, self.exit_file)


def _json_int(n: int | None) -> str:
    return "null" if n is None else str(n)


PR_SET_CHILD_SUBREAPER = 36
IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def launch(request: dict[str, object], reaper: Reaper) -> dict[int, bytes]:
    """Start the run with its stdio our pipes: its two pipes' read ends, by name."""
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}  # type: ignore[attr-defined]
    try:
        os.chdir(str(request.get("cwd") or "/"))
        # The signals this process ignores would stay ignored in the run (a shell cannot
        # even trap them then): each back to its default there.
        pid = os.posix_spawnp(argv[0], argv, env, setsid=True, setsigdef=IGNORED, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, w_out, 1),
            (os.POSIX_SPAWN_DUP2, w_err, 2)])
    except OSError as e:
        reaper.failed(f"{argv[0]}: {e.strerror or e}")
        for fd in (r_out, r_err):
            os.close(fd)
        return {}
    finally:
        os.chdir("/")  # holds no dir of the instance's
        for fd in (w_out, w_err, devnull):
            os.close(fd)
    reaper.launched(pid)
    return {r_out: b"stdout", r_err: b"stderr"}


def main(argv: list[str]) -> int:
    path, limits = argv[0], argv[1]
    banner = argv[2] if len(argv) > 2 else ""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)  # not the server's terminal's to end
    request = marshal.loads(sys.stdin.buffer.read())  # noqa: S302 (the runtime's own pipe)
    answer = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1):  # the runtime's pipes are its own again
        os.dup2(devnull, n)
    os.close(devnull)
    reaper = Reaper(request, answer)
    # Its output waits in the pipes until the banner is written.
    fds = launch(request, reaper)
    held = os.open(os.path.join(os.path.dirname(path), "console.lock"),
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    # The previous run's writer, finishing its last lines; the launcher's end is answered
    # meanwhile.
    owner = lock(held, LOCK_WAIT, between=reaper.reap)
    size, files = read_limits(limits) or (10 * 1024 * 1024, 3)
    log = RotatingLog(path, size, files, rotating=owner)
    now = timestamp(time.time_ns())
    if banner:
        log.write([encode(now, b"stdout", banner.encode())])
    if not owner:
        log.write([encode(now, b"stdout", NOT_ROTATING)])
    try:
        pump(fds, log, limits, held, reaper)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
