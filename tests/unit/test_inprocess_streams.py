"""The server's own host's logs and exec (agent/streams.py InProcessStreams): the same host
halves a joined host's agent serves over HTTP, to the API without a wire: log records with
the history's size first, exec frames in the websocket's protocol, a command killed when
the API end closes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from rackfire.agent.streams import InProcessStreams
from rackfire.errors import NotFound, PrereqError
from rackfire.model.agent import ExecStream
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState
from rackfire.model.stack import RuntimeKind
from rackfire.runtime.base import ExecHandle
from rackfire.runtime.execproc import ExecProcess, start_on_pty
from rackfire.runtime.logshim import encode, timestamp

KEY = InstanceKey("shop", "web", 0)


class Host:
    """One instance, whose commands run here as plain processes (as the process runtime's)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.present = True
        self.started: list[subprocess.Popen[bytes]] = []

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return [InstanceFacts(KEY, InstanceState.RUNNING, RuntimeKind.PROCESS, "h")] \
            if self.present and stack in (None, KEY.stack) else []

    def log_path(self, key: InstanceKey) -> str:
        return str(self.log)

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        if key != KEY:
            raise NotFound(f"no instance {key} on host h")
        if tty:
            handle = start_on_pty(lambda pty: ExecProcess(
                ["setsid", "--ctty", "--wait", *argv], stdin=pty, stdout=pty, stderr=pty,
                start_new_session=True))
        else:
            handle = ExecHandle(ExecProcess(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            start_new_session=True))
        self.started.append(handle.proc)
        return handle


def records(*lines: bytes) -> bytes:
    return b"".join(encode(timestamp(time.time_ns()), b"stdout", line) for line in lines)


def test_a_log_streams_its_records_its_history_first(tmp_path: Path) -> None:
    host = Host(tmp_path / "console.log")
    host.log.write_bytes(records(b"one", b"two", b"three"))
    streams = InProcessStreams(host)

    async def run() -> tuple[int, bytes, bytes]:
        s = await streams.log_stream(KEY, 2, True)
        got = b""
        while len(got) < s.history:
            got += await anext(s.chunks)
        with open(host.log, "ab") as f:
            f.write(records(b"four"))
        live = await asyncio.wait_for(anext(s.chunks), 5)
        host.present = False  # gone from this host: the follow ends by itself
        host.log.unlink()
        rest = [c async for c in s.chunks]
        await s.close()
        return s.history, got, live + b"".join(rest)

    history, got, live = asyncio.run(run())
    assert history == len(got)  # the records as they are on disk, stamps and all
    assert [r.split(b" ", 3)[3] for r in got.splitlines()] == [b"two", b"three"]
    assert [r.split(b" ", 3)[3] for r in live.splitlines()] == [b"four"]


def test_a_log_of_an_instance_elsewhere_is_refused_before_any_byte(tmp_path: Path) -> None:
    host = Host(tmp_path / "console.log")
    host.present = False
    with pytest.raises(NotFound):
        asyncio.run(InProcessStreams(host).log_stream(KEY, 10, False))


def test_a_log_stream_closed_unread_closes_its_file(tmp_path: Path) -> None:
    host = Host(tmp_path / "console.log")
    host.log.write_bytes(records(b"one"))

    async def run() -> None:
        s = await InProcessStreams(host).log_stream(KEY, 0, True)
        await s.close()

    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(run())
    assert len(os.listdir("/proc/self/fd")) <= before


async def session(conn: ExecStream, *frames: str | bytes) -> tuple[bytes, bytes, object]:
    """Send the frames; (stdout, stderr, the last frame) once the host closes."""
    for f in frames:
        await conn.send(f)
    out, err, last = b"", b"", None
    while (frame := await asyncio.wait_for(conn.receive(), 10)) is not None:
        if isinstance(frame, bytes):
            if frame[0] == 1:
                out += frame[1:]
            else:
                err += frame[1:]
        else:
            last = json.loads(frame)
    await conn.close()
    return out, err, last


def start(argv: list[str], tty: bool = False, **kw: int) -> str:
    return json.dumps({"argv": argv, "tty": tty, **kw})


def test_exec_frames_exit_code_stdin_and_streams_apart(tmp_path: Path) -> None:
    streams = InProcessStreams(Host(tmp_path / "console.log"))

    async def run(*frames: str | bytes) -> tuple[bytes, bytes, object]:
        return await session(await streams.exec_stream(KEY), *frames)

    assert asyncio.run(run(start(["sh", "-c", "echo hi; echo oops >&2; exit 3"]))) == (
        b"hi\n", b"oops\n", {"exit": 3})
    assert asyncio.run(run(start(["sh", "-c", "wc -l"]), b"a\nb\n", b"c\n",
                           json.dumps({"eof": True}))) == (b"3\n", b"", {"exit": 0})
    # With a tty: one stream, its size as the client said, ^D for the end of input.
    out, err, last = asyncio.run(run(start(["sh", "-c", "stty size; cat"], True, rows=30,
                                           cols=100), b"x\n", json.dumps({"eof": True})))
    assert b"30 100" in out and b"x" in out and err == b"" and last == {"exit": 0}


def test_exec_refusals_are_last_frames(tmp_path: Path) -> None:
    streams = InProcessStreams(Host(tmp_path / "console.log"))

    async def run(key: InstanceKey, *frames: str | bytes) -> object:
        return (await session(await streams.exec_stream(key), *frames))[2]

    last = asyncio.run(run(KEY, b"not json"))
    assert isinstance(last, dict) and last["error"]["code"] == PrereqError.code
    last = asyncio.run(run(InstanceKey("shop", "web", 9), start(["true"])))
    assert isinstance(last, dict) and last["error"]["code"] == NotFound.code
    last = asyncio.run(run(KEY, start(["/nonexistent/command"])))
    assert isinstance(last, dict) and "cannot start" in last["error"]["message"]


def test_closing_the_api_end_kills_the_command(tmp_path: Path) -> None:
    host = Host(tmp_path / "console.log")
    streams = InProcessStreams(host)

    async def run() -> None:
        conn = await streams.exec_stream(KEY)
        await conn.send(start(["sh", "-c", "echo started; exec sleep 1000"]))
        assert await asyncio.wait_for(conn.receive(), 10) == b"\x01started\n"
        await asyncio.wait_for(conn.close(), 10)

    asyncio.run(run())
    [proc] = host.started
    assert proc.poll() is not None  # killed, and reaped
