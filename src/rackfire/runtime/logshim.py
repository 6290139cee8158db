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

Standard library only, run by path with `-I -S`: one runs beside every instance, so it
imports as little as it can: about 5 MB of memory of its own (RssAnon, measured on
Python 3.11: 4.8 MB idle, 5.2 MB after some output; a burst of short lines, 64 KiB of them
a read, takes it to about 10 MB, which it keeps).

    python -I -S logshim.py LOG LIMITS STDOUT_FD STDERR_FD [BANNER]
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import sys
import time

# As model/logs.py and model/stack.py say (tests/unit/test_log_rotation.py checks).
MAX_LINE = 16 * 1024
MAX_FILES = 100
IDLE_FLUSH = 1.0  # a line left without its newline this long is written as a part
LIMITS_CHECK = 1.0  # how often the limits file is looked at
LOCK_WAIT = 10.0  # how long a new writer waits for the previous one to finish
NOT_ROTATING = (b"--- rackfire: the log writer of the previous run is still running (a "
                b"process of that run holds its pipes): this log is not rotated until it ends")


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
        with contextlib.suppress(OSError):
            if self.max_files == 1:
                os.unlink(self.path)
            else:
                for i in range(self.max_files - 1, 0, -1):  # the oldest is replaced: dropped
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(rotated(self.path, i - 1), rotated(self.path, i))
        self._open()

    def _prune(self) -> None:
        """Drop rotated files past max_files (the limit was lowered)."""
        if not self.rotating:
            return
        for i in range(self.max_files, MAX_FILES + 1):
            with contextlib.suppress(OSError):
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
    try:
        with open(path) as f:
            data = json.load(f)
        size, files = int(data["max_size"]), int(data["max_files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (size, files) if size > 0 and 1 <= files <= MAX_FILES else None


def pump(fds: dict[int, bytes], log: RotatingLog, limits: str | None = None,
         lock_fd: int | None = None) -> None:
    """Copy the pipes into `log` until every one of them ends; while `log` is not rotating,
    try for the lock on `lock_fd` about once a second."""
    streams = {fd: Stream(name) for fd, name in fds.items()}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    checked = time.monotonic()
    stamp = _mtime(limits)
    while streams:
        events = poller.poll(IDLE_FLUSH * 500)  # ms
        out: list[bytes] = []
        now_ns = time.time_ns()
        for fd, _ in events:
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


def _mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


def lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def main(argv: list[str]) -> int:
    path, limits = argv[0], argv[1]
    fds = {int(argv[2]): b"stdout", int(argv[3]): b"stderr"}
    banner = argv[4] if len(argv) > 4 else ""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # not the server's terminal's to end
    held = os.open(os.path.join(os.path.dirname(path), "console.lock"),
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    owner = lock(held, LOCK_WAIT)  # the previous run's writer, finishing its last lines
    size, files = read_limits(limits) or (10 * 1024 * 1024, 3)
    log = RotatingLog(path, size, files, rotating=owner)
    now = timestamp(time.time_ns())
    if banner:
        log.write([encode(now, b"stdout", banner.encode())])
    if not owner:
        log.write([encode(now, b"stdout", NOT_ROTATING)])
    try:
        pump(fds, log, limits, held)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
