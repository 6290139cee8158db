"""`rackfire hosts plan -f hosts.yaml` against a real server: the plan from the stored
last-applied host set (none yet: every host an install), exit 2 for changes, --json for
scripts; a bad file refused with its line, before the server is asked, and by the server
too when sent by another client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from harness import Server  # type: ignore[import-not-found]

pytestmark = pytest.mark.root

HOSTS = """\
hosts:
  - {name: h1, address: 10.0.0.11, key: /root/.ssh/id_ed25519, labels: {rack: r1}}
  - {name: h2, address: 10.0.0.12, port: 2222}
"""


def test_a_first_plan_installs_every_host_and_exits_2(server: Server, tmp_path: Path) -> None:
    (tmp_path / "hosts.yaml").write_text(HOSTS)
    got = server.cli("hosts", "plan", "-f", str(tmp_path / "hosts.yaml"), check=False)
    assert got.returncode == 2, got.stderr
    assert "install" in got.stdout and "h1" in got.stdout and "to install 2" in got.stdout
    got = server.cli("hosts", "plan", "-f", str(tmp_path / "hosts.yaml"), "--json",
                     check=False)
    answer = json.loads(got.stdout)
    assert [(c["step"], c["name"]) for c in answer["changes"]] == [("install", "h1"),
                                                                   ("install", "h2")]
    assert answer["changes"][0]["changes"] == [f"version {answer['version']}"]
    (tmp_path / "none.yaml").write_text("hosts: []\n")
    got = server.cli("hosts", "plan", "-f", str(tmp_path / "none.yaml"), check=False)
    assert (got.returncode, got.stdout.startswith("no changes")) == (0, True), got.stdout
    assert server.cli("hosts", "--json").returncode == 0  # the list is still `hosts`


def test_a_bad_hosts_file_is_refused_with_its_line(server: Server, tmp_path: Path) -> None:
    bad = HOSTS + "  - {name: h1, address: 10.0.0.13}\n"
    (tmp_path / "hosts.yaml").write_text(bad)
    got = server.cli("hosts", "plan", "-f", str(tmp_path / "hosts.yaml"), check=False)
    assert got.returncode == 1
    assert "hosts.yaml:4:" in got.stderr and "host h1 is listed twice" in got.stderr
    assert "Traceback" not in got.stderr
    # Sent by a client that did not check it: the server refuses it the same way.
    r = httpx.post(server.url + "/v1/hosts/plan", headers=server.auth, timeout=10,
                   json={"yaml": bad, "filename": "mine.yaml"})
    assert r.status_code == 422
    [problem] = r.json()["error"]["problems"]
    assert (problem["file"], problem["line"], problem["field"]) == ("mine.yaml", 4,
                                                                    "hosts[2].name")
