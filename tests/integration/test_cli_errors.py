"""What a user sees when something is wrong: a short message that says where and what, exit 1,
and nothing changed on the host or in the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import (  # type: ignore[import-not-found]
    Server,
    free_port,
    host_traces,
    unique,
    write_stack,
)

pytestmark = pytest.mark.root

# Each bad file: its text (line numbers matter), then where the problem is reported
# (line, column), the field path named (None for a YAML syntax error, which has no tree yet),
# and a word the message must contain.
BAD_FILES = {
    "typo_key": ("""\
stack: {stack}
images:
  base: {{from: host}}
roles:
  web:
    image: base
    comand: ["sleep", "100000"]
""", (7, 5), "roles.web.comand", "did you mean 'command'"),
    "wrong_type": ("""\
stack: {stack}
images:
  base: {{from: host}}
roles:
  web:
    image: base
    count: three
    command: ["sleep", "100000"]
""", (7, 12), "roles.web.count", "expected an integer"),
    "unknown_top_level": ("""\
stack: {stack}
images:
  base: {{from: host}}
networks: {{}}
roles:
  web:
    image: base
    command: ["sleep", "100000"]
""", (4, 1), "networks", "unknown key 'networks'"),
    "invalid_yaml": ("""\
stack: {stack}
images:
  base: {{from: host}}
roles:
  web:
    image: base: other
    command: ["sleep", "100000"]
""", (6, 16), None, "invalid YAML"),
}


def assert_nothing_created(server: Server, stack: str) -> None:
    assert server.ps(stack) == []
    assert stack not in {s["name"] for s in server.api("/v1/stacks")}
    assert host_traces(stack) == []


def assert_short_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.splitlines()) < 25, proc.stderr


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_stack_file_is_refused_with_its_location(
        server: Server, tmp_path: Path, case: str) -> None:
    text, (line, column), field, words = BAD_FILES[case]
    stack = unique("ce")
    f = write_stack(tmp_path, text.format(stack=stack))
    for args in (("plan", "-f", str(f)), ("apply", "-f", str(f), "-y")):
        proc = server.cli(*args, check=False)
        assert_short_error(proc)
        assert f"{f}:{line}:{column}:" in proc.stderr, proc.stderr
        if field is not None:
            assert f"{f}:{line}:{column}: {field}: " in proc.stderr, proc.stderr
        assert words in proc.stderr, proc.stderr
        assert "nothing was changed" in proc.stderr
    assert_nothing_created(server, stack)


def test_no_server_says_how_to_start_one(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "rackfire", "ps"],
                          env={**os.environ, "RACKFIRE_URL": url, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert_short_error(proc)
    assert url in proc.stderr
    assert "rackfire server" in proc.stderr  # how to start one
    assert "RACKFIRE_URL" in proc.stderr


def test_plan_of_new_stack_exits_2_and_changes_nothing(server: Server, tmp_path: Path) -> None:
    stack = unique("cp")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    command: ["sleep", "100000"]
  db:
    image: base
    command: ["sleep", "100000"]
""")
    proc = server.cli("plan", "-f", str(f), "--json", check=False)
    assert proc.returncode == 2, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["stack"] == stack
    assert sorted((a["kind"], a["instance"]) for a in plan["actions"]) == [
        ("create", f"{stack}/db/0"), ("create", f"{stack}/web/0"), ("create", f"{stack}/web/1")]
    # The human form says the same, also with exit 2.
    human = server.cli("plan", "-f", str(f), check=False)
    assert human.returncode == 2
    assert "3 to create" in human.stdout
    assert_nothing_created(server, stack)


def test_schema_is_json_schema_of_the_stack_file(server: Server) -> None:
    schema = json.loads(server.cli("schema").stdout)
    assert "json-schema.org" in schema["$schema"]
    assert {"stack", "images", "roles"} <= set(schema["properties"])
    # Each role is described, so an editor can complete and check its keys.
    roles = schema["properties"]["roles"]
    assert roles["type"] == "object"
    [role_ref] = [v["$ref"] for v in roles["patternProperties"].values()]
    role = schema["$defs"][role_ref.rsplit("/", 1)[-1]]
    assert {"image", "count", "command", "health"} <= set(role["properties"])
    assert role.get("additionalProperties") is False  # a typo'd key is flagged


def test_undeclared_unbuilt_image_is_refused_before_anything_changes(
        server: Server, tmp_path: Path) -> None:
    stack = unique("ci")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: ["sleep", "100000"]
  app:
    image: ghost
    command: ["sleep", "100000"]
""")
    for args in (("plan", "-f", str(f)), ("apply", "-f", str(f), "-y")):
        proc = server.cli(*args, check=False)
        assert_short_error(proc)
        assert "'ghost'" in proc.stderr and "roles.app.image" in proc.stderr, proc.stderr
        assert "rackfire image build" in proc.stderr  # what to do about it
    assert_nothing_created(server, stack)
    # Not even the declared image was built on the way.
    assert server.api("/v1/images") == []
