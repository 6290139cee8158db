"""Routes for backups: repositories (their secrets go in, never out), backups of a stack, a
role or an instance, their restore and their verification."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field

from rackfire.api.answers import (
    BackupAnswer,
    RepositoryAnswer,
    RestoreAnswer,
    VerifyAnswer,
    backup_answer,
    repository_answer,
)
from rackfire.api.types import Name, StackPath, TargetField, errors
from rackfire.control.controller import Controller
from rackfire.model.instance import Target
from rackfire.model.stack import NAME_PATTERN

BackupPath = Annotated[str, Path(pattern=NAME_PATTERN, description="a backup's name")]
RepoPath = Annotated[str, Path(pattern=NAME_PATTERN, description="a repository's name")]


# A value restic gets in its environment: no NUL (an environment cannot hold one).
EnvText = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")]
BackendVariable = Literal["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                          "AWS_SESSION_TOKEN"]


class AddRepository(BaseModel):
    name: Name
    # An absolute directory (on the hosts) or an S3 bucket: never a path relative to
    # wherever the server happens to run.
    url: str = Field(max_length=4096, pattern=r"^(?:/|local:/|s3:https?://)[^\x00\n\r]*$",
                     description="a directory (absolute), or s3:http(s)://HOST/BUCKET[/PREFIX]")
    password: EnvText = Field(description="encrypts it: keep it",
                              json_schema_extra={"writeOnly": True})
    env: dict[BackendVariable, EnvText] = Field(
        {}, description="what an S3 backend needs besides", json_schema_extra={"writeOnly": True})


class TakeBackup(BaseModel):
    target: TargetField
    repository: Name = "default"
    name: Name | None = Field(None, description="default: b<UTC date>-<time>")


class RestoreBackup(BaseModel):
    to: Name | None = Field(None, description="the stack to restore into (default: its own)")
    confirm: bool = Field(False, description="replace the disks of instances that exist")


def add_backup_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    @app.post("/v1/repositories", responses=errors(400, 404, 409, 503))
    def add_repository(body: AddRepository, who: str = actor) -> RepositoryAnswer:
        """Open the repository from a host (made if new) and keep it; refused, nothing
        kept, if it cannot be reached or the password does not open it."""
        return repository_answer(controller.backups.add_repository(
            body.name, body.url, body.password, sorted((str(k), v) for k, v in body.env.items()),
            who))

    @app.get("/v1/repositories")
    def repositories() -> list[RepositoryAnswer]:
        return [repository_answer(r) for r in controller.backups.repositories()]

    @app.delete("/v1/repositories/{name}", responses=errors(404, 409))
    def remove_repository(name: RepoPath, who: str = actor) -> RepositoryAnswer:
        found = [r for r in controller.backups.repositories() if r.name == name]
        controller.backups.remove_repository(name, who)
        return repository_answer(found[0])

    @app.post("/v1/backups", responses=errors(400, 404, 409, 503))
    def take(body: TakeBackup, who: str = actor) -> BackupAnswer:
        """A snapshot of it, sent by each host to the repository, then removed."""
        return backup_answer(controller.backups.create(Target.parse(body.target),
                                                       body.repository, body.name, who))

    @app.get("/v1/backups")
    def backups(stack: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                ) -> list[BackupAnswer]:
        """Oldest first: a destroyed stack's too."""
        return [backup_answer(b) for b in controller.backups.of_stack(stack)]

    @app.delete("/v1/backups/{stack}/{name}", responses=errors(404, 503))
    def remove(stack: StackPath, name: BackupPath, who: str = actor) -> BackupAnswer:
        found = controller.backups.get(stack, name)
        controller.backups.remove(stack, name, who)
        return backup_answer(found)

    @app.post("/v1/backups/{stack}/{name}/verify", responses=errors(404, 409, 503))
    def verify(stack: StackPath, name: BackupPath, who: str = actor) -> VerifyAnswer:
        """The repository's data checked, and every disk of the backup read back whole."""
        read, took = controller.backups.verify(stack, name, who)
        return VerifyAnswer(backup=f"{stack}@{name}", read=read, seconds=round(took, 3))

    @app.post("/v1/backups/{stack}/{name}/restore", responses=errors(400, 404, 409, 503))
    def restore(stack: StackPath, name: BackupPath, body: RestoreBackup,
                who: str = actor) -> RestoreAnswer:
        """Read it back onto hosts as its snapshot, then restore from that (rolling)."""
        generation, keys = controller.backups.restore(stack, name, body.to, body.confirm, who)
        return RestoreAnswer(stack=body.to or stack, snapshot=f"{stack}@{name}",
                             generation=generation, instances=[str(k) for k in keys])
