"""Schemathesis over a real server's live /openapi.json: every operation answers only the
statuses it documents, never a 5xx, with bodies that match its response schema, and accepts
every request its schema allows.

What "accepts" means here (the positive-data check): 2xx, or a refusal that depends on what
exists, never on the request's form: 401, 404 (a stack, role, image... that does not exist)
and 409 (the current state forbids it). A 400 or 422 answering a schema-valid request is a
constraint missing from the schema, so it fails the run, except where the body's content
is checked beyond what a JSON Schema says: a stack or hosts file's text (plan, apply, hosts
plan, hosts apply: 422) and an uploaded tarball (sources, image import: 400).

Three runs, each on its own server (own data dir, forced onto the process runtime so that
nothing is isolated or networked), so that what one creates cannot reach into the next:
1. every operation, on a server with no stacks: what a stranger can send. Not
   `POST /v1/server/stop` (it stops the server under test). `POST /v1/images` builds only
   `source: host` images (a second, 1 MiB each): a debootstrap build downloads a distribution
   for minutes, a tarball build reads a path of the server's host.
2. the day-2 operations aimed at a running stack (its names fixed in the parameters), so
   that the handlers run past their lookups. Not `DELETE /v1/stacks/{name}` (it would destroy
   the stack under test) and not `scale` (a count up to 10000 starts that many processes);
   both are in run 1. Logs are read with follow=false: following never ends.
The test destroys the stack and stops each server, whatever the outcome.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

CHECKS = ("not_a_server_error,status_code_conformance,positive_data_acceptance,"
          "response_schema_conformance")
ACCEPTED = ["2xx", "401", "404", "409"]
CONTENT_CHECKED = f"""
[[operations]]
include-name = ["POST /v1/plan", "POST /v1/apply", "POST /v1/hosts/plan", "POST /v1/hosts/apply"]
checks.positive_data_acceptance.expected-statuses = {[*ACCEPTED, "422"]}

[[operations]]
include-name = ["POST /v1/sources", "PUT /v1/images/{{name}}/tarball"]
checks.positive_data_acceptance.expected-statuses = {[*ACCEPTED, "400"]}
"""


def schemathesis(server: Server, tmp: Path, config: str, *args: str) -> None:
    (tmp / "schemathesis.toml").write_text(
        f"[checks.positive_data_acceptance]\nexpected-statuses = {ACCEPTED}\n{config}")
    token = server.auth["Authorization"]
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "run",
         f"{server.url}/openapi.json", "-H", f"Authorization: {token}", "--checks", CHECKS,
         "--seed", "1", "--workers", "1", "--no-shrink", "--request-timeout", "30",
         "--phases", "examples,coverage,fuzzing", *args],
        cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"schemathesis found problems:\n{proc.stdout}\n{proc.stderr}"
    assert "generated" in proc.stdout and " passed" in proc.stdout, proc.stdout


def stop_and_clean(server: Server) -> None:
    try:
        for st in server.api("/v1/stacks"):
            server.cli("destroy", st["name"], "-y", check=False)
    finally:
        server.stop()


def test_every_operation_answers_as_documented(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", runtime="process")
    server.start()
    try:
        schemathesis(server, tmp_path, CONTENT_CHECKED + """
[[operations]]
include-name = "POST /v1/images"
parameters = { "body.source" = "host" }
""", "--max-examples", "10", "--exclude-name", "POST /v1/server/stop")
        # It was fuzzed, and it is still the server it was: up, on its own data dir.
        assert httpx.get(server.url + "/v1/health", timeout=5).json()["ok"] is True
    finally:
        stop_and_clean(server)


def test_day2_operations_on_a_running_stack_answer_as_documented(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", runtime="process")
    stack = unique("fz")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    command: ["sleep", "100000"]
""")
    server.start()
    try:
        server.cli("apply", "-f", str(f), "-y")
        wait_for(lambda: len(server.ps(stack)) == 2, 30, "the stack's instances")
        schemathesis(server, tmp_path, f"""
[parameters]
"path.stack" = "{stack}"
"path.name" = "{stack}"
"path.role" = "web"
"path.instance_id" = "{stack}.web.0"
"query.stack" = "{stack}"
"query.follow" = false
""", "--max-examples", "20",
            "--include-path-regex", r"^/v1/(stacks/\{|stats|instances|events|migrations)",
            "--exclude-name", "DELETE /v1/stacks/{name}",
            "--exclude-name", "POST /v1/stacks/{stack}/roles/{role}/scale")
        # The stack is still there, its two instances too (stopped or running).
        assert len(server.ps(stack)) == 2
    finally:
        stop_and_clean(server)


def test_the_schema_states_the_rules_the_handlers_apply(server: Server) -> None:
    from rackfire.model.stack import NAME_PATTERN

    api = httpx.get(server.url + "/openapi.json", timeout=10).json()
    param = api["paths"]["/v1/stacks/{name}"]["get"]["parameters"][0]
    assert param["schema"]["pattern"] == NAME_PATTERN  # the stack files' rule, the same
    refused = api["paths"]["/v1/stacks/{name}"]["get"]["responses"]
    assert {"401", "404", "422"} <= set(refused)
    # What the schema refuses is refused before any handler runs, with the field named.
    r = httpx.get(server.url + "/v1/stacks/Not_A_Name", headers=server.auth, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert "name" in r.json()["error"]["message"], r.text
    r = httpx.post(server.url + "/v1/stacks/shop/stop", headers=server.auth, timeout=10,
                   json={"index": 0})
    assert r.status_code == 422 and "an index needs a role" in r.text, r.text
    r = httpx.post(server.url + "/v1/stacks/shop/roles/web/resize", headers=server.auth,
                   timeout=10, json={})
    assert r.status_code == 422 and "nothing to resize" in r.text, r.text
    r = httpx.get(server.url + "/v1/stats", headers=server.auth, timeout=10,
                  params={"stack": "shop", "role": "web", "index": 10_000})
    assert r.status_code == 422 and "index" in r.text, r.text
