"""The client's types (api/shapes.py): generated from the answer models and never edited by
hand, and each client method typed with the shape of the answer of the route it calls."""

from __future__ import annotations

import ast
import datetime
import inspect
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Match

from rackfire.api import shapes
from rackfire.api.app import create_app
from rackfire.api.client import Client
from rackfire.api.shapes_gen import COMMAND, SHAPES, _Renderer, render, shape_name
from rackfire.control.controller import Controller

# Each client method that returns an answer, with arguments to call it with.
CALLS: dict[str, tuple[Any, ...]] = {
    "health": (), "plan": ("name: shop\n", "shop.yaml"), "apply": ("name: shop\n", "shop.yaml"),
    "push": ("shop", "web", None, "", "base"), "rollback": ("shop", "web", None),
    "releases": ("shop",), "take_snapshot": ("shop", None, None, None),
    "snapshots": (), "remove_snapshot": ("shop", "s1"), "restore": ("shop", "s1", None, False),
    "add_repository": ("r", "/srv/b", "pw", {}), "repositories": (),
    "remove_repository": ("r",), "take_backup": ("shop", None, None, "default", None),
    "backups": (), "remove_backup": ("shop", "b1"), "verify_backup": ("shop", "b1"),
    "restore_backup": ("shop", "b1", None, False),
    "clone": ("shop", "try", None, None), "promote": ("try", "shop"), "diff": ("shop", "try"),
    "start_task": ("shop", "web", ["true"], None), "run": ("shop", 1), "runs": ("shop",),
    "cancel_run": ("shop", 1), "jobs": ("shop",), "autoscale": ("shop",),
    "start_load": ("shop", "http://10.0.0.1:8000/", 4, 100.0, 5.0),
    "load_test": ("0123456789ab",),
    "stack": ("shop",), "stacks": (), "destroy": ("shop",),
    "instances": (), "scale": ("shop", "web", 2), "resize": ("shop", "web"),
    "operate": ("shop", "stop", None, None), "stats": ("shop",), "events": (), "images": (),
    "build_image": (), "import_image": ("base", "TARBALL"), "remove_image": ("base",),
    "schema": (), "create_token": (60.0, 1), "capacity": (), "hosts": (),
    "hosts_plan": ("hosts: []", "hosts.yaml"), "hosts_apply": ("hosts: []", "hosts.yaml"),
    "drain": ("h1",),
    "fence": ("h1",), "ready": ("h1",), "ha": (),
    "migrate": ("shop/web/0", None), "migrations": (), "placements": (),
    "remove_host": ("h1",),
}
# The methods that return no answer as it comes: what they make of it instead.
NOT_AN_ANSWER = {
    "alive": "whether the server answers /v1/health",
    "upload_source": "the digest of SourceAnswer", "upload_packed": "the digest of SourceAnswer",
    "has_tarball": "whether /v1/tarballs/{digest} is found",
    "upload_tarball": "the digest of TarballAnswer", "stop_server": "nothing", "close": "-",
}


def test_shapes_are_generated_from_the_answer_models() -> None:
    assert SHAPES.read_text() == render(), (
        f"{SHAPES} is not what api/answers.py makes of it: run `{COMMAND}`")


def test_shapes_cost_the_cli_no_import() -> None:
    """The CLI imports it for its types: standard typing only, never pydantic."""
    tree = ast.parse(SHAPES.read_text())
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names}
    assert imported == {"__future__", "typing"}


def test_a_field_type_without_a_json_shape_stops_the_generator() -> None:
    with pytest.raises(TypeError, match=r"Answer\.when: no JSON shape for"):
        _Renderer().of(datetime.datetime | None, "Answer.when")


@pytest.fixture(scope="module")
def routes() -> list[APIRoute]:
    # Building the routes calls nothing of the controller's (as in test_api_answers.py).
    stand_in = cast(Controller, SimpleNamespace(store=None, agent=None, fleet=None))
    app = create_app(stand_in, lambda: None, Path("/nonexistent"), "token")
    return [r for r in app.routes if isinstance(r, APIRoute)]


def route_of(routes: list[APIRoute], request: httpx.Request) -> APIRoute:
    scope = {"type": "http", "method": request.method, "path": request.url.path,
             "root_path": ""}
    return next(r for r in routes if r.matches(scope)[0] == Match.FULL)


def test_every_client_method_is_typed_with_its_routes_answer(
        routes: list[APIRoute], tmp_path: Path) -> None:
    public = {n for n, _ in inspect.getmembers(Client, inspect.isfunction)
              if not n.startswith("_")}
    assert public == set(CALLS) | set(NOT_AN_ANSWER), "a new method: add it to CALLS"
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"digest": "0" * 64})

    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"")
    client = Client("http://rackfire.test", data_dir=tmp_path)
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    for name, args in CALLS.items():
        sent.clear()
        getattr(client, name)(*(tarball if a == "TARBALL" else a for a in args))
        assert len(sent) == 1, name
        model = route_of(routes, sent[0]).response_model
        is_list = typing.get_origin(model) is list
        shape = getattr(shapes, shape_name(typing.get_args(model)[0] if is_list else model))
        hints = typing.get_type_hints(getattr(Client, name), localns=vars(shapes))
        assert hints["return"] == (list[shape] if is_list else shape), (
            f"Client.{name} calls {sent[0].method} {sent[0].url.path}, answered by {model}")
