"""The host-side halves of `rackfire logs` and `rackfire exec`, shared by the server (for its
own host's instances, api/streams.py) and a joined host's agent (agent/rpc.py): reading and
following a console log file, and running a command's stdio over a websocket.

Neutral by the dependency rule: it imports model and errors, never control, api or agent.

Exec protocol, on a websocket with `Authorization: Bearer <secret>` (checked by the route
after the handshake: a wrong one is closed with code 4401 after an `{"error": ...}` frame):

    client → {"argv": [...], "tty": bool, "rows": int?, "cols": int?}     first, JSON text
    client → binary frames: stdin; text {"eof": true}: close stdin (^D on a tty);
             text {"resize": [rows, cols]}: resize the tty
    server → binary frames: first byte the stream (1 stdout, 2 stderr; a tty is all 1),
             then the bytes; finally text {"exit": code} or {"error": {code, message, hint}},
             then close.

A client that goes away kills the command (its whole process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import json
import logging
import os
import signal
import struct
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO

from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketState

from rackfire.errors import ExecError, PrereqError, RackfireError
from rackfire.model.agent import ExecHandle
from rackfire.model.instance import InstanceKey

log = logging.getLogger("rackfire.streaming")

POLL = 0.25  # how often a follow looks for new log lines
GONE_CHECK = 2.0  # how often a follow whose log is missing asks whether its instance is gone
PARTIAL_FLUSH = 2.0  # a prefixed line without its newline is shown after this long
DRAIN = 2.0  # after the command exits, how long its output may take to arrive
CHUNK = 1 << 16
STDOUT, STDERR = 1, 2
HISTORY_HEADER = "X-Rackfire-History"  # an agent's log stream: how many bytes are history


# logs -----------------------------------------------------------------------------------------

class Lines:
    """Prefixes whole lines (`web-0 | `); a line still without its newline after
    PARTIAL_FLUSH is shown as it is. Without a prefix bytes pass through as written."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self._partial = b""
        self._partial_since = 0.0

    def feed(self, data: bytes) -> bytes:
        if not self.prefix or not data:
            return data
        lines = (self._partial + data).split(b"\n")
        if lines[-1] and (len(lines) > 1 or not self._partial):  # a line begun just now
            self._partial_since = time.monotonic()
        self._partial = lines.pop()
        return b"".join(self.prefix + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        if not self._partial:
            return b""
        line, self._partial = self._partial, b""
        return self.prefix + line + b"\n"

    def flush_if_stale(self) -> bytes:
        if self._partial and time.monotonic() - self._partial_since > PARTIAL_FLUSH:
            return self.flush()
        return b""


class LogFile:
    """One console log, read on from where it was left; copes with the file being truncated
    or replaced. Lines are prefixed as `Lines` does."""

    def __init__(self, key: InstanceKey, path: Path, prefix: bytes) -> None:
        self.key = key
        self.path = path
        self.lines = Lines(prefix)
        self._f: BinaryIO | None = None
        self._ino = -1
        self._pos = 0
        self._end = 0
        self._gone = False

    @property
    def prefix(self) -> bytes:
        return self.lines.prefix

    @prefix.setter
    def prefix(self, value: bytes) -> None:
        self.lines.prefix = value

    def begin(self, tail: int) -> int:
        """Open the log at its last `tail` lines (0: all) as of now: how many bytes they
        are (what `rest_of_history` yields, unprefixed)."""
        if not self._open():
            return 0
        assert self._f is not None
        self._end = os.fstat(self._f.fileno()).st_size
        self._pos = _tail_offset(self._f, self._end, tail) if tail else 0
        return self._end - self._pos

    def history(self, tail: int, *, keep_partial: bool) -> Iterator[bytes]:
        """The last `tail` lines (0: all) as of now, in chunks."""
        self.begin(tail)
        yield from self.rest_of_history(keep_partial=keep_partial)

    def rest_of_history(self, *, keep_partial: bool) -> Iterator[bytes]:
        """What `begin` marked, in chunks."""
        while self._f is not None and self._pos < self._end:
            self._f.seek(self._pos)
            data = self._f.read(min(CHUNK * 16, self._end - self._pos))
            if not data:
                break
            self._pos += len(data)
            yield self.lines.feed(data)
        if not keep_partial:
            yield self.lines.flush()

    def poll(self) -> bytes:
        """What was written since the last call."""
        try:
            st = self.path.stat()
        except OSError:
            self._gone = True
            return self.lines.flush_if_stale()
        self._gone = False
        out = b""
        if self._f is None or st.st_ino != self._ino:
            if self._f is not None:  # replaced: the rest of the old file, then the new one
                out += self._read_rest()
                out += self.lines.flush()
                self.close()
            if not self._open():
                return out
            self._pos = 0
        elif st.st_size < self._pos:  # truncated: start over
            out += self.lines.flush()
            self._pos = 0
        out += self._read_rest()
        return out + self.lines.flush_if_stale()

    def missing(self) -> bool:
        return self._gone

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _open(self) -> bool:
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        except OSError:
            self._gone = True
            return False
        self._ino = os.fstat(self._f.fileno()).st_ino
        return True

    def _read_rest(self, limit: int = CHUNK * 64) -> bytes:
        assert self._f is not None
        self._f.seek(self._pos)
        data = self._f.read(limit)  # a bound per poll: the next poll reads on
        self._pos += len(data)
        return self.lines.feed(data)


def _tail_offset(f: BinaryIO, size: int, lines: int) -> int:
    """Where the last `lines` lines of the file start (a last line without its newline
    counts)."""
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
                return pos + i + 1
    return 0


async def follow_log(lf: LogFile, follow: bool,
                     exists: Callable[[], bool]) -> AsyncIterator[bytes]:
    """One log after `lf.begin(...)`: the history, then (follow) what it gets next, until the
    client goes (the task is cancelled) or the instance is gone (`exists`, asked on a
    worker thread while the log is missing)."""
    try:
        for chunk in lf.rest_of_history(keep_partial=follow):
            if chunk:
                yield chunk
        if not follow:
            return
        checked = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            data = lf.poll()
            if data:
                yield data
            if time.monotonic() - checked < GONE_CHECK:
                continue
            checked = time.monotonic()
            if lf.missing() and not await asyncio.to_thread(exists):
                return
    finally:
        lf.close()


# exec -----------------------------------------------------------------------------------------

class ExecStart(BaseModel):
    argv: list[str] = Field(min_length=1)
    tty: bool = False
    rows: int | None = Field(None, ge=0, le=65535)  # 0: unknown (a pty never sized)
    cols: int | None = Field(None, ge=0, le=65535)


def parse_start(text: str) -> ExecStart:
    try:
        return ExecStart.model_validate_json(text)
    except ValidationError as e:
        raise PrereqError("the first message must be JSON text "
                          '{"argv": [...], "tty": bool, "rows": int, "cols": int}: '
                          + "; ".join(str(x["msg"]) for x in e.errors())) from None


async def authorized(ws: WebSocket, secret: str, error: dict[str, Any]) -> bool:
    """Accept the websocket and check its handshake's bearer (the HTTP middleware and
    dependencies do not see websocket scopes); a wrong one gets `error` and code 4401."""
    await ws.accept()
    given = ws.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        return True
    await finish(ws, {"error": error}, code=4401)
    return False


async def finish(ws: WebSocket, message: dict[str, Any], code: int = 1000) -> None:
    """Send the last frame and close; a client already gone is fine."""
    with contextlib.suppress(Exception):
        if ws.client_state is WebSocketState.CONNECTED:
            await ws.send_text(json.dumps(message))
            await ws.close(code)


async def start_exec(ws: WebSocket, start: ExecStart,
                     spawn: Callable[[], ExecHandle]) -> ExecHandle | None:
    """The command started by `spawn` (on a worker thread), or None once the reason it could
    not be was sent to the client."""
    try:
        return await asyncio.to_thread(spawn)
    except RackfireError as e:
        await finish(ws, {"error": e.to_dict()})
    except OSError as e:  # could not even start runc (or the process)
        await finish(ws, {"error": ExecError(f"cannot start {start.argv[0]!r}: {e}")
                          .to_dict()})
    return None


class _ClientGone(Exception):
    pass


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Feed(asyncio.Protocol):
    """One of the command's output fds, read by the loop's selector into the session's
    queue (a StreamReader would drop what it buffered once the pty reports EIO)."""

    def __init__(self, session: ExecSession, stream: int) -> None:
        self.session = session
        self.stream = stream
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.session.received(self.stream, data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.received(self.stream, None)  # EOF, or EIO: the pty's other side is gone


class ExecSession:
    """Pumps one command's stdio to and from the websocket without blocking the loop: output
    fds are non-blocking and read through the loop's selector (paused while the client is
    slow), stdin is written as the fd accepts it, the exit is seen through a pidfd."""

    HIGH, LOW = 32, 8  # queued output chunks: pause reading above HIGH, resume below LOW

    def __init__(self, ws: WebSocket, handle: ExecHandle, start: ExecStart) -> None:
        self.ws = ws
        self.handle = handle
        self.proc = handle.proc
        self.start = start
        self._queue: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue()
        self._feeds: list[_Feed] = []
        self._paused = False
        self._stdin_open = True
        self._progress = 0  # output chunks read and sent: is the drain still moving?

    async def run(self) -> int | None:
        """The exit code, or None when the client went away (the command is killed)."""
        tasks: list[asyncio.Task[Any]] = []
        try:
            if self.handle.master is not None and self.start.rows and self.start.cols:
                self._resize(self.start.rows, self.start.cols)
            await self._connect()
            sender = asyncio.create_task(self._send_output())
            exited = asyncio.create_task(self._wait_exit())
            inputs = asyncio.create_task(self._pump_input())
            tasks = [sender, exited, inputs]
            while not exited.done():  # output flows meanwhile
                watch = [exited, inputs] if sender.done() else tasks
                await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                if inputs.done() or _failed(sender):
                    return None  # the client went away, or cannot be written to
            # The rest of its output: until every fd ends, as long as bytes keep moving (a
            # background child may hold the fds open for good, or the client stop reading).
            progress = -1
            while not sender.done() and progress != self._progress:
                progress = self._progress
                await asyncio.wait([sender, inputs], timeout=DRAIN,
                                   return_when=asyncio.FIRST_COMPLETED)
                if inputs.done():
                    return None
            if _failed(sender):
                return None
            code = exited.result()
            return 128 - code if code < 0 else code  # killed by a signal: as a shell says
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._cleanup()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.handle.master is not None:
            # A dup for the read transport, which closes what it is given; the master itself
            # stays ours for stdin and resizes.
            pipes: list[tuple[IO[bytes], int]] = [
                (os.fdopen(os.dup(self.handle.master), "rb", buffering=0), STDOUT)]
        else:
            assert self.proc.stdout is not None and self.proc.stderr is not None
            pipes = [(self.proc.stdout, STDOUT), (self.proc.stderr, STDERR)]
        for pipe, stream in pipes:
            _, feed = await loop.connect_read_pipe(partial(_Feed, self, stream), pipe)
            self._feeds.append(feed)

    def received(self, stream: int, data: bytes | None) -> None:
        self._progress += 1
        self._queue.put_nowait((stream, data))
        if self._queue.qsize() >= self.HIGH and not self._paused:
            self._paused = True
            for feed in self._feeds:
                if feed.transport is not None and not feed.transport.is_closing():
                    feed.transport.pause_reading()

    async def _send_output(self) -> None:
        """Until every output fd has ended."""
        open_streams = len(self._feeds)
        while open_streams:
            stream, data = await self._queue.get()
            if self._paused and self._queue.qsize() < self.LOW:
                self._paused = False
                for feed in self._feeds:
                    if feed.transport is not None and not feed.transport.is_closing():
                        feed.transport.resume_reading()
            if data is None:
                open_streams -= 1
            elif data:
                await self.ws.send_bytes(bytes([stream]) + data)
                self._progress += 1

    async def _pump_input(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise _ClientGone
            if msg.get("bytes") is not None:
                await self._write(msg["bytes"])
            elif msg.get("text") is not None:
                await self._control(msg["text"])

    async def _control(self, text: str) -> None:
        try:
            cmd = json.loads(text)
        except ValueError:
            return
        if not isinstance(cmd, dict):
            return
        if cmd.get("eof"):
            if self.handle.master is not None:
                await self._write(b"\x04")  # ^D: end of input, as on a terminal
            elif self.proc.stdin is not None and self._stdin_open:
                self._stdin_open = False
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        size = cmd.get("resize")
        if (self.handle.master is not None and isinstance(size, list) and len(size) == 2
                and all(isinstance(n, int) and 0 < n < 65536 for n in size)):
            self._resize(size[0], size[1])

    def _resize(self, rows: int, cols: int) -> None:
        assert self.handle.master is not None
        fcntl.ioctl(self.handle.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # `runc exec -t` resizes the container's pty on SIGWINCH (a process' own pty tells
        # its foreground group by itself; one more SIGWINCH does no harm).
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGWINCH)

    async def _write(self, data: bytes) -> None:
        if self.handle.master is not None:
            fd = self.handle.master
        elif self.proc.stdin is not None and self._stdin_open:
            fd = self.proc.stdin.fileno()
        else:
            return
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, _resolve, ready)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
            except OSError:  # it closed its stdin or exited: the rest has nowhere to go
                return

    async def _wait_exit(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.proc.pid)
        except OSError:
            return await asyncio.to_thread(self.proc.wait)
        ready = loop.create_future()
        loop.add_reader(pidfd, _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self.proc.wait()

    async def _cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the command's process group: see runtime/execproc.py
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except Exception:
                log.warning("exec pid %s did not end after kill", self.proc.pid)
        for feed in self._feeds:  # before the fds they read are closed under them
            if feed.transport is not None:
                feed.transport.close()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.handle.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.handle.master)
            self.handle.master = None
