"""REST routes. Request bodies are validated here (pydantic, the edge); everything below
speaks model types; answers are api/answers.py's models. Errors are one JSON shape:
{"error": {code, message, hint, ...}}."""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Self

from fastapi import FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from rackfire import __version__
from rackfire.api.answers import (
    ChangeAnswer,
    DestroyAnswer,
    EventAnswer,
    HealthAnswer,
    ImageAnswer,
    InstanceAnswer,
    JournalAction,
    OperateAnswer,
    PlanAnswer,
    RemovedAnswer,
    StackAnswer,
    StackFileSchema,
    StatsAnswer,
    StopAnswer,
    change_answer,
)
from rackfire.api.limits import JSON_LIMIT, BodyLimit
from rackfire.api.tarballs import MAX_TARBALL, add_tarball_routes, tarball_path
from rackfire.api.types import (
    DB_INT,
    Digest,
    ImagePath,
    Index,
    Integral,
    Name,
    Operation,
    OptIndexQuery,
    OptRoleQuery,
    OptStackQuery,
    RolePath,
    StackPath,
    StackQuery,
    add_common_errors,
    binary_body,
    errors,
    limits_for,
    size_schema,
)
from rackfire.api.uploads import spool
from rackfire.control.controller import Controller, InstanceView
from rackfire.errors import NotFound, PrereqError, RackfireError
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import Target
from rackfire.model.stack import (
    MAX_COUNT,
    MAX_SOURCE_BYTES,
    ImageSource,
    ImageSpec,
    StackSpec,
)
from rackfire.spec import load_stack_text, stack_json_schema
from rackfire.spec.schema import Disk, Memory, MiB, ResourcesModel
from rackfire.spec.yamltree import read_yaml

MAX_UPLOAD = 8 << 30
# Request body limits by path suffix; "" is every other route's (JSON bodies).
# A heartbeat carries every instance of its host (about 1.3 KiB each) when they changed.
HEARTBEAT_LIMIT = 64 << 20
BODY_LIMITS = {"/tarball": MAX_UPLOAD, "/v1/tarballs": MAX_TARBALL,
               "/v1/sources": MAX_SOURCE_BYTES, "/v1/agent/heartbeat": HEARTBEAT_LIMIT,
               "": JSON_LIMIT}


class StackSource(BaseModel):
    """A stack file and what its paths name, uploaded: the server reads no path of the
    client's (it may be another machine), so every role with `app:` needs its `sources`
    entry and every `from: tarball` image its `tarballs` entry; the paths in `yaml` are
    only labels."""

    yaml: str = Field(description="the stack file's text")
    filename: str = Field("stack.yaml", description="named in error messages")
    expected_generation: int | None = Field(
        None, ge=0, description="apply only if the stack is still at this generation (from plan)")
    sources: dict[Name, Digest] = Field(
        {}, description="role -> digest of its uploaded `app` dir (POST /v1/sources)")
    tarballs: dict[Name, Digest] = Field(
        {}, description="image -> sha256 of its uploaded rootfs tarball (POST /v1/tarballs)")


class ImageBuild(BaseModel):
    name: Name
    source: ImageSource = ImageSource.HOST
    suite: str = "bookworm"
    packages: list[str] = []
    mirror: str | None = None
    path: str | None = None  # a tarball on the server's host


class Scale(BaseModel):
    count: int = Field(ge=0, le=MAX_COUNT)


class Selector(BaseModel):
    # An index needs its role: said in the schema too, so that a client sees it there.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"index": {"type": "null"}}},
        {"required": ["role"], "properties": {"role": {"type": "string"}}}]})

    role: Name | None = None
    index: Index | None = None

    @model_validator(mode="after")
    def _index_has_role(self) -> Self:
        if self.index is not None and self.role is None:
            raise ValueError('an index needs a role, e.g. {"role": "web", "index": 0}')
        return self


class Resize(ResourcesModel):
    """The fields to change: at least one; a disk cannot become unlimited."""

    # Not strict: JSON's 7.0 is an integer.
    model_config = ConfigDict(strict=False, json_schema_extra={"minProperties": 1})

    cpu: float | None = Field(None, gt=0, le=256, description="cores")
    memory: Annotated[Memory, Integral, size_schema(4 * MiB)] | None = None
    disk: Annotated[Disk | None, Integral, size_schema(16 * MiB)] = None  # unset, never null
    pids: int | None = Field(None, ge=1, le=1 << 22)  # the kernel's pid_max at most

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("nothing to resize: give cpu, memory, disk or pids")
        if "disk" in self.model_fields_set and self.disk is None:
            raise ValueError("disk: a disk cannot be unlimited; give a size, e.g. 2G")
        return self


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
        problems = [": ".join(filter(None, (
            ".".join(str(p) for p in e["loc"] if p != "body"),
            str(e["msg"]).removeprefix("Value error, ")))) for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": {
            "code": "invalid_request", "message": "; ".join(problems),
            "hint": "see the API's schema at /docs"}})

    @app.exception_handler(RackfireError)
    async def rackfire_error(_: Request, exc: RackfireError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"error": exc.to_dict()})

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own (an unknown path, a body it cannot read): the one error shape too.
        if exc.status_code == 400:  # FastAPI's only one: a body that is not JSON
            return JSONResponse(status_code=422, content={"error": {
                "code": "invalid_request", "message": "the request body is not valid JSON",
                "hint": "see the API's schema at /docs"}})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "refused")
        return JSONResponse(status_code=exc.status_code, headers=exc.headers, content={
            "error": {"code": code, "message": str(exc.detail), "hint": ""}})

    app.add_middleware(BodyLimit, limit_of=lambda path: limits_for(path, BODY_LIMITS))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            add_common_errors(schema, PUBLIC, BODY_LIMITS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def parse(src: StackSource) -> StackSpec:
        return with_uploads(load_stack_text(src.yaml, src.filename), src, uploads)

    @app.get("/v1/health")
    def health() -> HealthAnswer:
        info = controller.agent.info()
        return HealthAnswer(ok=True, version=__version__, host=info.name,
                            runtimes=list(info.runtimes))

    @app.get("/v1/schema")
    def schema() -> StackFileSchema:
        return StackFileSchema(stack_json_schema())

    # plan runs apply's checks: an image neither declared nor built (404), a host that
    # cannot hold it or a disk that would shrink (409), a joined host it asks is away (503).
    @app.post("/v1/plan", responses=errors(400, 404, 409, 503))
    def plan(src: StackSource, explain: bool = False) -> PlanAnswer:
        with located(src, uploads):
            plan = controller.plan(parse(src), explain_placement=explain)
        return PlanAnswer.model_validate(plan.to_json())

    @app.post("/v1/apply", responses=errors(400, 404, 409, 500, 503))
    def apply(src: StackSource, actor: str = ACTOR) -> ChangeAnswer:
        with located(src, uploads):
            generation, plan = controller.apply(parse(src), src.expected_generation, actor)
        return change_answer(generation, plan)

    @app.post("/v1/stacks/{stack}/roles/{role}/scale", responses=errors(400, 404, 409, 503))
    def scale(stack: StackPath, role: RolePath, body: Scale,
              actor: str = ACTOR) -> ChangeAnswer:
        """Set the role's instance count (0..N-1), stored as the stack's desired state."""
        return change_answer(*controller.scale(stack, role, body.count, actor))

    @app.post("/v1/stacks/{stack}/roles/{role}/resize",
              responses=errors(400, 404, 409, 500, 503))
    def resize(stack: StackPath, role: RolePath, body: Resize,
               actor: str = ACTOR) -> ChangeAnswer:
        """Change limits live (no restart) and grow disks online; refused before any
        change if a disk would shrink or the host could not hold it. Only the fields given
        change, as a stack file writes them (sizes take units: 256M, 2G)."""
        changes = body.model_dump(exclude_unset=True)
        return change_answer(*controller.resize(stack, role, changes, actor))

    @app.post("/v1/stacks/{stack}/{operation}", responses=errors(404))
    def operate(stack: StackPath, operation: Operation, body: Selector,
                actor: str = ACTOR) -> OperateAnswer:
        """stop, start or restart the stack's instances (or a role's, or one's)."""
        target = Target(stack, body.role, body.index)
        generation, keys = controller.operate(target, operation.value, actor)
        return OperateAnswer(stack=stack, operation=operation, generation=generation,
                             instances=[str(k) for k in keys])

    @app.get("/v1/stats", responses=errors(404, 503))
    def stats(stack: StackQuery, role: OptRoleQuery = None, index: OptIndexQuery = None,
              ) -> list[StatsAnswer]:
        """Measured usage per instance: from its cgroups, its disk and its veth."""
        return [stats_answer(v, s) for v, s in controller.stats(Target(stack, role, index))]

    @app.get("/v1/events")
    def events(stack: OptStackQuery = None, after: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
               limit: Annotated[int, Query(ge=0, le=DB_INT)] = 1000) -> list[EventAnswer]:
        """What the controller did or was asked to do, oldest first: the last `limit`, or
        with `after` (an event id) the first `limit` after it; at most 10000."""
        return [EventAnswer.model_validate(e, from_attributes=True)
                for e in controller.store.events(stack, after, min(limit, 10000))]

    @app.get("/v1/stacks")
    def stacks() -> list[StackAnswer]:
        return [stack_answer(controller, r.name) for r in controller.store.stacks()]

    @app.get("/v1/stacks/{name}", responses=errors(404))
    def stack(name: StackPath) -> StackAnswer:
        return stack_answer(controller, name)

    @app.delete("/v1/stacks/{name}", responses=errors(409))
    def destroy(name: StackPath, keep_data: bool = False,
                actor: str = ACTOR) -> DestroyAnswer:
        """Remove the stack; its data disks too unless `keep_data` (a new stack of the same
        name finds them again)."""
        return DestroyAnswer(stack=name, generation=controller.destroy(name, actor, keep_data))

    @app.get("/v1/instances", responses=errors(503))
    def instances(stack: OptStackQuery = None) -> list[InstanceAnswer]:
        return [instance_answer(controller, v) for v in controller.instances(stack)]

    @app.get("/v1/images")
    def images() -> list[ImageAnswer]:
        return [ImageAnswer.model_validate(i, from_attributes=True)
                for i in controller.fleet.images.images()]

    def image_event(actor: str, name: str, action: str, error: RackfireError | None,
                    reason: str = "") -> None:
        """Image changes are events like any other: who asked, the outcome, and why not."""
        result = "ok" if error is None else \
            "refused" if isinstance(error, PrereqError) else "failed"
        controller.store.add_event(actor, "", f"image/{name}", action, result,
                                   reason if error is None else error.message)

    @app.post("/v1/images", responses=errors(400, 409, 500))
    def build_image(req: ImageBuild, actor: str = ACTOR) -> ImageAnswer:
        spec = ImageSpec(req.name, req.source, req.suite, tuple(req.packages), req.mirror,
                         req.path)
        try:
            info = controller.fleet.images.ensure_image(spec)
        except RackfireError as e:
            image_event(actor, req.name, "build", e)
            raise
        image_event(actor, req.name, "build", None, f"{info.digest[:12]} from {info.source}")
        return ImageAnswer.model_validate(info, from_attributes=True)

    @app.put("/v1/images/{name}/tarball", responses=errors(400, 409, 500),
             openapi_extra=binary_body())
    async def import_image(name: ImagePath, request: Request,
                           actor: str = ACTOR) -> ImageAnswer:
        """The request body is a rootfs tarball (.tar, .tar.gz, .tar.xz), streamed to disk
        under a cap, then extracted safely; a truncated or corrupt one is refused."""
        try:
            path = await spool(request, uploads, name, MAX_UPLOAD)
            try:
                info = await run_in_threadpool(controller.fleet.images.import_image, name,
                                               str(path))
            except RackfireError as e:
                # The spool file's name means nothing to the one who sent it.
                e.message = e.message.replace(str(path), "the uploaded tarball")
                raise
            finally:
                path.unlink(missing_ok=True)
        except RackfireError as e:
            await run_in_threadpool(image_event, actor, name, "import", e)
            raise
        await run_in_threadpool(image_event, actor, name, "import", None,
                                f"{info.digest[:12]}, {info.size_bytes >> 20} MiB")
        return ImageAnswer.model_validate(info, from_attributes=True)

    @app.delete("/v1/images/{name}", responses=errors(409))
    def remove_image(name: ImagePath, actor: str = ACTOR) -> RemovedAnswer:
        try:
            removed = controller.fleet.images.remove_image(name)
        except RackfireError as e:
            image_event(actor, name, "remove", e)
            raise
        image_event(actor, name, "remove", None, "" if removed else "no such image")
        return RemovedAnswer(name=name, removed=removed)

    @app.post("/v1/server/stop")
    def stop() -> StopAnswer:
        threading.Timer(0.2, shutdown).start()  # after this response has gone out
        return StopAnswer(stopping=True)

    from rackfire.api.backups import add_backup_routes
    from rackfire.api.hosts import add_host_routes
    from rackfire.api.loadtest import add_loadtest_routes
    from rackfire.api.releases import add_release_routes
    from rackfire.api.runs import add_autoscale_routes, add_run_routes
    from rackfire.api.snapshots import add_clone_routes, add_snapshot_routes
    from rackfire.api.streams import add_stream_routes  # logs and exec

    add_stream_routes(app, controller, token)
    add_release_routes(app, controller, uploads, ACTOR)
    add_tarball_routes(app, uploads)
    add_host_routes(app, controller, ACTOR, uploads.parent / "bundles")
    add_snapshot_routes(app, controller, ACTOR)
    add_clone_routes(app, controller, ACTOR)
    add_backup_routes(app, controller, ACTOR)
    add_run_routes(app, controller, ACTOR)
    add_loadtest_routes(app, controller, ACTOR)
    add_autoscale_routes(app, controller)
    return app


_FIELD = re.compile(r"([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+): ")


@contextmanager
def located(src: StackSource, uploads: Path) -> Iterator[None]:
    """A refusal that names a field of the stack file (`images.base.path: ...`) says where
    the file writes it (`stack.yaml:3:11: ...`), as the file's own problems do; one about
    an uploaded tarball does not name the server's copy, which means nothing to the client."""
    try:
        yield
    except PrereqError as e:
        doc = read_yaml(src.yaml, src.filename)
        images = doc.data.get("images") if isinstance(doc.data, dict) else None
        for image, digest in src.tarballs.items():
            written = images.get(image) if isinstance(images, dict) else None
            label = written.get("path") if isinstance(written, dict) else None
            e.message = e.message.replace(str(tarball_path(uploads, digest)),
                                          f"{label or 'the tarball'} (uploaded: {digest[:12]})")
        m = _FIELD.match(e.message)
        if m:
            path = tuple(m[1].split("."))
            if path in doc.values or path in doc.keys:
                mark = doc.mark(path)
                e.message = f"{src.filename}:{mark.line}:{mark.column}: {e.message}"
        raise


_UPGRADE = ("the server reads no path of the client's: apply the file with a rackfire CLI "
            "of this version, which resolves the paths itself and uploads what they name")


def with_uploads(spec: StackSpec, src: StackSource, uploads: Path) -> StackSpec:
    """What the file's paths name, as the client uploaded it: each `app` dir's source
    digest, each tarball image's file as kept here. The paths themselves stay labels; one
    without its upload (an older client's, which sent paths) is refused."""
    roles = []
    for role in spec.roles:
        if role.app is not None:
            digest = src.sources.get(role.name)
            if digest is None:
                raise PrereqError(f"roles.{role.name}.app: no source was uploaded for "
                                  f"{role.app.path}", hint=_UPGRADE)
            role = replace(role, app=replace(role.app, digest=digest))
        roles.append(role)
    images = []
    for image in spec.images:
        if image.source is ImageSource.TARBALL:
            digest = src.tarballs.get(image.name)
            if digest is None:
                raise PrereqError(f"images.{image.name}.path: no tarball was uploaded for "
                                  f"{image.path}", hint=_UPGRADE)
            kept = tarball_path(uploads, digest)
            if not kept.is_file():
                raise NotFound(f"images.{image.name}.path: no tarball {digest[:12]} was "
                               "uploaded", hint="upload it first (POST /v1/tarballs)")
            image = replace(image, path=str(kept))
        images.append(image)
    return replace(spec, images=tuple(images), roles=tuple(roles))


def stack_answer(controller: Controller, name: str) -> StackAnswer:
    rec = controller.store.get_stack(name)
    if rec is None:
        raise NotFound(f"no stack named {name}", hint="see `rackfire ps` or apply a stack file")
    actions = controller.store.actions(name, rec.generation)
    return StackAnswer(
        name=rec.name, generation=rec.generation,
        observed_generation=rec.observed_generation, status=rec.status,
        message=rec.message, deleting=rec.deleting, subnet=rec.subnet,
        converged=rec.status in ("converged", "degraded")
        and rec.observed_generation == rec.generation,
        actions=[JournalAction.model_validate(a, from_attributes=True) for a in actions],
        unready=[] if rec.deleting else controller.unready(name),
        data_disks=sum(r.count for r in rec.spec.roles if r.data is not None),
    )


def instance_answer(controller: Controller, v: InstanceView) -> InstanceAnswer:
    f, st = v.facts, v.status
    running = f.state == "running"
    return InstanceAnswer(
        stack=f.key.stack, name=f.key.name, role=f.key.role, index=f.key.index,
        id=f.key.id, state=v.state, ip=f.ip, host=f.host,
        runtime=f.runtime, isolated=f.runtime.value == "container",
        started_at=f.started_at,
        uptime=time.time() - f.started_at if f.started_at and running else None,
        health=v.health, health_message=v.message, pid=f.pid,
        oom_killed=f.oom_killed, exit_code=f.exit_code, exit_signal=f.exit_signal,
        ended=f.ended,
        restarts=st.restarts if st else 0,
        stopped_by_operator=bool(st and st.stopped),
        failed=st.failed if st else "",
        log=f.log or None,  # on the host that runs it (`host`), as its agent reports it
        incarnation=f.incarnation,
    )


def stats_answer(v: InstanceView, s: InstanceStats | None) -> StatsAnswer:
    f = v.facts
    measured = {k: getattr(s, k) if s else None for k in InstanceStats.__slots__ if k != "key"}
    return StatsAnswer.model_validate({
        "stack": f.key.stack, "name": f.key.name, "role": f.key.role, "index": f.key.index,
        "id": f.key.id, "state": v.state, "health": v.health, "host": f.host,
        "uptime": time.time() - f.started_at if f.started_at and f.state == "running"
        else None,
    } | measured)
