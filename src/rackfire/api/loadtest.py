"""Routes for load tests (`rackfire load`): started with POST, followed with GET until it is
done or failed. Every limit is in the schema (a schema-valid request is refused only for the
state it finds: 404 no such stack or test, 409 one under way)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from rackfire.api.answers import LoadReportAnswer, LoadTestAnswer
from rackfire.api.types import Name, errors
from rackfire.control import loadtest
from rackfire.control.controller import Controller
from rackfire.control.loadtest import LoadTest

TestId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$", description="a load test's id")]
# http://host[:port][/path]: a host name or IPv4 address (no IPv6), a port up to 65535, no
# whitespace: what `loadtest.check` takes, so that it never refuses a schema-valid one.
PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
TARGET = r"^http://[A-Za-z0-9][A-Za-z0-9.-]*(:" + PORT + r")?([/?][\x21-\x7e]*)?$"


class StartLoad(BaseModel):
    stack: Name = Field(description="the target's stack (the clients' is `<stack>-load`)")
    target: str = Field(pattern=TARGET, max_length=2048, description="http://host:port/path")
    clients: int = Field(ge=1, le=loadtest.MAX_CLIENTS)
    rate: float = Field(gt=0, le=loadtest.MAX_RATE, description="req/s, all clients")
    duration: float = Field(ge=loadtest.MIN_DURATION, le=loadtest.MAX_DURATION,
                            description="seconds")
    connections: int = Field(64, ge=1, le=loadtest.MAX_CONNECTIONS,
                             description="at most, per client")


def answer(t: LoadTest) -> LoadTestAnswer:
    return LoadTestAnswer(
        id=t.id, stack=t.stack, load_stack=t.load_stack, target=t.target, clients=t.clients,
        rate=t.rate, duration=t.duration, connections=t.connections, state=t.state.value,
        message=t.message, created=t.created, start_at=t.start_at, ended=t.ended,
        runs_done=t.runs_done, runs_total=len(t.runs),
        report=LoadReportAnswer.model_validate(t.report) if t.report is not None else None)


def add_loadtest_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    @app.post("/v1/loadtests", responses=errors(404, 409))
    def start(body: StartLoad, who: str = actor) -> LoadTestAnswer:
        """Start the clients (each at most 64 MB); the answer comes once they are claimed."""
        return answer(controller.loadtests.start(body.stack, body.target, body.clients,
                                                 body.rate, body.duration, body.connections,
                                                 who))

    @app.get("/v1/loadtests/{test_id}", responses=errors(404))
    def get(test_id: TestId) -> LoadTestAnswer:
        return answer(controller.loadtests.get(test_id))
