"""The API's answers (api/answers.py): every route's OpenAPI says what it answers, and the
models send exactly the JSON the routes sent before they had models (same keys, same order,
same JSON types: the CLI prints answers as they come with --json)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import WebSocketRoute

from rackfire.api.answers import (
    CapacityAnswer,
    EventAnswer,
    HostAnswer,
    ImageAnswer,
    JournalAction,
    MigrationAnswer,
    PlanAnswer,
    ReleaseAnswer,
    StatsAnswer,
    change_answer,
)
from rackfire.api.app import create_app
from rackfire.api.types import ErrorDetail, Problem
from rackfire.control.controller import Controller
from rackfire.control.hosts import HostView, capacity_report
from rackfire.errors import SpecError, SpecProblem
from rackfire.model.agent import HostCapacity, ImageSummary, InstanceStats
from rackfire.model.host import HostFacts, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.model.records import ActionRecord, Event, Release, ReleaseStatus
from rackfire.model.stack import RuntimeKind
from rackfire.plan.actions import Action, ActionKind, Plan
from rackfire.spec import load_stack_text
from rackfire.store.placements import Migration

# Routes whose answer is a stream, not a JSON document: (method, path) -> media type.
STREAMS = {
    ("get", "/v1/instances/{instance_id}/logs"): "text/plain",
    ("get", "/v1/stacks/{stack}/logs"): "text/plain",
    ("get", "/v1/agent/layers/{digest}"): "application/x-tar",
}
# Not in an OpenAPI at all (it has no websockets): the exec protocol is streaming.py's.
WEBSOCKETS = {"/v1/instances/{instance_id}/exec"}
# The only answers with a secret in them, each shown once, where it is made.
SECRETS = {("post", "/v1/tokens"): {"token"},
           ("post", "/v1/agent/join"): {"credential", "agent_key"}}
SECRET_NAME = re.compile(r"token|credential|secret|key|password", re.IGNORECASE)


@pytest.fixture(scope="module")
def app() -> Any:
    # Building the routes and their schema calls nothing of the controller's.
    stand_in = cast(Controller, SimpleNamespace(store=None, agent=None, fleet=None))
    return create_app(stand_in, lambda: None, Path("/nonexistent"), "token")


@pytest.fixture(scope="module")
def api(app: Any) -> dict[str, Any]:
    schema: dict[str, Any] = app.openapi()
    return schema


def operations(api: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in api["paths"].items()
            for method, op in ops.items()]


def resolve(api: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = api["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def undescribed(api: dict[str, Any], schema: dict[str, Any], where: str,
                seen: set[str]) -> list[str]:
    """Where a JSON answer's schema says nothing: an object without properties, a value of
    any type (a field typed Any)."""
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return []
        seen = seen | {schema["$ref"]}
    schema = resolve(api, schema)
    if not schema.keys() & {"type", "anyOf", "oneOf", "allOf", "enum", "const"}:
        return [where]
    found = []
    for i, option in enumerate(schema.get("anyOf", []) + schema.get("oneOf", [])):
        found += undescribed(api, option, f"{where}|{i}", seen)
    if schema.get("type") == "array":
        found += undescribed(api, schema.get("items", {}), f"{where}[]", seen)
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if not schema.get("properties") and not isinstance(extra, dict):
            found.append(where)
        for name, prop in schema.get("properties", {}).items():
            found += undescribed(api, prop, f"{where}.{name}", seen)
        if isinstance(extra, dict):
            found += undescribed(api, extra, f"{where}.*", seen)
    return found


def property_names(api: dict[str, Any], schema: dict[str, Any], seen: set[str]) -> set[str]:
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return set()
        seen = seen | {schema["$ref"]}
    schema = resolve(api, schema)
    names = set(schema.get("properties", {}))
    subs = [*schema.get("properties", {}).values(), *schema.get("anyOf", [])]
    subs += [schema[k] for k in ("items", "additionalProperties")
             if isinstance(schema.get(k), dict)]
    for sub in subs:
        names |= property_names(api, sub, seen)
    return names


def test_every_route_answers_a_described_document_or_a_listed_stream(
        api: dict[str, Any]) -> None:
    seen_streams = set()
    for method, path, op in operations(api):
        ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert list(ok) == ["200"], (method, path, ok)
        content = ok["200"].get("content", {})
        if (method, path) in STREAMS:
            seen_streams.add((method, path))
            assert list(content) == [STREAMS[method, path]], (method, path, content)
            assert content[STREAMS[method, path]].get("schema", {}).get("type") == "string"
            continue
        assert list(content) == ["application/json"], (method, path, content)
        schema = content["application/json"].get("schema", {})
        where = f"{method.upper()} {path}"
        assert undescribed(api, schema, where, set()) == [], where
    assert seen_streams == set(STREAMS)  # the list names no route that is gone


def test_every_route_is_in_the_schema_but_the_websocket(app: Any, api: dict[str, Any]) -> None:
    in_schema = {(m, p) for m, p, _ in operations(api)}
    routes = {(m.lower(), r.path) for r in app.routes if isinstance(r, APIRoute)
              for m in r.methods}
    assert routes == in_schema
    assert {r.path for r in app.routes if isinstance(r, WebSocketRoute)} == WEBSOCKETS


def test_every_error_answer_is_the_one_error_body(api: dict[str, Any]) -> None:
    for method, path, op in operations(api):
        for status, response in op["responses"].items():
            if status.startswith("2"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_secrets_are_only_in_the_answers_that_make_them(api: dict[str, Any]) -> None:
    for method, path, op in operations(api):
        content = op["responses"]["200"].get("content", {}).get("application/json")
        if content is None:
            continue
        secret = {n for n in property_names(api, content["schema"], set())
                  if SECRET_NAME.search(n)}
        assert secret == SECRETS.get((method, path), set()), (method, path)


# The answers are the JSON the domain values' own to_json gives, exactly.

def same_json(answer: BaseModel, data: object) -> None:
    assert json.dumps(answer.model_dump(mode="json")) == json.dumps(data)


KEY = InstanceKey("shop", "web", 1)


def test_a_plan_and_a_change_answer_what_the_plan_says() -> None:
    plan = Plan("shop", 3, (
        Action(ActionKind.RESTART, KEY, "unhealthy", not_before=1700000000.25,
               after_failure=True),
        Action(ActionKind.REPLACE, InstanceKey("shop", "web", 0), "new spec",
               held="web-1 is not healthy yet", batch=2)),
        notes=("count: the file sets 2, scale set 3",), placement=("web-0 -> vm1",))
    same_json(PlanAnswer.model_validate(plan.to_json()), plan.to_json())
    change = change_answer(4, plan)
    same_json(change, plan.to_json() | {"generation": 4})
    assert change.generation == 4


def test_events_releases_images_and_migrations_answer_their_records() -> None:
    event = Event(7, 1700000000, "alice@h", "shop", "shop/web/0", "restart", "ok", "")
    same_json(EventAnswer.model_validate(event, from_attributes=True), event.to_json())
    release = Release("shop", "web", 2, "a" * 64, "./app", "b" * 64, "base", "c" * 64,
                      "alice@h", 1700000000.5, ReleaseStatus.LIVE, "", 1700000001)
    data = release.to_json() | {"current": True}
    same_json(ReleaseAnswer.model_validate(data), data)
    image = ImageSummary("base", "d" * 64, "host", 1700000000.5, 1 << 20)
    same_json(ImageAnswer.model_validate(image, from_attributes=True),
              {f.name: getattr(image, f.name) for f in dataclasses.fields(image)})
    # These are copied field by field: a field the record gains must be answered too.
    assert set(MigrationAnswer.model_fields) == \
        {"instance"} | {f.name for f in dataclasses.fields(Migration)} - {"key"}
    assert set(JournalAction.model_fields) <= {f.name for f in dataclasses.fields(ActionRecord)}
    measured = [f.name for f in dataclasses.fields(InstanceStats) if f.name != "key"]
    assert list(StatsAnswer.model_fields)[-len(measured):] == measured


def test_hosts_and_capacity_answer_what_the_scheduler_says() -> None:
    stack = load_stack_text("""
stack: shop
roles:
  web:
    image: base
    count: 2
    command: [sleep, "1"]
    resources: {cpu: 1, memory: 1G, disk: 1G}
""", "s.yaml")
    g = 1 << 30
    # A whole number of cores stays a whole number: 2, not 2.0.
    big = HostFacts(HostCapacity(2, 4 * g, 10 * g), (RuntimeKind.CONTAINER,), g, g, "0.1")
    small = HostFacts(HostCapacity(0.5, g, g), (RuntimeKind.PROCESS,), 0, 0, "0.1", 2.0)
    views = [HostView("vm1", "ready", True, (), big, Reservation(2.0, 2 * g, 2 * g), None),
             HostView("vm2", "lost", False, (("rack", "r1"),), small, Reservation(),
                      1700000000.5, "10.0.0.2:7481")]
    for v in views:
        same_json(HostAnswer.model_validate(v.to_json()), v.to_json())
    placed = {InstanceKey("shop", "web", 0): "vm1", InstanceKey("shop", "web", 1): "vm1"}
    report = capacity_report(views, [stack], placed)
    assert report["n_plus_1"]["losses"][0]["stranded"]  # losing vm1 strands both
    same_json(CapacityAnswer.model_validate(report), report)


def test_the_error_body_describes_what_the_errors_send() -> None:
    error = SpecError([SpecProblem("s.yaml", 3, 5, "roles.web.count", "too many")])
    detail = error.to_dict()
    same_json(ErrorDetail.model_validate(detail), detail)
    assert set(Problem.model_fields) == {f.name for f in dataclasses.fields(SpecProblem)}
