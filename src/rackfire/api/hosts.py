"""Routes for hosts: join tokens, an agent's join and heartbeats, the host list.

`/v1/agent/*` is authenticated by the route itself (a join token, or the host's own
credential), not by the admin token the other routes want."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Header
from pydantic import BaseModel, Field

from rackfire.control.controller import Controller
from rackfire.control.hosts import HostView, capacity_report, host_views
from rackfire.errors import PrereqError
from rackfire.model.host import HostFacts
from rackfire.model.stack import StackSpec
from rackfire.store.hosts import HostRegistry


class TokenRequest(BaseModel):
    ttl: float = Field(3600, gt=0, le=30 * 86400, description="seconds it can be used")
    uses: int = Field(1, ge=1, le=10_000, description="how many hosts may join with it")


class Join(BaseModel):
    token: str = Field(max_length=200)
    name: str = Field(max_length=63)
    labels: dict[str, str] = {}
    facts: dict[str, Any]


class Heartbeat(BaseModel):
    labels: dict[str, str] = {}
    facts: dict[str, Any]
    address: str = Field("", max_length=120, description="HOST:PORT of the agent's API")


def _facts(raw: dict[str, Any]) -> HostFacts:
    try:
        return HostFacts.from_json(raw)
    except (ValueError, TypeError) as e:
        raise PrereqError(f"invalid host facts: {e}") from None


def add_host_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    registry = HostRegistry(controller.store)

    @app.post("/v1/tokens")
    def create_token(body: TokenRequest, who: str = actor) -> dict[str, Any]:
        """A join token for `rackfire agent --join`: shown once, kept only hashed."""
        token, expires = registry.create_token(body.ttl, body.uses, who)
        controller.store.add_event(who, "", "token", "create", "ok",
                                   f"{body.uses} use(s), until {time.ctime(expires)}")
        return {"token": token, "expires": expires, "uses": body.uses}

    @app.post("/v1/agent/join")
    def join(body: Join) -> dict[str, Any]:
        """Trade a join token for this host's own credential (shown once)."""
        credential, key = registry.join(body.token, body.name, body.labels,
                                        _facts(body.facts))
        controller.store.add_event(body.name, "", f"host/{body.name}", "join", "ok",
                                   ", ".join(f"{k}={v}" for k, v in sorted(body.labels.items())))
        return {"name": body.name, "credential": credential, "agent_key": key}

    @app.post("/v1/agent/heartbeat")
    def heartbeat(body: Heartbeat,
                  authorization: str = Header("", alias="Authorization")) -> dict[str, Any]:
        name = registry.authenticate(authorization.removeprefix("Bearer "))
        registry.heartbeat(name, body.labels, _facts(body.facts), body.address)
        return {"name": name, "time": time.time()}

    def views() -> list[HostView]:
        agent = controller.agent
        return host_views(agent.info().name, agent.facts(), registry.hosts(), stacks(),
                          time.time())

    def stacks() -> list[StackSpec]:
        return [r.spec for r in controller.store.stacks() if not r.deleting]

    @app.get("/v1/hosts")
    def hosts() -> list[dict[str, Any]]:
        """Every host: state, labels, what it can reserve, what is reserved, what is used."""
        return [v.to_json() for v in views()]

    @app.get("/v1/capacity")
    def capacity() -> dict[str, Any]:
        """Reserved and free per host; whether every instance could run again after losing
        any one host (N+1) or any one rack; how many more instances of each role fit."""
        return capacity_report(views(), stacks())

    @app.delete("/v1/hosts/{name}")
    def remove_host(name: str, who: str = actor) -> dict[str, Any]:
        """Forget a joined host: its credential stops working."""
        registry.remove(name)
        controller.store.add_event(who, "", f"host/{name}", "remove", "ok", "")
        return {"name": name, "removed": True}
