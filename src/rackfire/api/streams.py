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
import json
import logging
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Query, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from rackfire.control.controller import Controller
from rackfire.control.fleet import Fleet
from rackfire.errors import AgentOffline, ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.agent import Agent, ExecStream, LogStream, StreamSource
from rackfire.model.instance import InstanceKey
from rackfire.streaming import (
    CHUNK,
    GONE_CHECK,
    POLL,
    ExecSession,
    ExecStart,
    Lines,
    LogFile,
    authorized,
    finish,
    parse_start,
    start_exec,
)

log = logging.getLogger("rackfire.api.streams")

UNAUTHORIZED = {"code": "unauthorized", "message": "missing or wrong API token",
                "hint": "run the CLI as root (it reads <data-dir>/token), or set "
                "RACKFIRE_TOKEN / RACKFIRE_DATA_DIR"}


def add_stream_routes(app: FastAPI, controller: Controller, token: str) -> None:
    agent: Agent = controller.agent

    @app.get("/v1/instances/{instance_id}/logs", response_class=StreamingResponse,
             responses={200: {"content": {"text/plain": {}}}})
    async def instance_logs(
        instance_id: str,
        tail: int = Query(100, ge=0, description="the last N lines first; 0: all of it"),
        follow: bool = Query(False, description="then keep sending new lines"),
    ) -> StreamingResponse:
        """The instance's console log (its stdout and stderr), as written."""
        key = _parse_id(instance_id)
        if not any(f.key == key for f in await run_in_threadpool(agent.observe, key.stack)):
            raise NotFound(f"no instance {key}", hint=f"`rackfire ps {key.stack}`")
        logs = [_LogFile(key, Path(agent.log_path(key)), b"")]
        return _text(_stream(agent, logs, tail, follow, None))

    @app.get("/v1/stacks/{stack}/logs", response_class=StreamingResponse,
             responses={200: {"content": {"text/plain": {}}}})
    async def stack_logs(
        stack: str,
        role: str | None = Query(None, description="only this role's instances"),
        tail: int = Query(100, ge=0, description="the last N lines of each instance; 0: all"),
        follow: bool = Query(False, description="then keep sending new lines"),
    ) -> StreamingResponse:
        """Every instance's console log, each line prefixed `web-0 | `. Console logs carry
        no timestamps, so the history cannot be merged in time order: it comes instance by
        instance (the last `tail` lines of each). Lines written while following are
        interleaved in the order they arrive (to within a poll, 0.25 s)."""
        facts = await run_in_threadpool(agent.observe, stack)
        keys = sorted(f.key for f in facts if role in (None, f.key.role))
        if not keys:
            if controller.store.get_stack(stack) is None:
                raise NotFound(f"no stack named {stack}", hint="see `rackfire ps`")
            if role is not None:
                raise NotFound(f"stack {stack} has no instances of role {role}")
        logs = _prefixed(agent, keys)
        return _text(_stream(agent, logs, tail, follow, (stack, role)))

    @app.websocket("/v1/instances/{instance_id}/exec")
    async def exec_ws(ws: WebSocket, instance_id: str) -> None:
        await ws.accept()
        given = ws.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            await _finish(ws, {"error": UNAUTHORIZED}, code=4401)
            return
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        try:
            start = ExecStart.model_validate_json(msg.get("text") or "")
            key = _parse_id(instance_id)
            handle = await run_in_threadpool(agent.exec, key, start.argv, start.tty)
        except ValidationError as e:
            err = PrereqError("the first message must be JSON text "
                              '{"argv": [...], "tty": bool, "rows": int, "cols": int}: '
                              + "; ".join(str(x["msg"]) for x in e.errors()))
            await _finish(ws, {"error": err.to_dict()})
            return
        except RackfireError as e:
            await _finish(ws, {"error": e.to_dict()})
            return
        except OSError as e:  # could not even start runc (or the process)
            await _finish(ws, {"error": ExecError(f"cannot start {start.argv[0]!r}: {e}")
                               .to_dict()})
            return
        who = ws.headers.get("x-rackfire-actor", "api")
        code = await _ExecSession(ws, handle, start).run()
        # Who ran what inside an instance is an event: an operator's action, audited.
        result, why = ("ok", f"exit {code}") if code is not None else ("failed", "client left")
        await run_in_threadpool(controller.store.add_event, who, key.stack, str(key), "exec",
                                result, f"{shlex.join(start.argv)}: {why}")
        if code is not None:
            await _finish(ws, {"exit": code})


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


def _prefixed(agent: Agent, keys: list[InstanceKey]) -> list[_LogFile]:
    width = max((len(k.name) for k in keys), default=0)
    return [_LogFile(k, Path(agent.log_path(k)), f"{k.name:<{width}} | ".encode())
            for k in keys]


async def _stream(agent: Agent, logs: list[_LogFile], tail: int, follow: bool,
                  stack: tuple[str, str | None] | None) -> AsyncIterator[bytes]:
    """The history of each log, then (follow) what each gets next, until the client goes
    (the response's task is cancelled) or the instance is gone (stack: every instance)."""
    try:
        for lf in logs:
            for chunk in lf.history(tail, keep_partial=follow):
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
                if logs[0].missing() and not await _exists(agent, logs[0].key):
                    return
                continue
            # A stack follows its instances as they come and go (scale, replace).
            facts = await run_in_threadpool(agent.observe, stack[0])
            keys = sorted(f.key for f in facts if stack[1] in (None, f.key.role))
            if not keys:
                return
            if keys != [lf.key for lf in logs]:
                old = {lf.key: lf for lf in logs}
                for lf in logs:
                    if lf.key not in keys:
                        lf.close()
                fresh = {lf.key: lf for lf in _prefixed(agent, keys)}
                logs = [old.get(k) or fresh[k] for k in keys]
                for lf in logs:
                    lf.prefix = fresh[lf.key].prefix  # the common width may have changed
    finally:
        for lf in logs:
            lf.close()


async def _exists(agent: Agent, key: InstanceKey) -> bool:
    return any(f.key == key for f in await run_in_threadpool(agent.observe, key.stack))


# exec -----------------------------------------------------------------------------------------

