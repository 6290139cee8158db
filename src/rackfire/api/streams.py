"""Streaming routes: console logs (chunked text/plain) and `exec` (a websocket).

Exec speaks streaming.py's protocol on `WS /v1/instances/{id}/exec` with
`Authorization: Bearer <token>` (the HTTP middleware does not see websocket scopes, so this
route checks it; a wrong token is closed with code 4401 after an `{"error": ...}` frame).

The API only relays, whichever host an instance is on: its host's link (`fleet.link`, a
`StreamSource`: in-process for the server's own host, its agent's HTTP routes for a joined
one) streams its log's records, which are merged (a stack's) and shown here, and runs its
exec, whose frames are relayed both ways; a client that goes away closes the host's end,
which kills the command there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Query, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from rackfire.api.hostlogs import HostLog, Links, merged_history
from rackfire.api.types import InstanceIdPath, OptRoleQuery, StackPath, errors, text_stream
from rackfire.control.controller import Controller
from rackfire.control.fleet import Fleet
from rackfire.errors import AgentOffline, ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.agent import ExecStream
from rackfire.model.instance import InstanceKey
from rackfire.streaming import (
    GONE_CHECK,
    POLL,
    ExecStart,
    authorized,
    finish,
    parse_start,
)

UNAUTHORIZED = {"code": "unauthorized", "message": "missing or wrong API token",
                "hint": "run the CLI as root (it reads <data-dir>/token), or set "
                "RACKFIRE_TOKEN / RACKFIRE_DATA_DIR"}


def add_stream_routes(app: FastAPI, controller: Controller, token: str) -> None:
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
        if not await _exists(fleet, key):
            raise NotFound(f"no instance {key}", hint=f"`rackfire ps {key.stack}`")
        host = await run_in_threadpool(fleet.host_of, key)
        one = HostLog(fleet, key, host, b"", timestamps)
        await one.open(tail, follow)  # a refusal is this request's error
        return _text(_stream(fleet, [one], tail, follow, None, timestamps))

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
        facts = await run_in_threadpool(fleet.observe, stack)
        keys = sorted(f.key for f in facts if role in (None, f.key.role))
        if not keys:
            if controller.store.get_stack(stack) is None:
                raise NotFound(f"no stack named {stack}", hint="see `rackfire ps`")
            if role is not None:
                raise NotFound(f"stack {stack} has no instances of role {role}")
        hosts = await run_in_threadpool(_hosts_of, fleet, keys)
        logs = [HostLog(fleet, k, hosts[k], p, timestamps) for k, p in _prefixes(keys).items()]
        return _text(_stream(fleet, logs, tail, follow, (stack, role), timestamps))

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


async def _exists(fleet: Fleet, key: InstanceKey) -> bool:
    return any(f.key == key for f in await run_in_threadpool(fleet.observe, key.stack))


async def _stream(fleet: Fleet, logs: list[HostLog], tail: int, follow: bool,
                  stack: tuple[str, str | None] | None,
                  timestamps: bool) -> AsyncIterator[bytes]:
    """The history of the logs (merged in time order), then (follow) what each gets next,
    until the client goes (the response's task is cancelled) or the instance is gone
    (stack: every instance)."""
    try:
        if len(logs) > 1:
            async for chunk in merged_history(logs, tail, follow):
                yield chunk
        elif logs:
            async for chunk in logs[0].history(tail, follow):
                if chunk:
                    yield chunk
        if not follow:
            return
        checked = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            data = b"".join(lf.poll() for lf in logs)
            if data:
                yield data
            if time.monotonic() - checked < GONE_CHECK:
                continue
            checked = time.monotonic()
            if stack is None:
                lf = logs[0]
                if not lf.missing():
                    continue
                if lf.failed or not await _exists(fleet, lf.key):
                    return  # gone; or its host could not be read on: said in the last line
                # Replaced (a new log on its host), or moved to another host.
                host = await run_in_threadpool(fleet.host_of, lf.key)
                await _close(lf)
                logs = [HostLog(fleet, lf.key, host, b"", timestamps)]
                logs[0].start(tail=0)
                continue
            # A stack follows its instances as they come and go (scale, replace, migrate).
            facts = await run_in_threadpool(fleet.observe, stack[0])
            keys = sorted(f.key for f in facts if stack[1] in (None, f.key.role))
            if not keys:
                return
            hosts = await run_in_threadpool(_hosts_of, fleet, keys)
            # A host's stream ends when its instance is gone there; if it is back (a
            # replace), or moved, its log is read again from its start, as a new file is.
            stale = {lf.key for lf in logs if lf.key in hosts and (
                lf.host != hosts[lf.key] or (lf.ended and not lf.failed))}
            if keys != [lf.key for lf in logs] or stale:
                old = {lf.key: lf for lf in logs if lf.key in hosts and lf.key not in stale}
                for lf in logs:
                    if lf.key not in old:
                        await _close(lf)
                prefixes = _prefixes(keys)
                logs = [old.get(k) or HostLog(fleet, k, hosts[k], prefixes[k], timestamps)
                        for k in keys]
                for lf in logs:
                    lf.prefix = prefixes[lf.key]  # the common width may have changed
                    if lf.key not in old:
                        lf.start(tail=0)
    finally:
        for lf in logs:
            await _close(lf)


async def _close(lf: HostLog) -> None:
    # Also when the response is cancelled (anyio cancels every await under it again).
    with anyio.CancelScope(shield=True):
        await lf.aclose()


# exec -----------------------------------------------------------------------------------------


async def _relay_exec(ws: WebSocket, fleet: Links, host: str, key: InstanceKey,
                      start: ExecStart) -> tuple[int | None, str] | None:
    """Run the command through the host the instance is on, relaying frames both ways:
    (its exit code, or None when it did not finish, and why), or None when it was refused
    (the reason was sent)."""
    try:
        source = await run_in_threadpool(fleet.link, host)
        conn = await source.exec_stream(key)
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
