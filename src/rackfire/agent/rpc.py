"""The Agent protocol over HTTP: the table of calls a joined host's agent serves, derived
from `model/agent.py`'s declared signatures, so both sides agree by construction.

`POST /agent/v1/<call>` with the arguments as a JSON object (model values by `model/wire`),
answered with `{"result": ...}` or the error shape the API uses. Calls that stream or name
files on the caller's machine (exec, log paths, imports and uploads from a local file) are
not in the table: they need transfers of their own, not a JSON call.
"""

from __future__ import annotations

import hmac
import inspect
import typing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rackfire import errors
from rackfire.errors import AgentOffline, RackfireError
from rackfire.model import agent as agent_model
from rackfire.model.agent import Agent
from rackfire.model.wire import decode, encode

NOT_REMOTE = frozenset({"exec", "log_path", "import_image", "store_source"})


def _calls() -> dict[str, inspect.Signature]:
    out = {}
    for name, fn in inspect.getmembers(Agent, inspect.isfunction):
        if name.startswith("_") or name in NOT_REMOTE:
            continue
        out[name] = inspect.signature(fn)
    return out


CALLS = _calls()


def hints(call: str) -> dict[str, Any]:
    """The call's parameter and return types, resolved (the protocol uses postponed
    annotations, some of them only imported for type checking)."""
    import rackfire.model.host as host_model

    namespace = {**vars(agent_model), **vars(host_model)}
    return typing.get_type_hints(getattr(Agent, call), globalns=namespace)


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


def serve_agent(agent: Agent, key: str) -> FastAPI:
    """The agent's API: every call of the table, for whoever holds `key` (the controller)."""
    app = FastAPI(title="rackfire agent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RackfireError)
    async def failed(_: Request, exc: RackfireError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"error": exc.to_dict()})

    @app.post("/agent/v1/{call}")
    def call(call: str, body: dict[str, Any], request: Request) -> Any:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return JSONResponse(status_code=401, content={"error": {
                "code": "unauthorized", "message": "wrong agent key", "hint": ""}})
        if call not in CALLS:
            raise errors.NotFound(f"the agent has no call {call!r}")
        types_ = hints(call)
        params = [p for p in CALLS[call].parameters if p != "self"]
        unknown = set(body) - set(params)
        if unknown:
            raise errors.PrereqError(f"{call}: unknown arguments {sorted(unknown)}")
        try:
            args = {k: decode(types_[k], v) for k, v in body.items()}
        except (TypeError, ValueError) as e:
            raise errors.PrereqError(f"{call}: {e}") from None
        return {"result": encode(getattr(agent, call)(**args))}

    return app


class RemoteCall:
    """The client half: `call(name, **kwargs)` → the decoded result, or the agent's error
    raised here; AgentOffline when the host cannot be reached at all."""

    def __init__(self, address: str, key: str, timeout: float = 600.0) -> None:
        import httpx

        self.address = address
        self._http = httpx.Client(base_url=f"http://{address}", timeout=timeout,
                                  headers={"Authorization": f"Bearer {key}"})
        self._transport_error = httpx.TransportError

    def close(self) -> None:
        self._http.close()

    def __call__(self, call: str, **kwargs: Any) -> Any:
        types_ = hints(call)
        try:
            r = self._http.post(f"/agent/v1/{call}", json={k: encode(v)
                                                          for k, v in kwargs.items()})
        except self._transport_error as e:
            raise AgentOffline(f"host agent at {self.address} cannot be reached "
                               f"({type(e).__name__})") from None
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {}
        if r.status_code != 200:
            raise error_from(body, r.status_code)
        return decode(types_["return"], body.get("result"))
