"""Releases on a small stack of the host's own OS (fast: no debootstrap): an `app:` dir is
uploaded and built into a release layer, `push` and `rollback` roll it, bad requests are
refused before any change, and a data disk outlives a replace and, with --keep-data, the
stack."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import httpx
import pytest

from harness import Server, free_port, host_traces, unique, write_stack

pytestmark = pytest.mark.root


def small_stack(tmp: Path, stack: str, port: int) -> Path:
    app = tmp / "app"
    app.mkdir(exist_ok=True)
    (app / "index.html").write_text("one\n")
    return write_stack(tmp, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    count: 2
    app: ./app
    command: ["python3", "-m", "http.server", "8000", "--directory", "/app"]
    resources: {{memory: 64M, disk: 32M}}
    ports: ["{port}:8000"]
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
    update: {{health_timeout: 20s}}
  box:
    image: base
    command: ["sh", "-c", "date >> /data/boots; exec sleep 100000"]
    resources: {{memory: 32M, disk: 32M}}
    data: {{path: /data, size: 32M}}
""")


def releases(server: Server, target: str) -> list[dict[str, object]]:
    return list(json.loads(server.cli("releases", target, "--json").stdout))


def test_push_rollback_and_refusals(server: Server, tmp_path: Path) -> None:
    stack, port = unique("rel"), free_port()
    f = small_stack(tmp_path, stack, port)
    server.cli("apply", "-f", str(f), "-y")
    url = f"http://127.0.0.1:{port}/index.html"
    assert httpx.get(url).text == "one\n"
    [v1] = releases(server, f"{stack}/web")
    assert (v1["version"], v1["status"], v1["current"]) == (1, "live", True)

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "index.html").write_text("two\n")
    out = server.cli("push", f"{stack}/web", str(v2))
    assert "runs v2 (live)" in out.stdout
    assert {httpx.get(url).text for _ in range(4)} == {"two\n"}
    # The file still names ./app: its plan says so, and would deploy it again.
    plan = json.loads(server.cli("plan", "-f", str(f), "--json", check=False).stdout)
    assert any("roles.web.app" in n and str(v2) in n for n in plan["notes"]), plan["notes"]
    assert {a["kind"] for a in plan["actions"]} == {"create", "replace"}  # surge, then each

    server.cli("rollback", f"{stack}/web")
    assert {httpx.get(url).text for _ in range(4)} == {"one\n"}
    rows = {r["version"]: r for r in releases(server, f"{stack}/web")}
    assert rows[1]["current"] and rows[1]["status"] == "live"
    assert rows[2]["status"] == "retired"

    # A new base OS the same way: an image the app cannot run on (no python3 in it) fails,
    # and the role goes back to the release it ran, pinned to the image it had.
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w") as tf:
        for name in ("etc", "usr", "tmp", "srv"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
    server.cli("image", "import", "bare", str(bare))
    res = server.cli("push", f"{stack}/web", "--image", "bare", check=False, timeout=300)
    assert res.returncode == 1 and "rolled back" in res.stderr, res.stdout + res.stderr
    rows = releases(server, f"{stack}/web")
    newest = max(rows, key=lambda r: int(str(r["version"])))
    assert (newest["image"], newest["status"]) == ("bare", "failed")
    assert next(r for r in rows if r["current"])["version"] == 1
    assert {httpx.get(url).text for _ in range(4)} == {"one\n"}

    # A release that cannot be built (a requirement that is a host path) is rolled back
    # too, and not rebuilt on every pass.
    unbuildable = tmp_path / "unbuildable"
    unbuildable.mkdir()
    (unbuildable / "index.html").write_text("three\n")
    (unbuildable / "requirements.txt").write_text("-e /etc\n")
    res = server.cli("push", f"{stack}/web", str(unbuildable), check=False, timeout=300)
    assert res.returncode == 1 and "rolled back" in res.stderr, res.stdout + res.stderr
    assert "requirements.txt line 1" in res.stderr
    assert {httpx.get(url).text for _ in range(4)} == {"one\n"}

    # Refused before any change, with what to do instead.
    generation = server.api(f"/v1/stacks/{stack}")["generation"]
    for args, message in [
        (("push", f"{stack}/box", str(v2)), "has no app"),
        (("push", f"{stack}/web", str(tmp_path / "missing")), "is not a directory"),
        (("rollback", f"{stack}/web", "9"), "no release v9"),
        (("rollback", f"{stack}/web", "1"), "already runs v1"),
        (("push", f"{stack}/nope", str(v2)), "no role nope"),
    ]:
        res = server.cli(*args, check=False)
        assert res.returncode == 1 and message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert server.api(f"/v1/stacks/{stack}")["generation"] == generation
    refused = [e for e in server.api(f"/v1/events?stack={stack}") if e["result"] == "refused"]
    assert {e["action"] for e in refused} >= {"push", "rollback"}

    # With --keep-data the data disk outlives the stack (test_runtime_release.py has it
    # outlive replaces and restarts); a stack of the same name finds it again.
    volume = server.data_dir / "volumes" / stack / "box-0.img"
    assert volume.is_file()
    res = server.cli("destroy", stack, check=False)  # no terminal: it will not ask
    assert res.returncode == 1 and "-y" in res.stderr
    server.cli("destroy", stack, "-y", "--keep-data")
    assert volume.is_file() and host_traces(stack) == []
    server.cli("apply", "-f", str(f), "-y")
    boots = server.cli("exec", f"{stack}/box-0", "--", "cat", "/data/boots").stdout
    assert len(boots.splitlines()) == 2, boots  # one boot before, one now
    server.cli("destroy", stack, "-y")
    assert not volume.exists() and not volume.parent.exists()
    assert host_traces(stack) == []


def test_failed_push_with_nothing_live_and_restarts_per_release(server: Server,
                                                                 tmp_path: Path) -> None:
    stack, port = unique("rnl"), free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "other.html").write_text("no index: fails its check\n")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    app: ./app
    command: ["python3", "-m", "http.server", "8000", "--directory", "/app"]
    resources: {{memory: 64M, disk: 32M}}
    ports: ["{port}:8000"]
    health: {{http: "http://127.0.0.1:8000/index.html", interval: 300ms, timeout: 1s,
              retries: 1, grace: 2s}}
    restart: {{attempts: 100, window: 1m}}
    update: {{health_timeout: 8s}}
""")
    res = server.cli("apply", "-f", str(f), "-y", "--timeout", "5", check=False)
    assert res.returncode == 1, res.stdout + res.stderr  # v1 never goes live
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "other.html").write_text("still no index\n")
    res = server.cli("push", f"{stack}/web", str(v2), "--timeout", "120", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rolled back" not in res.stderr and "runs v2 again" not in res.stderr, res.stderr
    assert "no release that was ever live" in res.stderr, res.stderr
    assert "stays on v2" in res.stderr, res.stderr
    ps = {r["name"]: r for r in json.loads(server.cli("ps", stack, "--json").stdout)}
    assert ps["web-0"]["restarts"] >= 1  # the restart policy restarted the failing release

    good = tmp_path / "good"
    good.mkdir()
    (good / "index.html").write_text("good\n")
    out = server.cli("push", f"{stack}/web", str(good), "--timeout", "120")
    assert "runs v3 (live)" in out.stdout, out.stdout
    ps = {r["name"]: r for r in json.loads(server.cli("ps", stack, "--json").stdout)}
    assert ps["web-0"]["restarts"] == 0, ps  # a failed release's restarts are not the new one's
    server.cli("destroy", stack, "-y")
    assert host_traces(stack) == []
