"""A command run in an instance for `rackfire exec`: the host half, which speaks
streaming.py's exec protocol in frames, to a websocket (a joined host's agent, agent/rpc.py)
or to the API in-process (the server's own host, agent/streams.py). `serve_exec` is the
whole of it: the first frame, the command started, its stdio pumped, its exit told.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import termios
from collections.abc import Callable
from functools import partial
from typing import IO, Any, Protocol

from starlette.websockets import WebSocket, WebSocketState

from rackfire.errors import ExecError, RackfireError
from rackfire.runtime.base import ExecHandle
from rackfire.streaming import STDERR, STDOUT, ExecStart, parse_start

log = logging.getLogger("rackfire.agent.exec")

DRAIN = 2.0  # after the command exits, how long its output may take to arrive


class Frames(Protocol):
    """The exec protocol's frames, as the host sees its client."""

    # Raises once the client cannot be written to (it went away).
    async def send(self, frame: str | bytes) -> None: ...
    # The next frame; None once the client went away.
    async def receive(self) -> str | bytes | None: ...


class WsFrames:
    """A websocket's frames (starlette's), for `serve_exec`."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_text(frame)

    async def receive(self) -> str | bytes | None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return None
            if msg.get("bytes") is not None:
                return bytes(msg["bytes"])
            if msg.get("text") is not None:
                return str(msg["text"])

    async def close(self) -> None:
        """Close it; a client already gone is fine."""
        with contextlib.suppress(Exception):
            if self.ws.client_state is WebSocketState.CONNECTED:
                await self.ws.close()


async def serve_exec(frames: Frames, spawn: Callable[[ExecStart], ExecHandle]) -> None:
    """One exec: the client's first frame, the command started by `spawn` (on a worker
    thread), its stdio pumped until it exits or the client goes away (then it is killed),
    and the last frame: `{"exit": code}`, or `{"error": ...}` if it could not start."""
    first = await frames.receive()
    if first is None:
        return
    try:
        start = parse_start(first if isinstance(first, str) else "")
    except RackfireError as e:
        await _last(frames, {"error": e.to_dict()})
        return
    try:
        handle = await asyncio.to_thread(spawn, start)
    except RackfireError as e:
        await _last(frames, {"error": e.to_dict()})
        return
    except OSError as e:  # could not even start runc (or the process)
        await _last(frames, {"error": ExecError(f"cannot start {start.argv[0]!r}: {e}")
                             .to_dict()})
        return
    code = await ExecSession(frames, handle, start).run()
    if code is not None:  # None: the client went away, the command is killed
        await _last(frames, {"exit": code})


async def _last(frames: Frames, message: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):  # a client already gone is fine
        await frames.send(json.dumps(message))


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
    """Pumps one command's stdio to and from the client without blocking the loop: output
    fds are non-blocking and read through the loop's selector (paused while the client is
    slow), stdin is written as the fd accepts it, the exit is seen through a pidfd."""

    HIGH, LOW = 32, 8  # queued output chunks: pause reading above HIGH, resume below LOW

    def __init__(self, frames: Frames, handle: ExecHandle, start: ExecStart) -> None:
        self.frames = frames
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
                await self.frames.send(bytes([stream]) + data)
                self._progress += 1

    async def _pump_input(self) -> None:
        while True:
            frame = await self.frames.receive()
            if frame is None:
                raise _ClientGone
            if isinstance(frame, bytes):
                await self._write(frame)
            else:
                await self._control(frame)

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
