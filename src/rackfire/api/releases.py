"""Routes for releases: upload an app's source, push it into a role, list and roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rackfire.api.answers import ChangeAnswer, ReleaseAnswer, SourceAnswer, change_answer
from rackfire.api.types import (
    DIGEST_PATTERN,
    Name,
    OptRoleQuery,
    RolePath,
    StackPath,
    binary_body,
    errors,
)
from rackfire.api.uploads import spool
from rackfire.control.controller import Controller
from rackfire.model.stack import MAX_SOURCE_BYTES


class Push(BaseModel):
    # Something to push: said in the schema too, so that a client sees it there.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["source"], "properties": {"source": {"type": "string"}}},
        {"required": ["image"], "properties": {"image": {"type": "string"}}}]})

    source: str | None = Field(None, pattern=DIGEST_PATTERN,
                               description="an uploaded source's digest (POST /v1/sources)")
    label: str = Field("", max_length=4096, description="where it came from, for people")
    image: Name | None = Field(None, description="a built image for the role's base OS")

    @model_validator(mode="after")
    def _something_to_push(self) -> Self:
        if self.source is None and self.image is None:
            raise ValueError("nothing to push: give a source, an image, or both")
        return self


class Rollback(BaseModel):
    version: int | None = Field(None, ge=1, description="default: the release live before")


def add_release_routes(app: FastAPI, controller: Controller, uploads: Path,
                       actor: Any) -> None:
    @app.post("/v1/sources", responses=errors(400, 500),
              openapi_extra=binary_body())
    async def upload_source(request: Request) -> SourceAnswer:
        """The body is a gzip tar of an app's source dir; it is extracted safely and kept by
        the digest of its content (the same dir uploaded twice is one source)."""
        path = await spool(request, uploads, "source", MAX_SOURCE_BYTES)
        try:
            digest = await run_in_threadpool(controller.fleet.images.store_source, str(path))
        finally:
            path.unlink(missing_ok=True)
        return SourceAnswer(digest=digest)

    # Both plan the change as scale does: its checks may ask a joined host (503).
    @app.post("/v1/stacks/{stack}/roles/{role}/push", responses=errors(400, 404, 409, 503))
    def push(stack: StackPath, role: RolePath, body: Push, who: str = actor) -> ChangeAnswer:
        """Make the source (and/or image) the role's next release and roll it out."""
        return change_answer(*controller.push(stack, role, who, source=body.source,
                                              label=body.label, image=body.image))

    @app.post("/v1/stacks/{stack}/roles/{role}/rollback",
              responses=errors(400, 404, 409, 503))
    def rollback(stack: StackPath, role: RolePath, body: Rollback,
                 who: str = actor) -> ChangeAnswer:
        """Go back to an earlier release: the one asked for, or the one live before."""
        return change_answer(*controller.rollback(stack, role, body.version, who))

    @app.get("/v1/stacks/{stack}/releases", responses=errors(404))
    def releases(stack: StackPath, role: OptRoleQuery = None) -> list[ReleaseAnswer]:
        """Newest first; `current` marks what the role's desired spec runs."""
        return [ReleaseAnswer.model_validate(rel.to_json() | {"current": cur})
                for rel, cur in controller.releases(stack, role)]
