"""Reading console logs for `rackfire logs`: tails, and following a file that is appended
to, truncated or replaced (the host's half, agent/logfile.py), shown as the API shows the
records its host streams (streaming.py's Display)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from rackfire.agent import logfile
from rackfire.agent.logfile import LogFile
from rackfire.agent.streams import InProcessStreams
from rackfire.api.hostlogs import HostLog, merged_history
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState
from rackfire.model.logs import rotated
from rackfire.model.stack import RuntimeKind
from rackfire.runtime.logshim import RotatingLog, encode, timestamp
from rackfire.streaming import Display

KEY = InstanceKey("shop", "web", 0)


class Shown:
    """A LogFile's records as the API shows them."""

    def __init__(self, path: Path, prefix: bytes = b"") -> None:
        self.file = LogFile(path)
        self.display = Display(prefix)

    def history(self, tail: int, *, keep_partial: bool) -> bytes:
        self.file.begin(tail)
        out = b"".join(self.display.feed(c) for c in self.file.history())
        return out if keep_partial else out + self.display.flush()

    def poll(self) -> bytes:
        return self.display.feed(self.file.poll()) + self.display.flush_if_stale()

    def missing(self) -> bool:
        return self.file.missing()

    def close(self) -> None:
        self.file.close()


def history(path: Path, tail: int, prefix: bytes = b"") -> bytes:
    log = Shown(path, prefix)
    try:
        return log.history(tail, keep_partial=False)
    finally:
        log.close()


@pytest.mark.parametrize(("text", "n", "want"), [
    (b"", 3, b""),
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),  # a last line without its newline counts
    (b"a\nb\n", 5, b"a\nb\n"),
    (b"\n\nx\n", 2, b"\nx\n"),
])
def test_tail(tmp_path: Path, text: bytes, n: int, want: bytes) -> None:
    f = tmp_path / "log"
    f.write_bytes(text)
    assert history(f, n) == want


def test_tail_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfile, "CHUNK", 7)  # lines straddle the blocks read backwards
    f = tmp_path / "log"
    f.write_bytes(b"".join(b"line%d\n" % i for i in range(100)))
    assert history(f, 3) == b"line97\nline98\nline99\n"
    assert history(f, 0).count(b"\n") == 100


def test_prefix_whole_lines_and_partial(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"one\ntwo\nthr")
    assert history(f, 0, b"w | ") == b"w | one\nw | two\nw | thr\n"
    log = Shown(f, b"w | ")
    assert log.history(0, keep_partial=True) == b"w | one\nw | two\n"
    with open(f, "ab") as fh:
        fh.write(b"ee\nfour\n")
    assert log.poll() == b"w | three\nw | four\n"
    log.close()


def test_follow_appends_truncation_and_replacement(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"old\n")
    log = Shown(f)
    assert log.history(10, keep_partial=True) == b"old\n"
    assert log.poll() == b""
    with open(f, "ab") as fh:
        fh.write(b"new\n")
    assert log.poll() == b"new\n"
    f.write_bytes(b"x\n")  # truncated, then written: from its start again
    assert log.poll() == b"x\n"
    with open(f, "ab") as fh:
        fh.write(b"last of the old file\n")
    tmp = tmp_path / "log.new"
    tmp.write_bytes(b"fresh\n")
    os.replace(tmp, f)  # replaced: the rest of the old one, then the new one
    assert log.poll() == b"last of the old file\nfresh\n"
    f.unlink()
    assert log.poll() == b"" and log.missing()
    f.write_bytes(b"back\n")
    assert log.poll() == b"back\n" and not log.missing()
    log.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rotated_log(path: Path, files: int, lines: int) -> None:
    w = RotatingLog(str(path), 64 * 1024, files)
    batch = 1000
    for first in range(0, lines, batch):
        now = timestamp(time.time_ns())
        w.write([encode(now, b"stdout", b"line %06d" % i) for i in range(first, first + batch)])
    w.close()


def test_history_opens_one_rotated_file_at_a_time(tmp_path: Path) -> None:
    # A stack's history reads every instance's log at once: with every rotated file held
    # open, a big role runs out of file descriptors.
    log = tmp_path / "console.log"
    _rotated_log(log, 40, 60_000)
    assert rotated(log, 39).exists()
    lf = LogFile(log)
    before = _open_fds()
    lf.begin(0)
    assert _open_fds() <= before + 1  # the current file alone
    most, got = 0, bytearray()
    for chunk in lf.history():
        most = max(most, _open_fds() - before)
        got += chunk
    assert most <= 2
    assert got.count(b"\n") == sum(rotated(log, i).read_bytes().count(b"\n") for i in range(40))
    lf.close()


class LogsHost:
    """A host with these instances' logs, streamed as the server's own host streams them
    (agent/streams.py InProcessStreams); it runs no command."""

    def __init__(self, logs: dict[InstanceKey, Path]) -> None:
        self.logs = logs

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return [InstanceFacts(k, InstanceState.RUNNING, RuntimeKind.PROCESS, "h")
                for k in self.logs if stack in (None, k.stack)]

    def log_path(self, key: InstanceKey) -> str:
        return str(self.logs[key])

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> Any:
        raise NotImplementedError

    def link(self, host: str) -> InProcessStreams:
        return InProcessStreams(self)


def test_stack_history_is_read_off_the_event_loop(tmp_path: Path) -> None:
    # The history of a stack (its records merged by time) is read and parsed on worker
    # threads: the server's event loop goes on serving meanwhile.
    paths = [tmp_path / f"w{i}" / "console.log" for i in range(3)]
    for p in paths:
        p.parent.mkdir()
        _rotated_log(p, 100, 60_000)
    host = LogsHost({InstanceKey("shop", "web", i): p for i, p in enumerate(paths)})
    logs = [HostLog(host, k, "h", b"w | ") for k in host.logs]

    async def read() -> tuple[int, float, float]:
        done = False
        longest = 0.0

        async def ticker() -> None:
            nonlocal longest
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                longest, last = max(longest, now - last), now

        ticks = asyncio.create_task(ticker())
        start, lines = time.monotonic(), 0
        try:
            async for chunk in merged_history(logs, 0, False):
                lines += chunk.count(b"\n")
        finally:
            for lf in logs:
                await lf.aclose()
        took = time.monotonic() - start
        done = True
        await ticks
        return lines, took, longest

    lines, took, longest = asyncio.run(read())
    assert lines == 3 * 60_000
    assert longest < max(0.3, took / 4), (longest, took)  # the whole read took ~1 s
