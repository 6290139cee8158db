"""What a user sees when something is wrong: a short message that says where and what, exit 1,
and nothing changed on the host or in the server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
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
    # The server is new: its image is built first, as an action of the plan.
    assert sorted((a["kind"], a["subject"]) for a in plan["actions"]) == [
        ("build-image", "image/base"), ("create", f"{stack}/db/0"),
        ("create", f"{stack}/web/0"), ("create", f"{stack}/web/1")]
    # The human form says the same, also with exit 2.
    human = server.cli("plan", "-f", str(f), check=False)
    assert human.returncode == 2
    assert "1 to build image, 3 to create" in human.stdout
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


@pytest.mark.parametrize("case", ["not_a_tar", "truncated", "missing", "directory"])
def test_tarball_image_that_cannot_be_imported_is_refused_before_anything_changes(
        server: Server, tmp_path: Path, case: str) -> None:
    """No stack record (which the server would retry forever): plan and apply refuse, saying
    which image, which file and where the stack file names it."""
    path = tmp_path / "NOT_A_TAR"
    if case == "not_a_tar":
        path.write_text("this is not a tar archive\n" * 50)
    elif case == "truncated":  # every member whole, but no end-of-archive marker
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name in ("etc", "bin"):
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
        path.write_bytes(buf.getvalue()[:1024])
    elif case == "directory":
        path.mkdir()
    stack = unique("ct")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images:
  x: {{from: tarball, path: NOT_A_TAR}}
roles:
  web:
    image: x
    command: ["sleep", "100000"]
""")
    words = {"not_a_tar": "is not a readable tar archive", "truncated": "is truncated",
             "missing": "does not exist", "directory": "is not a regular file"}[case]
    # What the CLI finds itself (no file to upload) names the path as resolved here; what
    # the server finds in the uploaded copy names it as the file writes it.
    named = str(path) if case in ("missing", "directory") else "NOT_A_TAR (uploaded: "
    for args in (("plan", "-f", str(f)), ("apply", "-f", str(f), "-y")):
        proc = server.cli(*args, check=False)
        assert_short_error(proc)
        assert f"{f}:3:" in proc.stderr and "images.x.path" in proc.stderr, proc.stderr
        assert "image 'x'" in proc.stderr and named in proc.stderr, proc.stderr
        assert words in proc.stderr, proc.stderr
    # The CLI stops at its plan; the server refuses an apply sent straight to it as well,
    # with the tarball uploaded (and an event of it) or, as an older client sent it, a path.
    body: dict[str, object] = {"yaml": f.read_text(), "filename": str(f)}
    if path.is_file():
        r = httpx.post(server.url + "/v1/tarballs", headers=server.auth, timeout=60,
                       content=path.read_bytes())
        body["tarballs"] = {"x": r.json()["digest"]}
    else:
        body["base_dir"] = str(tmp_path)
    r = httpx.post(server.url + "/v1/apply", headers=server.auth, timeout=60, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(f"{f}:3:"), r.text
    assert_nothing_created(server, stack)
    assert server.api("/v1/images") == []
    refused = [e for e in server.api(f"/v1/events?stack={stack}") if e["action"] == "apply"]
    assert [e["result"] for e in refused] == (["refused"] if path.is_file() else [])


# Hostile files (issue 13): each refused at its line by the CLI and, sent straight to the
# API, by the server (422, never a 500), with nothing created. STACK is the stack's name.
HOSTILE_FILES = {
    "include": ("""\
stack: STACK
images:
  base: {from: host}
roles:
  web:
    image: base
    command: ["sleep", "100000"]
    files:
      /etc/app.conf: "{% include '/etc/shadow' %}"
""", (9, 22), 'roles.web.files["/etc/app.conf"]', "{% include %} is not allowed"),
    "power": ("""\
stack: STACK
images:
  base: {from: host}
roles:
  web:
    image: base
    command: ["sleep", "100000"]
    files:
      /etc/app.conf: "{{ 10 ** 5000 }}"
""", (9, 22), 'roles.web.files["/etc/app.conf"]', "more than 4096 bits"),
    "huge_output": ("""\
stack: STACK
images:
  base: {from: host}
roles:
  web:
    image: base
    command: ["sleep", "100000"]
    resources: {disk: 64M}
    files:
      /etc/app.conf: "{{ 'x' * 300000000 }}"
""", (10, 22), 'roles.web.files["/etc/app.conf"]', "the limit is 1,048,576"),
    "uses_cycle": ("""\
stack: STACK
images:
  base: {from: host}
roles:
  a: {image: base, command: ["sleep", "100000"], uses: [b]}
  b: {image: base, command: ["sleep", "100000"], uses: [c]}
  c: {image: base, command: ["sleep", "100000"], uses: [a]}
""", (7, 57), "roles.c.uses[0]", "cycle: a -> b -> c -> a"),
}


def post_stack(server: Server, path: str, text: str) -> httpx.Response:
    return httpx.post(server.url + path, headers=server.auth, timeout=60,
                      json={"yaml": text, "filename": "hostile.yaml"})


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_stack_file_is_refused_at_its_line_by_cli_and_server(
        server: Server, tmp_path: Path, case: str) -> None:
    template, (line, column), field, words = HOSTILE_FILES[case]
    stack = unique("ch")
    text = template.replace("STACK", stack)
    f = write_stack(tmp_path, text)
    for args in (("plan", "-f", str(f)), ("apply", "-f", str(f), "-y")):
        proc = server.cli(*args, check=False)
        assert_short_error(proc)
        assert f"{f}:{line}:{column}: {field}: " in proc.stderr, proc.stderr
        assert words in proc.stderr, proc.stderr
        assert "nothing was changed" in proc.stderr
    # The server checks the same by itself, for a client that does not.
    for path in ("/v1/plan", "/v1/apply"):
        resp = post_stack(server, path, text)
        assert resp.status_code == 422, resp.text
        [problem] = resp.json()["error"]["problems"]
        assert (problem["file"], problem["line"], problem["column"], problem["field"]) == (
            "hostile.yaml", line, column, field)
        assert words in problem["message"], problem
    assert_nothing_created(server, stack)


def test_stack_file_over_one_mib_is_refused_by_cli_and_server(
        server: Server, tmp_path: Path) -> None:
    stack = unique("cb")
    text = (f"stack: {stack}\nimages: {{base: {{from: host}}}}\nroles:\n"
            "  web: {image: base, command: [sleep, '100000']}\n" + "# padding\n" * 150_000)
    # 1.5 MB: a valid stack file, too large, in a request the API takes (under 2 MiB)
    f = write_stack(tmp_path, text)
    proc = server.cli("plan", "-f", str(f), check=False)
    assert_short_error(proc)
    assert f"{f}:1:1: the stack file is larger than 1MiB, the limit" in proc.stderr
    for path in ("/v1/plan", "/v1/apply"):
        resp = post_stack(server, path, text)
        assert resp.status_code == 422, resp.text
        assert "larger than 1MiB" in resp.json()["error"]["message"]
    assert_nothing_created(server, stack)
