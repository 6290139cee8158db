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
from typing import IO, Any, BinaryIO, TypeVar

from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketState

from rackfire.errors import ExecError, PrereqError, RackfireError
from rackfire.model.agent import ExecHandle
from rackfire.model.instance import InstanceKey
from rackfire.model.logs import Record, rotated
from rackfire.model.logs import parse as parse_record
from rackfire.model.stack import MAX_LOG_FILES

log = logging.getLogger("rackfire.streaming")
_T = TypeVar("_T")

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


class _Held:
    """A stream's line so far, from its partial records."""

    __slots__ = ("since", "text", "time")

    def __init__(self, stamp: bytes | None) -> None:
        self.time = stamp  # its first part's
        self.text = bytearray()
        self.since = time.monotonic()


class Display:
    """Console log records (model/logs.py) as `rackfire logs` shows them: each line as
    written, after its stamp with `timestamps`; then prefixed as `Lines` does. Partial
    records are held and shown with the rest of their line, which the same stream's next
    records bring (the other stream's lines meanwhile are shown first); a line held past
    PARTIAL_FLUSH or HOLD is shown as far as it goes, and ended by the other stream's next
    line. `raw` passes the records through unchanged: an agent sends them so, and the
    server shows them."""

    HOLD = 1 << 20  # bytes of a line held at most

    def __init__(self, prefix: bytes, *, timestamps: bool = False, raw: bool = False) -> None:
        self.lines = Lines(prefix)
        self.timestamps = timestamps
        self.raw = raw
        self._rest = b""  # a record not yet whole (being written, or an old untimed log)
        self._rest_since = 0.0
        self._held: dict[bytes, _Held] = {}  # streams in the middle of a line, not shown
        self._open: bytes | None = None  # the stream whose line is shown in part

    @property
    def prefix(self) -> bytes:
        return self.lines.prefix

    @prefix.setter
    def prefix(self, value: bytes) -> None:
        self.lines.prefix = value

    def feed(self, data: bytes) -> bytes:
        if self.raw or not data:
            return data
        records = (self._rest + data).split(b"\n")
        if records[-1] and (len(records) > 1 or not self._rest):
            self._rest_since = time.monotonic()
        self._rest = records.pop()
        return self.lines.feed(b"".join(self.show(r) for r in records))

    def feed_record(self, r: Record, line: bytes) -> bytes:
        """`feed` for one record parsed already (`r` is `line` parsed)."""
        if self.raw or self._rest or not line.endswith(b"\n"):
            return self.feed(line)
        return self.lines.feed(self.show_record(r))

    def show(self, line: bytes) -> bytes:
        """One record (its newline stripped or not) as shown, before the prefix."""
        return self.show_record(parse_record(line))

    def show_record(self, r: Record) -> bytes:
        held = self._held.pop(r.stream, None) or _Held(r.time)
        held.text += r.content
        if r.partial and len(held.text) < self.HOLD:
            self._held[r.stream] = held
            return b""
        return self._show(r.stream, held, whole=not r.partial)

    def _show(self, stream: bytes, held: _Held, *, whole: bool) -> bytes:
        text = bytes(held.text) + (b"\n" if whole else b"")
        if self._open != stream:  # else the rest of a line shown in part: no stamp again
            if self.timestamps and held.time is not None:
                text = held.time + b" " + text
            if self._open is not None:
                text = b"\n" + text  # the other stream's line shown in part ends here
        self._open = None if whole else stream
        return text

    def _show_held(self, stale_only: bool) -> bytes:
        now = time.monotonic()
        out = b""
        for stream, held in list(self._held.items()):
            if not stale_only or now - held.since > PARTIAL_FLUSH:
                del self._held[stream]
                out += self._show(stream, held, whole=False)
        return out

    def end_of_file(self) -> bytes:
        """A file ended: a record left without its newline is whole (an untimed log)."""
        if self.raw or not self._rest:
            return b""
        rest, self._rest = self._rest, b""
        r = parse_record(rest)
        return self.lines.feed(self.show(rest) if r.time is not None else r.content)

    def flush(self) -> bytes:
        out = self.end_of_file()
        if not self.raw:
            out += self.lines.feed(self._show_held(stale_only=False))
        return out + self.lines.flush()

    def flush_if_stale(self) -> bytes:
        out = b""
        if self._rest and time.monotonic() - self._rest_since > PARTIAL_FLUSH:
            # An old untimed log's prompt: as it is (the next bytes go on with it).
            out, self._rest = self.lines.feed(parse_record(self._rest).content), b""
        if self._held:  # a prompt, a progress bar: shown as far as it goes
            out += self.lines.feed(self._show_held(stale_only=True))
        return out + self.lines.flush_if_stale()


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
            return _Open._held_open(open(path, "rb"))
        except OSError:
            return None

    @staticmethod
    def _held_open(f: BinaryIO) -> _Open:
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
    """One console log: its rotated files (`console.log.N` ... `.1`) and the current one,
    read on from where it was left. Follows it across rotations as `tail -F` does (a new
    inode at the path: the rest of the old file, then every file written since, then the
    new one) and copes with the file being truncated or replaced. Shown as `Display` does."""

    def __init__(self, key: InstanceKey, path: Path, prefix: bytes, *,
                 timestamps: bool = False, raw: bool = False) -> None:
        self.key = key
        self.path = path
        self.display = Display(prefix, timestamps=timestamps, raw=raw)
        self._files: list[_Open] = []  # oldest first; the last is the current file
        self._gone = False

    @property
    def prefix(self) -> bytes:
        return self.display.prefix

    @prefix.setter
    def prefix(self, value: bytes) -> None:
        self.display.prefix = value

    def begin(self, tail: int) -> int:
        """Open the log at its last `tail` records (0: all) as of now, across its rotated
        files: how many bytes they are (what `raw_history` yields)."""
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

    def history(self, tail: int, *, keep_partial: bool) -> Iterator[bytes]:
        """The last `tail` lines (0: all) as of now, in chunks."""
        self.begin(tail)
        yield from self.rest_of_history(keep_partial=keep_partial)

    def raw_history(self) -> Iterator[bytes]:
        """What `begin` marked, as records, in chunks; the older files are closed."""
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

    def parsed_history(self, tail: int) -> Iterator[list[tuple[Record, bytes]]]:
        """`begin(tail)`, then what it marked in batches of records, each parsed and as it
        is (with its newline, but perhaps the last); blocking: run on a worker thread."""
        self.begin(tail)
        rest = b""
        for chunk in self.raw_history():
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield parsed(lines)
        if rest:
            yield [(parse_record(rest), rest)]

    def rest_of_history(self, *, keep_partial: bool) -> Iterator[bytes]:
        """What `begin` marked, in chunks."""
        for data in self.raw_history():
            yield self.display.feed(data)
        if not keep_partial:
            yield self.display.flush()

    def poll(self) -> bytes:
        """What was written since the last call."""
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
            out += self.display.feed(data)
            if len(self._files) == 1:
                break
            if not data:  # a file rotated away, read to its end
                out += self.display.end_of_file()
                o.shut()
                self._files.pop(0)
        return bytes(out) + self.display.flush_if_stale()

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


def step(it: Iterator[_T]) -> _T | None:
    """The next of `it`, or None at its end (for a worker thread: a StopIteration cannot
    cross into the event loop)."""
    return next(it, None)


def parsed(lines: list[bytes]) -> list[tuple[Record, bytes]]:
    """Whole records, their newlines stripped: each parsed, and with its newline."""
    return [(parse_record(line), line + b"\n") for line in lines]


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


async def follow_log(lf: LogFile, follow: bool,
                     exists: Callable[[], bool]) -> AsyncIterator[bytes]:
    """One log after `lf.begin(...)`: the history, then (follow) what it gets next, until the
    client goes (the task is cancelled) or the instance is gone (`exists`, asked on a
    worker thread while the log is missing). The file is read on worker threads, off the
    event loop (not abandoned when cancelled: the file is closed after the read)."""
    try:
        history = lf.rest_of_history(keep_partial=follow)
        while (chunk := await run_in_threadpool(step, history)) is not None:
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
