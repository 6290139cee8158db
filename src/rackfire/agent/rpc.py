"""The Agent protocol over HTTP: the table of calls a joined host's agent serves, derived
from `model/agent.py`'s declared signatures, so both sides agree by construction.

`POST /agent/v1/<call>` with the arguments as a JSON object (model values by `model/wire`),
answered with `{"result": ...}` or the error shape the API uses. Calls that stream or name
files on the caller's machine (exec, log paths, imports and uploads from a local file) are
not in the table: they need transfers of their own, not a JSON call.

An instance's disks (a cold migration) are such a transfer: `GET /agent/v1/disks/<stack>/
<role>/<index>` streams them out of a host, `PUT` to the same path streams them into one
(runtime/diskcopy.py's format, read as it arrives, never whole in memory), behind the same
agent key.

So are an instance's console log and exec, for `rackfire logs` and `rackfire exec` (the API
relays them): `GET /agent/v1/logs/<stack>/<role>/<index>?tail=N&follow=bool` streams the
log's last N lines (0: all; the `X-Rackfire-History` header says how many bytes they are),
then, following, what it writes next, until the instance is gone from this host;
`WS /agent/v1/exec/<stack>/<role>/<index>` speaks streaming.py's exec protocol, the agent
key as the handshake's bearer.

`GET /agent/v1/_calls` (the same key) says what the controller has cost this host: how many
times each call (and each stream: `logs`, `exec`, `send_disks`, `receive_disks`) was served
since the agent started, and when that was; calls that name a stack, by stack too
(`CallCounts`; bench/agent_calls.py reads it).
"""

from __future__ import annotations

import hmac
import inspect
import re
import threading
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import anyio.to_thread
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from rackfire import errors
from rackfire.agent.execsession import WsFrames, serve_exec
from rackfire.agent.hostside import HostSide
from rackfire.agent.streams import open_log
from rackfire.errors import AgentOffline, RackfireError
from rackfire.model import agent as agent_model
from rackfire.model.agent import CALLS, HostAgent, Stamp
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import NAME_PATTERN
from rackfire.model.wire import decode, encode
from rackfire.streaming import HISTORY_HEADER
from rackfire.streaming import authorized as ws_authorized

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

EPOCH_HEADER = "X-Rackfire-Epoch"
ACTION_HEADER = "X-Rackfire-Action"


def _signatures() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn)
            for name, fn in inspect.getmembers(HostAgent, inspect.isfunction)
            if not name.startswith("_")}


SIGNATURES = _signatures()


def hints(call: str) -> dict[str, Any]:
    """The call's parameter and return types, resolved (the protocol uses postponed
    annotations, some of them only imported for type checking)."""
    import rackfire.model.host as host_model

    namespace = {**vars(agent_model), **vars(host_model)}
    return typing.get_type_hints(getattr(HostAgent, call), globalns=namespace)


_ERRORS: dict[str, type[RackfireError]] = {
    cls.code: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, RackfireError) and cls is not errors.SpecError
}


def error_from(body: dict[str, Any], status: int) -> RackfireError:
    """The agent's error, as the same kind of error on the caller's side."""
    err = body.get("error") or {}
    cls = _ERRORS.get(str(err.get("code")), RackfireError)
    return cls(str(err.get("message", f"agent answered HTTP {status}")),
               hint=str(err.get("hint", "")))


def disks_path(key: InstanceKey) -> str:
    return f"/agent/v1/disks/{key.stack}/{key.role}/{key.index}"


def replica_path(key: InstanceKey) -> str:
    return f"/agent/v1/replica/{key.stack}/{key.role}/{key.index}"


def logs_path(key: InstanceKey) -> str:
    return f"/agent/v1/logs/{key.stack}/{key.role}/{key.index}"


def exec_path(key: InstanceKey) -> str:
    return f"/agent/v1/exec/{key.stack}/{key.role}/{key.index}"


WRONG_KEY = {"code": "unauthorized", "message": "wrong agent key", "hint": ""}
CALL_COUNTS_PATH = "/agent/v1/_calls"


class CallCounts:
    """Calls served, by name, since `started` (epoch seconds): only those that presented
    the key and named a call that exists, so what it counts is the controller's doing.
    Calls with a `stack` argument are also counted by that stack: what one stack's
    reconcile asks stands out from what the controller asks of every stack."""

    def __init__(self) -> None:
        self.started = time.time()
        self._lock = threading.Lock()  # sync routes run on a thread pool
        self._counts: dict[str, int] = {}
        self._by_stack: dict[str, dict[str, int]] = {}

    def add(self, name: str, stack: str | None = None) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            if stack is not None:
                mine = self._by_stack.setdefault(stack, {})
                mine[name] = mine.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            calls = dict(sorted(self._counts.items()))
            by_stack = {s: dict(sorted(c.items())) for s, c in sorted(self._by_stack.items())}
        return {"started": self.started, "now": time.time(), "calls": calls,
                "by_stack": by_stack}


def _instance_key(stack: str, role: str, index: int) -> InstanceKey:
    if not (re.fullmatch(NAME_PATTERN, stack) and re.fullmatch(NAME_PATTERN, role)
            and index >= 0):
        raise errors.PrereqError(f"invalid instance {stack}/{role}/{index}")
    return InstanceKey(stack, role, index)


def _stamp(request: Request | WebSocket) -> Stamp:
    try:
        epoch = int(request.headers.get(EPOCH_HEADER, "0"))
    except ValueError:
        epoch = 0
    return Stamp(epoch, request.headers.get(ACTION_HEADER, "")[:100])


def serve_agent(side: HostSide, key: str) -> FastAPI:
    """The agent's API: every call of the table, for whoever holds `key` (the controller).
    Each answer says the host's boot and `done` (agent/hostside.py)."""
    agent = side.agent
    app = FastAPI(title="rackfire agent", docs_url=None, redoc_url=None, openapi_url=None)
    counts = app.state.call_counts = CallCounts()

    @app.exception_handler(RackfireError)
    async def failed(_: Request, exc: RackfireError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"error": exc.to_dict()})

    @app.post("/agent/v1/{call}")
    def call(call: str, body: dict[str, Any], request: Request) -> Any:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return JSONResponse(status_code=401, content={"error": {
                "code": "unauthorized", "message": "wrong agent key", "hint": ""}})
        if call not in SIGNATURES:
            raise errors.NotFound(f"the agent has no call {call!r}")
        types_ = hints(call)
        params = [p for p in SIGNATURES[call].parameters if p != "self"]
        unknown = set(body) - set(params)
        if unknown:
            raise errors.PrereqError(f"{call}: unknown arguments {sorted(unknown)}")
        try:
            args = {k: decode(types_[k], v) for k, v in body.items()}
        except (TypeError, ValueError) as e:
            raise errors.PrereqError(f"{call}: {e}") from None
        stack = args.get("stack")
        counts.add(call, stack if isinstance(stack, str) else None)
        result, done = side.call(call, args, _stamp(request))
        return {"result": encode(result), "boot": side.boot, "done": done}

    def denied(request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return None
        return JSONResponse(status_code=401, content={"error": {
            "code": "unauthorized", "message": "wrong agent key", "hint": ""}})

    @app.get(CALL_COUNTS_PATH)
    def call_counts(request: Request) -> Any:
        refused = denied(request)
        return refused if refused is not None else counts.to_json()

    @app.get("/agent/v1/disks/{stack}/{role}/{index}")
    def send_disks(stack: str, role: str, index: int, request: Request) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        counts.add("send_disks")
        # Refusals (running, no such instance) are raised here, as errors, before any byte.
        stream = agent.send_disks(_instance_key(stack, role, index))
        return StreamingResponse(stream, media_type="application/octet-stream")

    @app.get("/agent/v1/replica/{stack}/{role}/{index}")
    def send_replica(stack: str, role: str, index: int, request: Request,
                     base: str = Query("", max_length=64)) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        counts.add("send_replica")
        stream = agent.send_replica(_instance_key(stack, role, index), base)
        return StreamingResponse(stream, media_type="application/octet-stream")

    @app.put("/agent/v1/replica/{stack}/{role}/{index}")
    async def receive_replica(stack: str, role: str, index: int, request: Request) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        counts.add("receive_replica")
        return await _received(request, side.receive_replica, _instance_key(stack, role, index))

    @app.put("/agent/v1/disks/{stack}/{role}/{index}")
    async def receive_disks(stack: str, role: str, index: int, request: Request) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        counts.add("receive_disks")
        return await _received(request, side.receive_disks, _instance_key(stack, role, index))

    async def _received(request: Request,
                        receive: Callable[[InstanceKey, Iterator[bytes], Stamp], int],
                        disk_key: InstanceKey) -> Response:
        body = request.stream()

        async def next_chunk() -> bytes | None:
            try:
                return await body.__anext__()
            except StopAsyncIteration:
                return None

        def chunks() -> Iterator[bytes]:
            # On the worker thread: each chunk is fetched from the event loop as needed,
            # so the body is written as it arrives, and a slow disk slows the sender.
            while (chunk := anyio.from_thread.run(next_chunk)) is not None:
                if chunk:
                    yield chunk

        try:
            done = await anyio.to_thread.run_sync(receive, disk_key, chunks(), _stamp(request))
        except ClientDisconnect:  # the sender went away; nothing was kept, no one to tell
            return Response(status_code=400)
        except RackfireError:
            # Read the rest, so that the caller, still sending, gets this answer and not a
            # connection closed under it.
            with suppress(ClientDisconnect):
                async for _ in body:
                    pass
            raise
        return JSONResponse({"result": None, "boot": side.boot, "done": done})

    @app.get("/agent/v1/logs/{stack}/{role}/{index}")
    async def logs(stack: str, role: str, index: int, request: Request,
                   tail: int = Query(100, ge=0), follow: bool = False) -> Response:
        refused = denied(request)
        if refused is not None:
            return refused
        counts.add("logs")
        # The records as they are (stamps and all): the server merges and shows them. Its
        # history's size is known before the headers go (the caller splits on it).
        stream = await open_log(agent, _instance_key(stack, role, index), tail, follow)
        return StreamingResponse(stream.chunks, media_type="application/octet-stream",
                                 headers={HISTORY_HEADER: str(stream.history),
                                          "Cache-Control": "no-store"},
                                 background=BackgroundTask(stream.close))

    @app.websocket("/agent/v1/exec/{stack}/{role}/{index}")
    async def exec_ws(ws: WebSocket, stack: str, role: str, index: int) -> None:
        if not await ws_authorized(ws, key, WRONG_KEY):
            return
        counts.add("exec")
        frames = WsFrames(ws)
        # An invalid key is refused as the command would be: in a last `error` frame.
        await serve_exec(frames, lambda start: agent.exec(_instance_key(stack, role, index),
                                                          start.argv, start.tty))
        await frames.close()

    return app


class RemoteCall:
    """The client half: `stamped(name, stamp, **kwargs)` → the decoded result (and the
    host's boot and done), or the agent's error raised here; AgentOffline when the host
    cannot be reached at all, or did not answer within the call's timeout (CALLS)."""

    def __init__(self, address: str, key: str, timeout: float = 600.0) -> None:
        import httpx

        self.address = address
        self._auth = {"Authorization": f"Bearer {key}"}
        # A host that is gone must not hold a caller for the whole of a long call's timeout.
        self._http = httpx.Client(base_url=f"http://{address}",
                                  timeout=httpx.Timeout(timeout, connect=5.0),
                                  headers=self._auth)
        self._transport_error = httpx.TransportError

    def close(self) -> None:
        self._http.close()

    def download(self, path: str, idle: float | None = None) -> Iterator[bytes]:
        """GET `path` as a byte stream. The agent's refusal is raised here, before any byte;
        a connection lost on the way raises AgentOffline from the iterator, as does a wait
        of `idle` seconds for the next bytes (default: the client's timeout)."""
        import httpx

        timeout: Any = httpx.Timeout(idle, connect=5.0) if idle is not None \
            else httpx.USE_CLIENT_DEFAULT

        def stream() -> Iterator[bytes]:
            try:
                with self._http.stream("GET", path, timeout=timeout) as r:
                    if r.status_code != 200:
                        r.read()
                        raise error_from(_body(r), r.status_code)
                    yield b""  # the request is answered: the caller gets the iterator now
                    yield from r.iter_bytes()
            except self._transport_error as e:
                raise self._offline(e) from None

        it = stream()
        next(it)
        return it

    async def open_download(self, path: str, params: dict[str, str | int]) -> AsyncDownload:
        """GET `path` as a byte stream on the running event loop (for the API's streams, which
        a client going away cancels). No read timeout: a followed log may be silent for long.
        The agent's refusal is raised here, before any byte; a connection lost on the way
        raises AgentOffline from the iterator."""
        import httpx

        client = httpx.AsyncClient(base_url=f"http://{self.address}", headers=self._auth,
                                   timeout=httpx.Timeout(30.0, connect=5.0, read=None))
        try:
            r = await client.send(client.build_request("GET", path, params=params),
                                  stream=True)
        except httpx.TransportError as e:
            await client.aclose()
            raise self._offline(e) from None
        if r.status_code != 200:
            with suppress(httpx.TransportError):
                await r.aread()
            await r.aclose()
            await client.aclose()
            raise error_from(_body(r), r.status_code)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_raw():
                    yield chunk
            except httpx.TransportError as e:
                raise self._offline(e) from None

        async def close() -> None:
            await r.aclose()
            await client.aclose()

        return AsyncDownload(dict(r.headers), chunks(), close)

    async def open_websocket(self, path: str) -> ClientConnection:
        """A websocket to `path`, the agent key as the handshake's bearer."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        try:
            # proxy=None: the agent is reached directly, whatever *_proxy says.
            return await connect(f"ws://{self.address}{path}", additional_headers=self._auth,
                                 proxy=None, compression=None, open_timeout=10,
                                 close_timeout=2, max_size=None)
        except InvalidStatus as e:
            raise errors.ExecError(f"host agent at {self.address} refused the websocket "
                                   f"(HTTP {e.response.status_code})",
                                   hint="is that host's rackfire older than the server's?"
                                   ) from None
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise self._offline(e) from None

    def upload(self, path: str, chunks: Iterable[bytes], stamp: Stamp,
               idle: float | None = None) -> tuple[str, int]:
        """PUT `chunks` to `path` as they come (chunked encoding, never whole in memory);
        the host's boot and done after it. `idle`: as for `download`."""
        import httpx

        timeout: Any = httpx.Timeout(idle, connect=5.0) if idle is not None \
            else httpx.USE_CLIENT_DEFAULT
        try:
            r = self._http.put(path, content=chunks, headers=_headers(stamp), timeout=timeout)
        except self._transport_error as e:
            raise self._offline(e) from None
        body = _body(r)
        if r.status_code != 200:
            raise error_from(body, r.status_code)
        return str(body.get("boot", "")), int(body.get("done", 0))

    def _offline(self, e: Exception) -> AgentOffline:
        return AgentOffline(f"host agent at {self.address} cannot be reached "
                            f"({type(e).__name__})")

    def stamped(self, call: str, stamp: Stamp, **kwargs: Any) -> tuple[Any, str, int]:
        import httpx

        types_ = hints(call)
        spec = CALLS[call]
        wait = spec.timeout + float(kwargs.get(spec.waits, 0) if spec.waits else 0)
        try:
            r = self._http.post(f"/agent/v1/{call}",
                                json={k: encode(v) for k, v in kwargs.items()},
                                headers=_headers(stamp) if spec.mutating else None,
                                timeout=httpx.Timeout(wait, connect=5.0))
        except self._transport_error as e:
            raise self._offline(e) from None
        body = _body(r)
        if r.status_code != 200:
            raise error_from(body, r.status_code)
        return (decode(types_["return"], body.get("result")), str(body.get("boot", "")),
                int(body.get("done", 0)))


def _headers(stamp: Stamp) -> dict[str, str]:
    return {EPOCH_HEADER: str(stamp.epoch), ACTION_HEADER: stamp.action}


@dataclass(frozen=True, slots=True)
class AsyncDownload:
    headers: dict[str, str]  # lower-case names
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]  # to be awaited once it is no longer read


def _body(r: Any) -> dict[str, Any]:
    """An answer's JSON object (the error shape), or {} if it is none."""
    if not r.headers.get("content-type", "").startswith("application/json"):
        return {}
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
