"""An instance's console log as the API reads it from the host it runs on (any host's
`StreamSource`: its records), shown as `rackfire logs` shows it; and the history of several,
merged by the records' timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from fastapi.concurrency import run_in_threadpool

from rackfire.errors import NotFound, RackfireError
from rackfire.model.agent import LogStream, StreamSource
from rackfire.model.instance import InstanceKey
from rackfire.model.logs import Record
from rackfire.model.logs import parse as parse_record
from rackfire.streaming import CHUNK, Display, parsed

log = logging.getLogger("rackfire.api.streams")


class Links(Protocol):
    """Where a host's streams come from (the fleet)."""

    def link(self, host: str) -> StreamSource: ...


class HostLog:
    """An instance's console log as the host it runs on streams it (its records, shown
    here), read by a task into a bounded buffer so that logs are polled alike. A stream that
    fails (the host is gone) ends with a line saying so; one the host has nothing for (the
    instance is not there, or not yet) just ends."""

    LIMIT = CHUNK * 16  # bytes read and not yet polled: reading waits above this

    def __init__(self, links: Links, key: InstanceKey, host: str, prefix: bytes,
                 timestamps: bool = False) -> None:
        self.links = links
        self.key = key
        self.host = host
        self.display = Display(prefix, timestamps=timestamps)
        self.ended = False  # nothing more comes: its instance is gone from there, or failed
        self.failed = False
        self._stream: LogStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._buf = bytearray()
        self._room = asyncio.Event()
        self._room.set()
        self._notice = b""

    @property
    def prefix(self) -> bytes:
        return self.display.prefix

    @prefix.setter
    def prefix(self, value: bytes) -> None:
        self.display.prefix = value

    async def open(self, tail: int, follow: bool) -> None:
        """Ask its host for the stream; its refusal is raised."""
        source = await run_in_threadpool(self.links.link, self.host)
        self._stream = await source.log_stream(self.key, tail, follow)

    async def history(self, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """Its last `tail` lines; then, following, a task reads on for `poll`."""
        async for chunk in self.raw_history(tail, follow):
            yield self.display.feed(chunk)
        if not follow or self.ended:
            yield self.poll()

    async def raw_history(self, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """Its last `tail` records, as its host sent them; then, following, a task reads
        on for `poll`."""
        if self._stream is None:
            try:
                await self.open(tail, follow)
            except RackfireError as e:
                self._fail(e)
                return
        assert self._stream is not None
        # Not following, everything is history; following, the host says where it ends.
        left = self._stream.history if follow else -1
        try:
            while left:
                chunk = await anext(self._stream.chunks, None)
                if chunk is None:
                    self.ended = True
                    break
                if left > 0:
                    chunk, rest = chunk[:left], chunk[left:]
                    left -= len(chunk)
                    self._buf += rest
                yield chunk
        except RackfireError as e:
            self._fail(e)
        if follow and not self.ended:
            self._task = asyncio.create_task(self._pump())

    def start(self, tail: int) -> None:
        """Follow from its last `tail` lines (0: all of it), all of it through `poll`."""
        self._task = asyncio.create_task(self._pump(tail))

    async def _pump(self, tail: int | None = None) -> None:
        try:
            if self._stream is None:
                await self.open(tail or 0, True)
            assert self._stream is not None
            async for chunk in self._stream.chunks:
                self._buf += chunk
                if len(self._buf) >= self.LIMIT:  # the client is slower than the log
                    self._room.clear()
                    await self._room.wait()
        except RackfireError as e:
            self._fail(e)
        finally:
            self.ended = True

    def _fail(self, e: RackfireError) -> None:
        self.ended = True
        if isinstance(e, NotFound):
            # Not there (yet): a replace or a move in between, or a view of it that lags.
            # Nothing to say: the follow looks again, or ends once it is gone.
            return
        log.warning("log of %s from host %s: %s", self.key, self.host, e.message)
        self.failed = True
        self._notice = (f"--- rackfire: the log of {self.key.name} on host {self.host} "
                        f"cannot be read on: {e.message}\n").encode()

    def poll(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        self._room.set()
        out = self.display.feed(data)
        if not self.ended:
            return out + self.display.flush_if_stale()
        out += self.display.flush()
        if self._notice:
            out += self.display.prefix + self._notice
            self._notice = b""
        return out

    def missing(self) -> bool:
        """Ended, and everything it got was polled."""
        return self.ended and not self._buf and not self._notice

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._stream is not None:
            with contextlib.suppress(Exception):  # the transfer is over either way
                await self._stream.close()


async def merged_history(logs: list[HostLog], tail: int,
                          follow: bool) -> AsyncIterator[bytes]:
    """The last `tail` records of every log, merged by their timestamps (a log's own order
    kept: an untimed line goes with the record before it). One batch of records of each
    log is held at a time, parsed on a worker thread."""
    sources = [_records(lf, tail, follow) for lf in logs]
    pending: list[deque[tuple[Record, bytes]]] = [deque() for _ in logs]
    heap: list[tuple[bytes, int, Record, bytes]] = []  # one record of each log at most
    last = [b""] * len(logs)

    async def take(i: int) -> None:
        while not pending[i]:
            batch = await anext(sources[i], None)
            if batch is None:
                return
            pending[i].extend(batch)
        record, line = pending[i].popleft()
        last[i] = record.time or last[i]
        heapq.heappush(heap, (last[i], i, record, line))

    for i in range(len(sources)):
        await take(i)
    out = bytearray()
    while heap:
        _, i, record, line = heapq.heappop(heap)
        out += logs[i].display.feed_record(record, line)
        if len(out) >= CHUNK:
            yield bytes(out)
            out.clear()
        await take(i)
    for lf in logs:
        if not follow or lf.ended:
            out += lf.poll()  # what is left, and why a host could not be read
    if out:
        yield bytes(out)


async def _records(lf: HostLog, tail: int,
                   follow: bool) -> AsyncIterator[list[tuple[Record, bytes]]]:
    """A log's history in batches of records, each parsed and as it is (with its newline,
    but perhaps the last); parsed on worker threads."""
    rest = b""
    async for chunk in lf.raw_history(tail, follow):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if lines:
            yield await run_in_threadpool(parsed, lines)
    if rest:
        yield [(parse_record(rest), rest)]
