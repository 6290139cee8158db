"""REST routes. Request bodies are validated here (pydantic, the edge); everything below
speaks model types. Errors are one JSON shape: {"error": {code, message, hint, ...}}."""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rackfire import __version__
from rackfire.api.uploads import spool
from rackfire.control.controller import Controller, InstanceView
from rackfire.errors import NotFound, PrereqError, RackfireError
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import Target
from rackfire.model.stack import MAX_COUNT, ImageSource, ImageSpec, StackSpec
from rackfire.spec import load_stack_text, stack_json_schema
from rackfire.spec.schema import ResourcesModel

MAX_UPLOAD = 8 << 30


class StackSource(BaseModel):
    yaml: str = Field(description="the stack file's text")
    filename: str = Field("stack.yaml", description="named in error messages")
    base_dir: str | None = Field(None, description="resolves relative paths in the file")
    expected_generation: int | None = Field(
        None, description="apply only if the stack is still at this generation (from plan)")
    sources: dict[str, str] = Field(
        {}, description="role -> digest of its uploaded `app` dir (POST /v1/sources)")


class ImageBuild(BaseModel):
    name: str
    source: ImageSource = ImageSource.HOST
    suite: str = "bookworm"
    packages: list[str] = []
    mirror: str | None = None
    path: str | None = None  # a tarball on the server's host


class Scale(BaseModel):
    count: int = Field(ge=0, le=MAX_COUNT)


class Selector(BaseModel):
    role: str | None = None
    index: int | None = Field(None, ge=0)


OPERATIONS = ("stop", "start", "restart")
ACTOR = Header("api", alias="X-Rackfire-Actor", description="who asks, for the event log")

PUBLIC = {"/v1/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


def create_app(controller: Controller, shutdown: Callable[[], None], uploads: Path,
               token: str) -> FastAPI:
    app = FastAPI(title="rackfire", version=__version__,
                  description="Stacks of appliance roles, planned then applied. Send "
                  "`Authorization: Bearer <token>`; the token is in `<data-dir>/token`.")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "")
        # /v1/agent/*: the route checks a join token or the host's own credential.
        open_path = request.url.path in PUBLIC or request.url.path.startswith("/v1/agent/")
        if not open_path and not hmac.compare_digest(
                given.encode(), f"Bearer {token}".encode()):
            return JSONResponse(status_code=401, content={"error": {
                "code": "unauthorized", "message": "missing or wrong API token",
                "hint": "run the CLI as root (it reads <data-dir>/token), or set "
                "RACKFIRE_TOKEN / RACKFIRE_DATA_DIR"}})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: "
                    f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": {
            "code": "invalid_request", "message": "; ".join(problems),
            "hint": "see the API's schema at /docs"}})

    @app.exception_handler(RackfireError)
    async def rackfire_error(_: Request, exc: RackfireError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"error": exc.to_dict()})

    def parse(src: StackSource) -> StackSpec:
        spec = load_stack_text(src.yaml, src.filename,
                               Path(src.base_dir) if src.base_dir else None)
        return with_sources(spec, src.sources)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        info = controller.agent.info()
        return {"ok": True, "version": __version__, "host": info.name,
                "runtimes": list(info.runtimes)}

    @app.get("/v1/schema")
    def schema() -> dict[str, Any]:
        return stack_json_schema()

    @app.post("/v1/plan")
    def plan(src: StackSource, explain: bool = False) -> dict[str, Any]:
        return controller.plan(parse(src), explain_placement=explain).to_json()

    @app.post("/v1/apply")
    def apply(src: StackSource, actor: str = ACTOR) -> dict[str, Any]:
        generation, plan = controller.apply(parse(src), src.expected_generation, actor)
        return plan.to_json() | {"generation": generation}

    @app.post("/v1/stacks/{stack}/roles/{role}/scale")
    def scale(stack: str, role: str, body: Scale, actor: str = ACTOR) -> dict[str, Any]:
        """Set the role's instance count (0..N-1), stored as the stack's desired state."""
        generation, plan = controller.scale(stack, role, body.count, actor)
        return plan.to_json() | {"generation": generation}

    @app.post("/v1/stacks/{stack}/roles/{role}/resize")
    def resize(stack: str, role: str, body: ResourcesModel,
               actor: str = ACTOR) -> dict[str, Any]:
        """Change limits live (no restart) and grow disks online; refused before any
        change if a disk would shrink or the host could not hold it. Only the fields given
        change, as a stack file writes them (sizes take units: 256M, 2G)."""
        changes = body.model_dump(exclude_unset=True)
        if "disk" in changes and changes["disk"] is None:
            raise PrereqError("disk: a disk cannot be unlimited", hint="give a size, e.g. 2G")
        generation, plan = controller.resize(stack, role, changes, actor)
        return plan.to_json() | {"generation": generation}

    @app.post("/v1/stacks/{stack}/{operation}")
    def operate(stack: str, operation: str, body: Selector,
                actor: str = ACTOR) -> dict[str, Any]:
        """stop, start or restart the stack's instances (or a role's, or one's)."""
        if operation not in OPERATIONS:
            raise NotFound(f"no operation {operation}", hint=f"use {', '.join(OPERATIONS)}")
        if body.index is not None and body.role is None:
            raise PrereqError("an index needs a role", hint='e.g. {"role": "web", "index": 0}')
        target = Target(stack, body.role, body.index)
        generation, keys = controller.operate(target, operation, actor)
        return {"stack": stack, "operation": operation, "generation": generation,
                "instances": [str(k) for k in keys]}

    @app.get("/v1/stats")
    def stats(stack: str, role: str | None = None, index: int | None = None,
              ) -> list[dict[str, Any]]:
        """Measured usage per instance: from its cgroups, its disk and its veth."""
        return [stats_json(v, s) for v, s in controller.stats(Target(stack, role, index))]

    @app.get("/v1/events")
    def events(stack: str | None = None, after: int = 0, limit: int = 1000,
               ) -> list[dict[str, Any]]:
        """What the controller did or was asked to do, oldest first: the last `limit`, or
        with `after` (an event id) the first `limit` after it."""
        return [e.to_json() for e in controller.store.events(stack, after, min(limit, 10000))]

    @app.get("/v1/stacks")
    def stacks() -> list[dict[str, Any]]:
        return [stack_json(controller, r.name) for r in controller.store.stacks()]

    @app.get("/v1/stacks/{name}")
    def stack(name: str) -> dict[str, Any]:
        return stack_json(controller, name)

    @app.delete("/v1/stacks/{name}")
    def destroy(name: str, keep_data: bool = False, actor: str = ACTOR) -> dict[str, Any]:
        """Remove the stack; its data disks too unless `keep_data` (a new stack of the same
        name finds them again)."""
        return {"stack": name, "generation": controller.destroy(name, actor, keep_data)}

    @app.get("/v1/instances")
    def instances(stack: str | None = None) -> list[dict[str, Any]]:
        return [instance_json(controller, v) for v in controller.instances(stack)]

    @app.get("/v1/images")
    def images() -> list[dict[str, Any]]:
        return [vars_of(i) for i in controller.agent.images()]

    @app.post("/v1/images")
    def build_image(req: ImageBuild) -> dict[str, Any]:
        spec = ImageSpec(req.name, req.source, req.suite, tuple(req.packages), req.mirror,
                         req.path)
        return vars_of(controller.agent.ensure_image(spec))

    @app.put("/v1/images/{name}/tarball")
    async def import_image(name: str, request: Request) -> dict[str, Any]:
        """The request body is a rootfs tarball (.tar, .tar.gz, .tar.xz), streamed to disk
        under a cap, then extracted safely."""
        path = await spool(request, uploads, name, MAX_UPLOAD)
        try:
            info = await run_in_threadpool(controller.agent.import_image, name, str(path))
        finally:
            path.unlink(missing_ok=True)
        return vars_of(info)

    @app.delete("/v1/images/{name}")
    def remove_image(name: str) -> dict[str, Any]:
        return {"name": name, "removed": controller.agent.remove_image(name)}

    @app.post("/v1/server/stop")
    def stop() -> dict[str, Any]:
        threading.Timer(0.2, shutdown).start()  # after this response has gone out
        return {"stopping": True}

    from rackfire.api.hosts import add_host_routes
    from rackfire.api.releases import add_release_routes
    from rackfire.api.streams import add_stream_routes  # logs and exec

    add_stream_routes(app, controller, token)
    add_release_routes(app, controller, uploads, ACTOR)
    add_host_routes(app, controller, ACTOR)
    return app


def with_sources(spec: StackSpec, sources: dict[str, str]) -> StackSpec:
    """The roles' `app` dirs as uploaded by the client: their digests, checked."""
    roles = []
    for role in spec.roles:
        digest = sources.get(role.name, "")
        if role.app is not None and digest:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise PrereqError(f"sources.{role.name}: {digest!r} is not a source digest")
            role = replace(role, app=replace(role.app, digest=digest))
        roles.append(role)
    return replace(spec, roles=tuple(roles))


def stack_json(controller: Controller, name: str) -> dict[str, Any]:
    rec = controller.store.get_stack(name)
    if rec is None:
        raise NotFound(f"no stack named {name}", hint="see `rackfire ps` or apply a stack file")
    actions = controller.store.actions(name, rec.generation)
    return {
        "name": rec.name, "generation": rec.generation,
        "observed_generation": rec.observed_generation, "status": rec.status,
        "message": rec.message, "deleting": rec.deleting, "subnet": rec.subnet,
        "converged": rec.status in ("converged", "degraded")
        and rec.observed_generation == rec.generation,
        "actions": [
            {"id": a.id, "generation": a.generation, "kind": a.kind, "instance": a.instance,
             "reason": a.reason, "state": a.state, "error": a.error}
            for a in actions
        ],
        "unready": [] if rec.deleting else controller.unready(name),
        "data_disks": sum(r.count for r in rec.spec.roles if r.data is not None),
    }


def instance_json(controller: Controller, v: InstanceView) -> dict[str, Any]:
    f, st = v.facts, v.status
    running = f.state == "running"
    return {
        "stack": f.key.stack, "name": f.key.name, "role": f.key.role, "index": f.key.index,
        "id": f.key.id, "state": v.state, "ip": f.ip, "host": f.host,
        "runtime": f.runtime.value, "isolated": f.runtime.value == "container",
        "started_at": f.started_at,
        "uptime": time.time() - f.started_at if f.started_at and running else None,
        "health": v.health.value, "health_message": v.message, "pid": f.pid,
        "oom_killed": f.oom_killed, "exit_code": f.exit_code,
        "restarts": st.restarts if st else 0,
        "stopped_by_operator": bool(st and st.stopped),
        "failed": st.failed if st else "",
        # A path on the host that runs it: only the server's own host's are readable here.
        "log": controller.agent.log_path(f.key) if f.host == controller.fleet.local_name
        else None,
    }


def stats_json(v: InstanceView, s: InstanceStats | None) -> dict[str, Any]:
    f = v.facts
    measured = {k: getattr(s, k) if s else None for k in InstanceStats.__slots__ if k != "key"}
    return {
        "stack": f.key.stack, "name": f.key.name, "role": f.key.role, "index": f.key.index,
        "id": f.key.id, "state": v.state, "health": v.health.value, "host": f.host,
        "uptime": time.time() - f.started_at if f.started_at and f.state == "running"
        else None,
    } | measured


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}
