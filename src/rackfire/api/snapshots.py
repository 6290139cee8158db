"""Routes for snapshots (take one of a stack, a role or an instance; list, remove; restore a
stack, or a new one, from one) and for clones (make, promote, diff)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field

from rackfire.api.answers import (
    CloneAnswer,
    DiffAnswer,
    RestoreAnswer,
    SnapshotAnswer,
    snapshot_answer,
)
from rackfire.api.types import Name, StackPath, TargetField, errors
from rackfire.control.controller import Controller
from rackfire.model.instance import Target
from rackfire.model.stack import NAME_PATTERN

SnapshotPath = Annotated[str, Path(pattern=NAME_PATTERN, description="a snapshot's name")]


class TakeSnapshot(BaseModel):
    target: TargetField
    name: Name | None = Field(None, description="default: s<UTC date>-<time>")


class Restore(BaseModel):
    to: Name | None = Field(None, description="the stack to restore into (default: its own;"
                                              " a new one is made)")
    confirm: bool = Field(False, description="replace the disks of instances that exist")


def add_snapshot_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    # Beside /v1/stacks, not under it: /v1/stacks/{stack}/{operation} takes that path.
    @app.post("/v1/snapshots", responses=errors(400, 404, 409, 503))
    def take(body: TakeSnapshot, who: str = actor) -> SnapshotAnswer:
        """Freeze the instances' filesystems on each host at once, copy their disks, thaw."""
        return snapshot_answer(controller.snapshots.take(Target.parse(body.target), body.name,
                                                         who))

    @app.get("/v1/snapshots")
    def snapshots(stack: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                  ) -> list[SnapshotAnswer]:
        """Oldest first, of every stack or of one."""
        return [snapshot_answer(s) for s in controller.snapshots.of_stack(stack)]

    @app.get("/v1/snapshots/{stack}/{name}", responses=errors(404))
    def snapshot(stack: StackPath, name: SnapshotPath) -> SnapshotAnswer:
        return snapshot_answer(controller.snapshots.get(stack, name))

    @app.delete("/v1/snapshots/{stack}/{name}", responses=errors(404, 503))
    def remove(stack: StackPath, name: SnapshotPath, who: str = actor) -> SnapshotAnswer:
        """Remove its copies from every host that holds one, then its record."""
        found = controller.snapshots.get(stack, name)
        controller.snapshots.remove(stack, name, who)
        return snapshot_answer(found)

    @app.post("/v1/snapshots/{stack}/{name}/restore",
              responses=errors(400, 404, 409, 503))
    def restore(stack: StackPath, name: SnapshotPath, body: Restore,
                who: str = actor) -> RestoreAnswer:
        """Make its instances again from its disks (its spec too, for a whole stack's),
        rolling like a replace. Refused onto instances that exist unless `confirm`."""
        generation, keys = controller.snapshots.restore(stack, name, body.to, body.confirm, who)
        return RestoreAnswer(stack=body.to or stack, snapshot=f"{stack}@{name}",
                             generation=generation, instances=[str(k) for k in keys])


class Clone(BaseModel):
    new: Name = Field(description="the new stack")
    snapshot: Name | None = Field(None, description="a snapshot of the stack (default: one "
                                                    "taken now)")
    port_offset: int | None = Field(None, ge=-65535, le=65535,
                                    description="added to every published port (default "
                                                "1000)")


class Promote(BaseModel):
    over: Name = Field(description="the stack whose ports and floating address it takes")


def add_clone_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    @app.post("/v1/clones/{stack}", responses=errors(400, 404, 409, 503))
    def clone(stack: StackPath, body: Clone, who: str = actor) -> CloneAnswer:
        """A new stack from a snapshot of this one: its own network, disks and ports."""
        generation, ref = controller.clones.clone(stack, body.new, body.snapshot,
                                                  body.port_offset, who)
        return CloneAnswer(stack=body.new, snapshot=ref, generation=generation)

    @app.post("/v1/clones/{stack}/promote", responses=errors(400, 404, 409, 503))
    def promote(stack: StackPath, body: Promote, who: str = actor) -> CloneAnswer:
        """This stack takes the published ports and floating address of `over`, which is
        stopped and kept (without ports) until destroyed."""
        generation = controller.clones.promote(stack, body.over, who)
        return CloneAnswer(stack=stack, snapshot="", generation=generation)

    @app.get("/v1/diff/{a}/{b}", responses=errors(404))
    def diff(a: StackPath, b: StackPath) -> DiffAnswer:
        """How b's spec (a unified diff of its JSON) and live releases differ from a's."""
        return DiffAnswer.model_validate(controller.clones.diff(a, b))
