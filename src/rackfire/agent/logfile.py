"""An instance's console log on its host, read for `rackfire logs`: the host half, whose
records the API merges and shows (streaming.py `Display`), whichever host it is on.

`LogFile` reads the log's records as they are on disk: its last N across the rotated files
(`console.log.N` ... `.1`, then the current one), then, following, what is written next,
across rotations as `tail -F` does (a new inode at the path: the rest of the old file, then
every file rotated after it, by inode, then the new one), and copes with the file being
truncated or replaced. `follow_log` streams one, read on worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from starlette.concurrency import run_in_threadpool

from rackfire.model.logs import rotated
from rackfire.model.stack import MAX_LOG_FILES
from rackfire.streaming import CHUNK, GONE_CHECK, POLL

_T = TypeVar("_T")


class _Open:
    """One file of a log, by its inode: held open while it is read (a rotation renames or
    drops it; what was read on stays readable). The rotated files of a history are opened
    one at a time as they are read (a stack's history would hold up to MAX_LOG_FILES of
    every instance open at once), found again by inode: a rotation meanwhile gives one the
    next index, or drops it."""

    def __init__(self, f: BinaryIO | None, ino: int, index: int = 0, end: int = 0) -> None:
        self.f = f
        self.ino = ino
        self.index = index  # where it was last seen: rotated(path, index)
        self.pos = 0
        self.end = end  # its size when the history was taken

    @staticmethod
    def of(path: Path) -> _Open | None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - held open while it is read
        except OSError:
            return None
        return _Open(f, os.fstat(f.fileno()).st_ino)

    def reopen(self, log: Path) -> bool:
        """Open it again (if it is not): whether it is still there."""
        if self.f is not None:
            return True
        for i in range(self.index, MAX_LOG_FILES + 1):
            o = _Open.of(rotated(log, i))
            if o is None:
                continue
            assert o.f is not None
            if o.ino == self.ino:
                self.f, self.index = o.f, i
                return True
            o.f.close()
        return False

    def shut(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class LogFile:
    """One console log, read on from where it was left: `begin` marks its last records,
    `history` reads them, `poll` what was written since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files: list[_Open] = []  # oldest first; the last is the current file
        self._gone = False

    def begin(self, tail: int) -> int:
        """Open the log at its last `tail` records (0: all) as of now, across its rotated
        files: how many bytes they are (what `history` yields)."""
        self.close()
        current = _Open.of(self.path)
        if current is None:
            self._gone = True
            return 0
        assert current.f is not None
        current.end = os.fstat(current.f.fileno()).st_size
        # The current file first: a rotation meanwhile shows up as a file seen twice.
        files, seen = [current], {current.ino}
        for i in range(1, MAX_LOG_FILES + 1):
            try:
                st = rotated(self.path, i).stat()
            except OSError:
                break
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                files.append(_Open(None, st.st_ino, i, st.st_size))
        files.reverse()
        if tail:
            need = tail
            for k in range(len(files) - 1, -1, -1):
                o = files[k]
                if not o.reopen(self.path):
                    o.end = 0  # dropped by a rotation meanwhile
                    continue
                assert o.f is not None
                o.pos, found = _tail_scan(o.f, o.end, need)
                if o is not current:
                    o.shut()
                need -= found
                if need <= 0:
                    files = files[k:]
                    break
        self._files = files
        return sum(o.end - o.pos for o in files)

    def history(self) -> Iterator[bytes]:
        """What `begin` marked, in chunks; the older files are closed as they are read."""
        while self._files:
            o = self._files[0]
            while o.pos < o.end and o.reopen(self.path):
                assert o.f is not None
                o.f.seek(o.pos)
                data = o.f.read(min(CHUNK * 16, o.end - o.pos))
                if not data:
                    break
                o.pos += len(data)
                yield data
            if len(self._files) == 1:
                break
            o.shut()
            self._files.pop(0)

    def poll(self) -> bytes:
        """What was written since the last call (or since `begin`'s history)."""
        self._follow_path()
        out = bytearray()
        budget = CHUNK * 64  # a bound per poll: the next poll reads on
        while self._files and budget > 0:
            o = self._files[0]
            if not o.reopen(self.path):  # dropped before it was read
                self._files.pop(0)
                continue
            assert o.f is not None
            o.f.seek(o.pos)
            data = o.f.read(budget)
            o.pos += len(data)
            budget -= len(data)
            out += data
            if len(self._files) == 1:
                break
            if not data:  # a file rotated away, read to its end
                o.shut()
                self._files.pop(0)
        return bytes(out)

    def _follow_path(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._gone = True  # gone, or between a rotation's rename and its new file
            return
        self._gone = False
        if not self._files:  # it had no log yet: every file there is new
            self._files = self._newer_than(-1)
            self._gone = not self._files
            return
        live = self._files[-1]
        if st.st_ino != live.ino:
            # Rotated (or replaced): ours is read to its end, then the ones after it.
            self._files.extend(self._newer_than(live.ino))
        elif st.st_size < live.pos:  # truncated: start over
            live.pos = 0

    def _newer_than(self, ino: int) -> list[_Open]:
        """The files written after the one with inode `ino`, oldest first, the current one
        last: the rotated files up to ours (all of them if ours was dropped already)."""
        current = _Open.of(self.path)
        newer: list[_Open] = []
        for i in range(1, MAX_LOG_FILES + 1):
            o = _Open.of(rotated(self.path, i))
            if o is None:
                break
            if o.ino == ino or (current is not None and o.ino == current.ino) \
                    or any(o.ino == n.ino for n in newer):
                o.shut()
                if o.ino == ino:
                    break
                continue
            newer.append(o)
        newer.reverse()
        return newer + ([current] if current is not None else [])

    def missing(self) -> bool:
        return self._gone

    def close(self) -> None:
        for o in self._files:
            o.shut()
        self._files = []


def _tail_scan(f: BinaryIO, size: int, lines: int) -> tuple[int, int]:
    """Where the last `lines` lines of the first `size` bytes start (a last line without
    its newline counts), and how many lines that is (fewer: the file has no more)."""
    end = size
    if size:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            end = size - 1
    pos, seen = end, 0
    while pos > 0:
        step = min(CHUNK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            seen += 1
            if seen == lines:
                return pos + i + 1, seen
    return 0, seen + (1 if end > 0 else 0)


def _step(it: Iterator[_T]) -> _T | None:
    """The next of `it`, or None at its end (for a worker thread: a StopIteration cannot
    cross into the event loop)."""
    return next(it, None)


async def follow_log(lf: LogFile, follow: bool,
                     exists: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
    """One log after `lf.begin(...)`: the history, then (follow) what it gets next, until the
    reader goes (the generator is closed or its task cancelled) or the instance is gone
    (`exists`, asked on a worker thread while the log is missing). The file is read on
    worker threads (a read is not abandoned when cancelled: the file is closed after it)."""
    try:
        history = lf.history()
        while (chunk := await run_in_threadpool(_step, history)) is not None:
            if chunk:
                yield chunk
        if not follow:
            return
        checked = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            data = await run_in_threadpool(lf.poll)
            if data:
                yield data
            if time.monotonic() - checked < GONE_CHECK:
                continue
            checked = time.monotonic()
            if lf.missing() and not await asyncio.to_thread(exists):
                return
    finally:
        lf.close()
