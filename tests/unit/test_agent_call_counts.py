"""The agent counts the calls it serves, by name (and by stack, for calls naming one), for
whoever holds its key: a wrong key or a call that does not exist is not counted, and the
counts are not readable without the key."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx

from rackfire.agent.hostside import HostSide, Served
from rackfire.agent.rpc import CALL_COUNTS_PATH, serve_agent
from rackfire.model.instance import InstanceFacts

KEY = "k3y"


class ObserveOnly:
    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return []


async def _exercise() -> tuple[list[int], dict[str, Any]]:
    app = serve_agent(HostSide(cast(Served, ObserveOnly())), KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://agent") as client:
        statuses = [(await client.post("/agent/v1/observe", json={"stack": "s"},
                                       headers=auth)).status_code for _ in range(3)]
        statuses.append((await client.post("/agent/v1/observe", json={},
                                           headers=auth)).status_code)
        statuses.append((await client.post("/agent/v1/observe", json={}, headers={
            "Authorization": "Bearer wrong"})).status_code)
        statuses.append((await client.post("/agent/v1/no_such_call", json={},
                                           headers=auth)).status_code)
        statuses.append((await client.get(CALL_COUNTS_PATH)).status_code)
        body = (await client.get(CALL_COUNTS_PATH, headers=auth)).json()
    return statuses, body


def test_calls_are_counted_by_name_behind_the_key() -> None:
    statuses, body = asyncio.run(_exercise())
    assert statuses == [200, 200, 200, 200, 401, 404, 401]
    assert body["calls"] == {"observe": 4}
    assert body["by_stack"] == {"s": {"observe": 3}}  # the call without a stack: only above
    assert body["started"] <= body["now"]
