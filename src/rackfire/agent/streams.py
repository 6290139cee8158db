"""A host's logs and exec as streams (model/agent.py `StreamSource`), from the host's own
agent: `open_log` and agent/execsession.py's `serve_exec` are the host halves, which a
joined host's agent serves over HTTP (agent/rpc.py's `logs` and `exec` routes) and
`InProcessStreams` serves to the API in this process, for the server's own host. Either way
the API only relays: the same records, the same exec frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from rackfire.agent.execsession import serve_exec
from rackfire.agent.logfile import LogFile, follow_log
from rackfire.errors import NotFound
from rackfire.model.agent import ExecStream, LogStream, StreamSource
from rackfire.model.instance import InstanceFacts, InstanceKey
from rackfire.runtime.base import ExecHandle

log = logging.getLogger("rackfire.agent.streams")

FRAMES = 16  # exec frames buffered each way in-process: a slow reader slows the writer
CLOSE_WAIT = 5.0  # seconds a closed in-process exec may take to kill its command


class Instances(Protocol):
    """What the streams need of a host's agent (LocalAgent; a test's fake host)."""

    def observe(self, stack: str | None = None) -> list[InstanceFacts]: ...
    def log_path(self, key: InstanceKey) -> str: ...
    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle: ...


def here(host: Instances, key: InstanceKey) -> bool:
    """The instance is on this host (blocking: run it on a worker thread)."""
    return any(f.key == key for f in host.observe(key.stack))


async def open_log(host: Instances, key: InstanceKey, tail: int, follow: bool) -> LogStream:
    """The instance's console log as its records: the last `tail` (0: all), then, following,
    what it writes next, until it is gone from this host. NotFound, before any byte, if it
    is not on this host."""
    if not await asyncio.to_thread(here, host, key):
        raise NotFound(f"no instance {key} on this host")
    lf = LogFile(Path(host.log_path(key)))
    history = await asyncio.to_thread(lf.begin, tail)  # known before the first byte
    chunks = follow_log(lf, follow, lambda: here(host, key))

    async def close() -> None:
        await chunks.aclose()
        lf.close()  # a stream never read has not opened its generator's `finally`

    return LogStream(history, chunks, close)


class InProcessStreams:
    """The server's own host's logs and exec, for the API, without a wire."""

    def __init__(self, agent: Instances) -> None:
        self.agent = agent

    async def log_stream(self, key: InstanceKey, tail: int, follow: bool) -> LogStream:
        return await open_log(self.agent, key, tail, follow)

    async def exec_stream(self, key: InstanceKey) -> ExecStream:
        return _InProcessExec(self.agent, key)


Frame = str | bytes


class _HostEnd:
    """The host's end of an in-process exec: what `serve_exec` sees as its client."""

    def __init__(self, out: MemoryObjectSendStream[Frame],
                 into: MemoryObjectReceiveStream[Frame]) -> None:
        self._out = out
        self._in = into
        self.gone = False  # the API end closed: frames still buffered go nowhere

    async def send(self, frame: Frame) -> None:
        await self._out.send(frame)  # BrokenResourceError once the API end closed

    async def receive(self) -> Frame | None:
        if self.gone:
            return None
        try:
            frame = await self._in.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        return None if self.gone else frame

    def close(self) -> None:
        self._out.close()
        self._in.close()


class _InProcessExec:
    """The API's end: frames to and from `serve_exec`, which runs on a task of its own (as
    a joined host's agent runs it for its websocket), over two bounded in-memory channels."""

    def __init__(self, host: Instances, key: InstanceKey) -> None:
        up, self._host_in = anyio.create_memory_object_stream[Frame](FRAMES)
        self._host_out, down = anyio.create_memory_object_stream[Frame](FRAMES)
        self._up, self._down = up, down
        self._end = _HostEnd(self._host_out, self._host_in)
        self._task = asyncio.create_task(self._serve(host, key))

    async def _serve(self, host: Instances, key: InstanceKey) -> None:
        try:
            await serve_exec(self._end, lambda start: host.exec(key, start.argv, start.tty))
        except Exception:
            log.exception("exec in %s failed", key)
        finally:
            self._end.close()  # the API's receive() says it ended, after the last frame

    async def send(self, frame: Frame) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._up.send(frame)

    async def receive(self) -> Frame | None:
        try:
            return await self._down.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def close(self) -> None:
        """Ends it: a command still running is killed (its session sees its client gone)."""
        self._end.gone = True
        self._up.close()
        self._down.close()
        done, _ = await asyncio.wait([self._task], timeout=CLOSE_WAIT)
        if not done:  # stuck writing stdin the command does not read: cancelled, killed
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _conforms(streams: InProcessStreams) -> StreamSource:
    return streams  # mypy checks here that InProcessStreams is a whole StreamSource
