"""Streaming routes: console logs (chunked text/plain) and `exec` (a websocket).

Exec speaks streaming.py's protocol on `WS /v1/instances/{id}/exec` with
`Authorization: Bearer <token>` (the HTTP middleware does not see websocket scopes, so this
route checks it; a wrong token is closed with code 4401 after an `{"error": ...}` frame).

An instance on the server's own host is read and run here. One on a joined host is its
agent's (agent/rpc.py): its log is streamed from there (for a stack, each host's lines
interleave with the local ones, prefixed alike), and its exec websocket is relayed to the
agent's frame by frame, both ways; a client that goes away closes the agent's websocket,
which kills the command there.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import anyio
from fastapi import FastAPI, Query, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from rackfire.api.types import InstanceIdPath, OptRoleQuery, StackPath, errors, text_stream
from rackfire.control.controller import Controller
from rackfire.control.fleet import Fleet
from rackfire.errors import AgentOffline, ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.agent import Agent, ExecStream, LogStream, StreamSource
from rackfire.model.instance import InstanceKey
from rackfire.model.logs import Record
from rackfire.model.logs import parse as parse_record
from rackfire.streaming import (
    CHUNK,
    GONE_CHECK,
    POLL,
    Display,
    ExecSession,
    ExecStart,
    LogFile,
    authorized,
    finish,
    parse_start,
    parsed,
    start_exec,
    step,
)

log = logging.getLogger("rackfire.api.streams")

UNAUTHORIZED = {"code": "unauthorized", "message": "missing or wrong API token",
                "hint": "run the CLI as root (it reads <data-dir>/token), or set "
                "RACKFIRE_TOKEN / RACKFIRE_DATA_DIR"}


def add_stream_routes(app: FastAPI, controller: Controller, token: str) -> None:
    agent: Agent = controller.agent
    fleet = controller.fleet

    @app.get("/v1/instances/{instance_id}/logs", response_class=StreamingResponse,
             responses={**errors(404, 503), **text_stream("the log's lines, as they come")})
    async def instance_logs(
        instance_id: InstanceIdPath,
        tail: int = Query(100, ge=0, description="the last N lines first; 0: all of it"),
        follow: bool = Query(False, description="then keep sending new lines"),
        timestamps: bool = Query(False, description="each line after the time it was "
                                 "written (RFC 3339, UTC)"),
    ) -> StreamingResponse:
        """The instance's console log (its stdout and stderr), as written: its rotated
        files, then the current one."""
        key = _parse_id(instance_id)
        if not any(f.key == key for f in await run_in_threadpool(agent.observe, key.stack)):
            raise NotFound(f"no instance {key}", hint=f"`rackfire ps {key.stack}`")
        host = await run_in_threadpool(fleet.host_of, key)
        if host == fleet.local_name:
            logs: list[_Log] = [LogFile(key, Path(agent.log_path(key)), b"",
                                        timestamps=timestamps)]
        else:
            remote = _RemoteLog(fleet, key, host, b"", timestamps)
            await remote.open(tail, follow)  # a refusal is this request's error
            logs = [remote]
        return _text(_stream(controller, logs, tail, follow, None, timestamps))

    @app.get("/v1/stacks/{stack}/logs", response_class=StreamingResponse,
             responses={**errors(404, 503),
                        **text_stream("every instance's lines, prefixed, as they come")})
    async def stack_logs(
        stack: StackPath,
        role: OptRoleQuery = None,
        tail: int = Query(100, ge=0, description="the last N lines of each instance; 0: all"),
        follow: bool = Query(False, description="then keep sending new lines"),
        timestamps: bool = Query(False, description="each line after the time it was "
                                 "written (RFC 3339, UTC)"),
    ) -> StreamingResponse:
        """Every instance's console log, each line prefixed `web-0 | `. The history (the
        last `tail` lines of each) is merged in the order the lines were written, by their
        timestamps; lines written while following are interleaved in the order they arrive
        (to within a poll, 0.25 s), from every host."""
        facts = await run_in_threadpool(agent.observe, stack)
        keys = sorted(f.key for f in facts if role in (None, f.key.role))
        if not keys:
            if controller.store.get_stack(stack) is None:
                raise NotFound(f"no stack named {stack}", hint="see `rackfire ps`")
            if role is not None:
                raise NotFound(f"stack {stack} has no instances of role {role}")
        hosts = await run_in_threadpool(_hosts_of, fleet, keys)
        logs = [_new_log(controller, k, hosts[k], p, timestamps)
                for k, p in _prefixes(keys).items()]
        return _text(_stream(controller, logs, tail, follow, (stack, role), timestamps))

    @app.websocket("/v1/instances/{instance_id}/exec")
    async def exec_ws(ws: WebSocket, instance_id: str) -> None:
        if not await authorized(ws, token, UNAUTHORIZED):
            return
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        try:
            start = parse_start(msg.get("text") or "")
            key = _parse_id(instance_id)
            host = await run_in_threadpool(fleet.host_of, key)
        except RackfireError as e:
            await finish(ws, {"error": e.to_dict()})
            return
        if host == fleet.local_name:
            handle = await start_exec(ws, start, lambda: agent.exec(key, start.argv, start.tty))
            if handle is None:
                return
            code = await ExecSession(ws, handle, start).run()
            why = f"exit {code}" if code is not None else "client left"
        else:
            relayed = await _relay_exec(ws, fleet, host, key, start)
            if relayed is None:
                return  # refused: the reason was sent
            code, why = relayed
        # Who ran what inside an instance is an event: an operator's action, audited.
        who = ws.headers.get("x-rackfire-actor", "api")
        await run_in_threadpool(controller.store.add_event, who, key.stack, str(key), "exec",
                                "ok" if code is not None else "failed",
                                f"{shlex.join(start.argv)}: {why}")
        if code is not None:
            await finish(ws, {"exit": code})


# logs -----------------------------------------------------------------------------------------

def _text(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/plain; charset=utf-8",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _parse_id(instance_id: str) -> InstanceKey:
    try:
        return InstanceKey.parse_id(instance_id)
    except ValueError:
        raise PrereqError(f"{instance_id!r} is not an instance id",
                          hint="STACK.ROLE.INDEX, e.g. shop.web.0") from None


def _prefixes(keys: list[InstanceKey]) -> dict[InstanceKey, bytes]:
    width = max((len(k.name) for k in keys), default=0)
    return {k: f"{k.name:<{width}} | ".encode() for k in keys}


def _hosts_of(fleet: Fleet, keys: list[InstanceKey]) -> dict[InstanceKey, str]:
    return {k: fleet.host_of(k) for k in keys}


def _new_log(controller: Controller, key: InstanceKey, host: str, prefix: bytes,
             timestamps: bool) -> _Log:
    """A log not read yet: a file on the server's own host, a stream from a joined one."""
    if host == controller.fleet.local_name:
        return LogFile(key, Path(controller.agent.log_path(key)), prefix,
                       timestamps=timestamps)
    return _RemoteLog(controller.fleet, key, host, prefix, timestamps)


def _host(fleet: Fleet, lf: _Log) -> str:
    return lf.host if isinstance(lf, _RemoteLog) else fleet.local_name


async def _stream(controller: Controller, logs: list[_Log], tail: int, follow: bool,
                  stack: tuple[str, str | None] | None,
                  timestamps: bool) -> AsyncIterator[bytes]:
    """The history of the logs (merged in time order), then (follow) what each gets next,
    until the client goes (the response's task is cancelled) or the instance is gone
    (stack: every instance)."""
    agent, fleet = controller.agent, controller.fleet
    try:
        if len(logs) > 1:
            async for chunk in _merged_history(logs, tail, follow):
                yield chunk
        elif logs:
            one = logs[0]
            if isinstance(one, _RemoteLog):
                async for chunk in one.history(tail, follow):
                    if chunk:
                        yield chunk
            else:  # read on worker threads, as every local log is: off the event loop
                history = one.history(tail, keep_partial=follow)
                while (part := await run_in_threadpool(step, history)) is not None:
                    if part:
                        yield part
        if not follow:
            return
        checked = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            data = await _poll(logs)
            if data:
                yield data
            if time.monotonic() - checked < GONE_CHECK:
                continue
            checked = time.monotonic()
            if stack is None:
                lf = logs[0]
                if not lf.missing():
                    continue
                if not await _exists(agent, lf.key):
                    return
                if isinstance(lf, _RemoteLog) and lf.failed:
                    return  # its host could not be read on: said in the last line
                # Replaced on its joined host (a new log there), or moved to another host.
                host = await run_in_threadpool(fleet.host_of, lf.key)
                if isinstance(lf, _RemoteLog) or host != fleet.local_name:
                    await _close(lf)
                    logs = [_new_log(controller, lf.key, host, b"", timestamps)]
                    _follow_from_start(logs[0])
                continue
            # A stack follows its instances as they come and go (scale, replace, migrate).
            facts = await run_in_threadpool(agent.observe, stack[0])
            keys = sorted(f.key for f in facts if stack[1] in (None, f.key.role))
            if not keys:
                return
            hosts = await run_in_threadpool(_hosts_of, fleet, keys)
            # A joined host's stream ends when its instance is gone there; if it is back (a
            # replace), or moved, its log is read again from its start, as a new file is.
            stale = {lf.key for lf in logs if lf.key in hosts and (
                _host(fleet, lf) != hosts[lf.key]
                or (isinstance(lf, _RemoteLog) and lf.ended and not lf.failed))}
            if keys != [lf.key for lf in logs] or stale:
                old = {lf.key: lf for lf in logs if lf.key in hosts and lf.key not in stale}
                for lf in logs:
                    if lf.key not in old:
                        await _close(lf)
                prefixes = _prefixes(keys)
                logs = [old.get(k) or _new_log(controller, k, hosts[k], prefixes[k], timestamps)
                        for k in keys]
                for lf in logs:
                    lf.prefix = prefixes[lf.key]  # the common width may have changed
                    if lf.key not in old:
                        _follow_from_start(lf)
    finally:
        for lf in logs:
            await _close(lf)


async def _poll(logs: list[_Log]) -> bytes:
    """What every log got since the last poll, in their order; the files read on a worker
    thread."""
    files = [lf for lf in logs if isinstance(lf, LogFile)]
    polled = iter(await run_in_threadpool(lambda: [lf.poll() for lf in files]) if files else [])
    return b"".join(next(polled) if isinstance(lf, LogFile) else lf.poll() for lf in logs)


async def _merged_history(logs: list[_Log], tail: int,
                          follow: bool) -> AsyncIterator[bytes]:
    """The last `tail` records of every log, merged by their timestamps (a log's own order
    kept: an untimed line goes with the record before it). One batch of records of each
    log is held at a time (a local log's read and parsed on a worker thread, one of its
    files open at a time)."""
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
        if isinstance(lf, _RemoteLog):
            if not follow or lf.ended:
                out += lf.poll()  # what is left, and why a host could not be read
        elif not follow:
            out += lf.display.flush()
    if out:
        yield bytes(out)


async def _records(lf: _Log, tail: int,
                   follow: bool) -> AsyncIterator[list[tuple[Record, bytes]]]:
    """A log's history in batches of records, each parsed and as it is (with its newline,
    but perhaps the last); read and parsed on worker threads."""
    if isinstance(lf, LogFile):
        history = lf.parsed_history(tail)
        while (batch := await run_in_threadpool(step, history)) is not None:
            yield batch
        return
    rest = b""
    async for chunk in lf.raw_history(tail, follow):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if lines:
            yield await run_in_threadpool(parsed, lines)
    if rest:
        yield [(parse_record(rest), rest)]


async def _exists(agent: Agent, key: InstanceKey) -> bool:
    return any(f.key == key for f in await run_in_threadpool(agent.observe, key.stack))


def _follow_from_start(lf: _Log) -> None:
    # A file is read from its start by its first poll; a stream has to be asked for it.
    if isinstance(lf, _RemoteLog):
        lf.start(tail=0)


async def _close(lf: _Log) -> None:
    if isinstance(lf, _RemoteLog):
        # Also when the response is cancelled (anyio cancels every await under it again).
        with anyio.CancelScope(shield=True):
            await lf.aclose()
    else:
        lf.close()


class _RemoteLog:
    """An instance's console log streamed from the joined host it runs on, read by a task
    into a bounded buffer so that it is polled as a LogFile is. A stream that fails (the host
    is gone) ends with a line saying so."""

    LIMIT = CHUNK * 16  # bytes read and not yet polled: reading waits above this

    def __init__(self, fleet: Fleet, key: InstanceKey, host: str, prefix: bytes,
                 timestamps: bool = False) -> None:
        self.fleet = fleet
        self.key = key
        self.host = host
        self.display = Display(prefix, timestamps=timestamps)  # its agent sends records
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
        source = await _stream_source(self.fleet, self.host)
        self._stream = await source.log_stream(self.key, tail, follow)

    async def history(self, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """Its last `tail` lines; then, following, a task reads on for `poll`."""
        async for chunk in self.raw_history(tail, follow):
            yield self.display.feed(chunk)
        if not follow or self.ended:
            yield self.poll()

    async def raw_history(self, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """Its last `tail` records, as its agent sent them; then, following, a task reads
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
        log.warning("log of %s from host %s: %s", self.key, self.host, e.message)
        self.failed = self.ended = True
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


_Log: TypeAlias = LogFile | _RemoteLog


async def _stream_source(fleet: Fleet, host: str) -> StreamSource:
    """The joined host's agent, as a streamer of logs and exec."""
    return await run_in_threadpool(fleet.joined_agent, host)


# exec -----------------------------------------------------------------------------------------


async def _relay_exec(ws: WebSocket, fleet: Fleet, host: str, key: InstanceKey,
                      start: ExecStart) -> tuple[int | None, str] | None:
    """Run the command through the agent of the joined host the instance is on, relaying
    frames both ways: (its exit code, or None when it did not finish, and why), or None
    when it was refused (the reason was sent)."""
    try:
        conn = await (await _stream_source(fleet, host)).exec_stream(key)
    except RackfireError as e:
        await finish(ws, {"error": e.to_dict()})
        return None
    try:
        await conn.send(start.model_dump_json())
        up = asyncio.create_task(_client_to_host(ws, conn))
        down = asyncio.create_task(_host_to_client(ws, conn))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            if not down.done() or down.cancelled() or down.exception() is not None:
                return None, "client left"  # or cannot be written to: the command is killed
            last = down.result()
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
    finally:
        await conn.close()  # a command still running there is killed
    if last is None:
        lost = AgentOffline(f"the connection to host {host} was lost before the command "
                            "exited", hint="`rackfire hosts` shows whether it is reachable")
        await finish(ws, {"error": lost.to_dict()})
        return None, f"host {host} lost"
    code = last.get("exit")
    if isinstance(code, int) and not isinstance(code, bool):
        return code, f"exit {code}"
    err = last.get("error")
    if not isinstance(err, dict) or err.get("code") == "unauthorized":
        # The controller's agent key, refused: not the client's token, so not its error.
        err = ExecError(f"the agent of host {host} refused the controller's call",
                        hint="if the host joined again, see `rackfire hosts`").to_dict()
    await finish(ws, {"error": err})
    return None


async def _client_to_host(ws: WebSocket, conn: ExecStream) -> None:
    """Until the client goes away."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("bytes") is not None:
            await conn.send(msg["bytes"])
        elif msg.get("text") is not None:
            await conn.send(msg["text"])


async def _host_to_client(ws: WebSocket, conn: ExecStream) -> dict[str, Any] | None:
    """Output frames as they come; the last frame (`exit` or `error`), or None if the host
    closed the connection without one."""
    while (frame := await conn.receive()) is not None:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
            continue
        with contextlib.suppress(ValueError):
            data = json.loads(frame)
            if isinstance(data, dict) and ("exit" in data or "error" in data):
                return data
    return None
