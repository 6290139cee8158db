"""Routes for hosts: join tokens, an agent's join, heartbeats and layer fetches, the host list.

`/v1/agent/*` is authenticated by the route itself (a join token, or the host's own
credential), not by the admin token the other routes want."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from rackfire.api.answers import (
    CapacityAnswer,
    DrainAnswer,
    FenceAnswer,
    HaAnswer,
    HeartbeatAnswer,
    HostAnswer,
    HostChangeAnswer,
    HostOutcomeAnswer,
    HostsApplyAnswer,
    HostsPlanAnswer,
    JoinAnswer,
    MigrationAnswer,
    PlacementsAnswer,
    RemovedAnswer,
    ReplacedRun,
    TokenAnswer,
)
from rackfire.api.types import (
    BINARY,
    INSTANCE_PATTERN,
    DigestPath,
    HostName,
    HostPath,
    Labels,
    OptStackQuery,
    errors,
)
from rackfire.control.controller import Controller
from rackfire.control.failover import chains
from rackfire.control.hosts import HostView, capacity_report
from rackfire.control.hostset import (
    HostSetContext,
    apply_host_set,
    installed_version,
    plan_host_set,
)
from rackfire.errors import Conflict, PrereqError
from rackfire.model.agent import Observed
from rackfire.model.host import HostFacts
from rackfire.model.instance import InstanceKey, Target
from rackfire.model.records import Migration
from rackfire.model.stack import StackSpec
from rackfire.model.wire import decode
from rackfire.store.hosts import JOIN_TOKEN


class TokenRequest(BaseModel):
    ttl: float = Field(3600, gt=0, le=30 * 86400, description="seconds it can be used")
    uses: int = Field(1, ge=1, le=10_000, description="how many hosts may join with it")


Amount = Annotated[float, Field(ge=0)]


class Facts(BaseModel):
    """What an agent reports of its host (HostFacts); other keys are ignored (a newer
    agent may report more)."""

    model_config = ConfigDict(extra="allow")

    cpus: Amount = 0
    memory: Amount = Field(0, description="bytes")
    disk: Amount = Field(0, description="bytes")
    runtimes: list[str] = Field([], description="runtime kinds; unknown ones are ignored")
    memory_used: Amount = 0
    disk_used: Amount = 0
    version: str = ""
    interval: Amount = Field(0, description="seconds between heartbeats; 0: the default")


class Join(BaseModel):
    token: str = Field(pattern=JOIN_TOKEN.pattern,
                       description="from `rackfire token create`")
    name: HostName
    labels: Labels = {}
    facts: Facts


class Heartbeat(BaseModel):
    labels: Labels = {}
    facts: Facts
    address: str = Field("", pattern=r"^$|^[0-9A-Za-z.:\[\]-]{1,100}:[0-9]{1,5}$",
                         description="HOST:PORT of the agent's API")
    observed: dict[str, Any] | None = Field(
        None, description="its instances as it saw them (model/agent.py Observed): the "
        "observed cache reads them")
    unchanged: bool = Field(False, description="its instances are as it last told (sent "
                            "instead of `observed` when nothing changed)")


class HostsSource(BaseModel):
    yaml: str = Field(description="the hosts file's text")
    filename: str = Field("hosts.yaml", max_length=4096, description="named in error messages")


class MigrateRequest(BaseModel):
    instance: str = Field(pattern=INSTANCE_PATTERN,
                          description="STACK/ROLE/INDEX, STACK/ROLE-INDEX or STACK.ROLE.INDEX")
    to: HostName | None = Field(None, description="the target host; default: the "
                                "scheduler's choice")


def _key(text: str) -> InstanceKey:
    try:
        target = Target.parse(text)
    except ValueError as e:
        raise PrereqError(str(e)) from None
    if target.role is None or target.index is None:
        raise PrereqError(f"{text!r} names no one instance", hint="give STACK/ROLE/INDEX")
    return InstanceKey(target.stack, target.role, target.index)


def _migration(m: Migration) -> MigrationAnswer:
    return MigrationAnswer(instance=str(m.key), source=m.source, target=m.target,
                           step=m.step, started=m.started, actor=m.actor)


def _facts(facts: Facts) -> HostFacts:
    try:
        return HostFacts.from_json(facts.model_dump(mode="json"))
    except (ValueError, TypeError) as e:
        raise PrereqError(f"invalid host facts: {e}") from None


def _observed(host: str, data: dict[str, Any] | None) -> Observed | None:
    """A heartbeat's instances, each of them on the host that sends it."""
    if data is None:
        return None
    try:
        observed: Observed = decode(Observed, data)
    except (ValueError, TypeError) as e:
        raise PrereqError(f"invalid observed instances: {e}") from None
    strangers = [str(f.key) for f in observed.facts if f.host != host]
    if strangers:
        raise PrereqError(f"host {host} reports instances of another host: {strangers[:3]}")
    return observed


_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def add_host_routes(app: FastAPI, controller: Controller, actor: Any,
                    bundle_dir: Path) -> None:
    @app.post("/v1/tokens")
    def create_token(body: TokenRequest, who: str = actor) -> TokenAnswer:
        """A join token for `rackfire agent --join`: shown once, kept only hashed."""
        token, expires = controller.store.hosts.create_token(body.ttl, body.uses, who)
        controller.store.add_event(who, "", "token", "create", "ok",
                                   f"{body.uses} use(s), until {time.ctime(expires)}")
        return TokenAnswer(token=token, expires=expires, uses=body.uses)

    @app.post("/v1/agent/join", responses=errors(400, 401, 409))
    def join(body: Join) -> JoinAnswer:
        """Trade a join token for this host's own credential (shown once)."""
        credential, key = controller.store.hosts.join(body.token, body.name, body.labels,
                                        _facts(body.facts))
        controller.store.add_event(body.name, "", f"host/{body.name}", "join", "ok",
                                   ", ".join(f"{k}={v}" for k, v in sorted(body.labels.items())))
        return JoinAnswer(name=body.name, credential=credential, agent_key=key)

    @app.post("/v1/agent/heartbeat", responses=errors(400, 401))
    def heartbeat(body: Heartbeat,
                  authorization: str = Header("", alias="Authorization")) -> HeartbeatAnswer:
        name = controller.store.hosts.authenticate(authorization.removeprefix("Bearer "))
        facts = _facts(body.facts)
        observed = _observed(name, body.observed)
        liveness = controller.fleet.liveness
        epoch, back = controller.store.hosts.heartbeat(name, body.labels, facts, body.address,
                                         liveness.lease(facts.interval), liveness.since)
        if back:
            controller.store.add_event(name, "", f"host/{name}", "lease", "ok",
                                       f"heartbeats again after its lease lapsed: epoch {epoch}")
        fleet = controller.fleet
        fleet.heard(name, observed, facts, unchanged=body.unchanged)
        return HeartbeatAnswer(
            name=name, time=time.time(), epoch=epoch,
            want_observed=fleet.observed.observed_at(name) is None,
            fence_after=liveness.fence(facts.interval), lease=liveness.lease(facts.interval),
            replaced=[ReplacedRun(instance=str(k), incarnation=n)
                      for k, n in fleet.replaced_on(name)])

    @app.get("/v1/agent/layers/{digest}", response_class=StreamingResponse,
             responses={**errors(401, 404), 200: {"description": "the layer's tar stream",
                                                  "content": {"application/x-tar": {
                                                      "schema": BINARY}}}})
    def layer(digest: DigestPath,
              authorization: str = Header("", alias="Authorization")) -> StreamingResponse:
        """An image layer of the server's store as a tar stream, for a joined host (its
        credential as bearer) to verify by its digest and keep: `ensure_layer`."""
        controller.store.hosts.authenticate(authorization.removeprefix("Bearer "))
        if not _DIGEST.match(digest):
            raise PrereqError(f"invalid layer digest {digest[:80]!r}",
                              hint="expected 64 lowercase hex digits")
        # Looked up before the response starts, so a missing layer is a 404, not a cut stream.
        chunks = controller.fleet.images.layer_stream(digest)
        return StreamingResponse(chunks, media_type="application/x-tar",
                                 headers={"Cache-Control": "no-store"})

    def views() -> list[HostView]:
        return controller.fleet.views(stacks())

    def stacks() -> list[StackSpec]:
        return [r.spec for r in controller.store.stacks() if not r.deleting]

    @app.get("/v1/hosts")
    def hosts() -> list[HostAnswer]:
        """Every host: state, labels, what it can reserve, what is reserved, what is used."""
        return [HostAnswer.model_validate(v.to_json()) for v in views()]

    @app.post("/v1/hosts/plan", responses=errors(400, 422))
    def hosts_plan(body: HostsSource) -> HostsPlanAnswer:
        """What `hosts apply` of this hosts file would do (install, reconfigure, upgrade,
        uninstall), from the host set the last apply left. Nothing is changed."""
        changes = plan_host_set(controller.store, body.yaml, body.filename)
        return HostsPlanAnswer(version=installed_version(), changes=[
            HostChangeAnswer(step=c.step.value, name=c.name, changes=list(c.changes))
            for c in changes])

    @app.post("/v1/hosts/apply", responses=errors(400, 409, 422))
    def hosts_apply(body: HostsSource, who: str = actor) -> HostsApplyAnswer:
        """Carry out `hosts plan`: each host installed over SSH and joined, side by side;
        one that fails is reported with its step and the others carry on."""
        outcomes = apply_host_set(HostSetContext(controller.store, bundle_dir, lambda name: (
            controller.drain(name, who))), body.yaml, body.filename, who)
        return HostsApplyAnswer(version=installed_version(), outcomes=[
            HostOutcomeAnswer(step=o.change.step.value, name=o.change.name, done=o.done,
                              failed_step=o.step, error=o.error) for o in outcomes])

    @app.get("/v1/capacity")
    def capacity() -> CapacityAnswer:
        """Reserved and free per host; whether every instance could run again after losing
        any one host (N+1) or any one rack; how many more instances of each role fit."""
        return CapacityAnswer.model_validate(
            capacity_report(views(), stacks(), controller.fleet.placements.all()))

    @app.post("/v1/hosts/{name}/drain", responses=errors(404, 409))
    def drain(name: HostPath, who: str = actor) -> DrainAnswer:
        """Move every instance off the host, each role keeping its availability."""
        return DrainAnswer(name=name, moving=controller.drain(name, who))

    @app.post("/v1/hosts/{name}/fence", responses=errors(404, 409))
    def fence(name: HostPath, who: str = actor) -> FenceAnswer:
        """Declare the host dead now: what it held is placed again at once, singletons
        too; should it be alive, it destroys the replaced copies when it heartbeats."""
        return FenceAnswer(name=name, placing=controller.fence(name, who))

    @app.post("/v1/hosts/{name}/ready", responses=errors(404, 409))
    def ready(name: HostPath, who: str = actor) -> HostAnswer:
        """Bring a drained or fenced host back: it takes instances again."""
        controller.ready(name, who)
        return next(HostAnswer.model_validate(v.to_json()) for v in views() if v.name == name)

    @app.get("/v1/ha")
    def ha() -> list[HaAnswer]:
        """Each instance placed again only after its host's fence (singletons): the chain
        of timings that proves it stopped first, and the worst case."""
        fleet = controller.fleet
        return [HaAnswer.model_validate(c) for c in chains(
            stacks(), fleet.placements.all(), {h.name: h for h in fleet.registry.hosts()},
            fleet.liveness, fleet.server_host, time.time())]

    @app.post("/v1/migrations", responses=errors(400, 404, 409, 503))
    def migrate(body: MigrateRequest, who: str = actor) -> MigrationAnswer:
        """Move one instance to another host (cold): it is checked now, carried out by
        the stack's reconcile; `GET /v1/migrations` shows it until it is over."""
        return _migration(controller.migrate(_key(body.instance), body.to, who))

    @app.get("/v1/migrations")
    def migrations(stack: OptStackQuery = None) -> list[MigrationAnswer]:
        return [_migration(m) for m in controller.fleet.placements.migrations(stack)]

    @app.get("/v1/placements")
    def placements(stack: OptStackQuery = None) -> PlacementsAnswer:
        """Instance -> the host it is placed on."""
        placed = (controller.fleet.placements.of_stack(stack) if stack
                  else controller.fleet.placements.all())
        return PlacementsAnswer({str(k): h for k, h in sorted(placed.items())})

    @app.delete("/v1/hosts/{name}", responses=errors(404, 409))
    def remove_host(name: HostPath, who: str = actor) -> RemovedAnswer:
        """Forget a joined host: its credential stops working. Refused while instances are
        placed on it or move from or to it."""
        fleet = controller.fleet
        held = [k for k, h in fleet.placements.all().items() if h == name]
        moving = [m for m in fleet.placements.migrations() if name in (m.source, m.target)]
        gone = name in fleet.gone()  # what it held is given up: placed again elsewhere
        if (held and not gone) or moving:
            raise Conflict(f"host {name} still holds {len(held)} instance(s)"
                           + (f" and {len(moving)} migration(s)" if moving else ""),
                           hint=f"move them away first: `rackfire host drain {name}` (or, "
                           f"if it is dead, `rackfire host fence {name}`)")
        controller.store.hosts.remove(name)
        controller.store.add_event(who, "", f"host/{name}", "remove", "ok",
                                   f"{len(held)} instance(s) it held given up, placed again"
                                   if held else "")
        for stack in {k.stack for k in held}:
            controller.queue.add(stack)
        return RemovedAnswer(name=name, removed=True)
