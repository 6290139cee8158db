"""A CLI on another machine (issue 14): from a bed host's network namespace, with its own
copy of a stack dir that the server cannot see (a tmpfs in a mount namespace of the CLI's
own), `rackfire apply` of a stack with an `app:` dir and a `from: tarball` image reaches
the server over the bed's underlay. The CLI resolves the paths, packs and uploads what they
name, and sends digests; the server reads no path of the client's, so the stack converges,
the app answers, and a later change (a scale, after the client's copy is gone) still builds
from what was uploaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rackfire.testbed.bed import Bed, nsenter_argv

from harness import Server, unique, wait_for

pytestmark = pytest.mark.root
SERVER_PORT, APP_PORT = 7610, 7611

# Run inside the client's own mount namespace: a tmpfs over `root` (empty in the server's
# view, and gone with the namespace), the stack dir copied into it, then the CLI run there.
CLIENT = """\
import os, shutil, subprocess, sys
root, src, *args = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "rfcli", root], check=True)
shutil.copytree(src, os.path.join(root, "stack"), symlinks=True)
os.chdir(os.path.join(root, "stack"))
sys.exit(subprocess.run([sys.executable, "-m", "rackfire", *args]).returncode)
"""


@pytest.fixture
def bed_server(tmp_path: Path) -> Iterator[tuple[Bed, Server]]:
    bed = Bed(1)
    srv = Server(tmp_path / "data", port=SERVER_PORT, listen="0.0.0.0")
    try:
        bed.create()
        srv.start()
        yield bed, srv
    finally:
        try:
            for st in srv.api("/v1/stacks"):
                srv.cli("destroy", st["name"], "-y", check=False)
        finally:
            srv.stop()
            bed.destroy()


def stack_dir(src: Path, stack: str) -> str:
    """The stack file, its app dir and a rootfs tarball; the tarball's sha256."""
    (src / "app").mkdir(parents=True)
    (src / "app" / "index.html").write_text(f"hello from {stack}\n")
    os.symlink("index.html", src / "app" / "home.html")  # a link inside the app is kept
    with tarfile.open(src / "rootfs.tar", "w") as tf:
        for name in ("etc", "usr", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
    (src / "stack.yaml").write_text(f"""\
stack: {stack}
images:
  base: {{from: host}}
  bare: {{from: tarball, path: rootfs.tar}}
roles:
  web:
    image: base
    app: ./app
    command: ["python3", "-m", "http.server", "8000", "--directory", "/app"]
    resources: {{memory: 64M, disk: 32M}}
    ports: ["{APP_PORT}:8000"]
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
""")
    return hashlib.sha256((src / "rootfs.tar").read_bytes()).hexdigest()


def client(bed: Bed, server: Server, root: Path, src: Path,
           *args: str) -> subprocess.CompletedProcess[str]:
    """`rackfire ARGS` on the bed's host h1, in the stack dir's copy under `root`."""
    env = [f"RACKFIRE_URL=http://{bed.controller_ip}:{server.port}",
           f"RACKFIRE_TOKEN={(server.data_dir / 'token').read_text().strip()}",
           "RACKFIRE_DATA_DIR=/nonexistent", "COLUMNS=200"]
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "env", *env, sys.executable, "-c", CLIENT, str(root), str(src), *args]
    return subprocess.run(nsenter_argv(bed.hosts[0].netns, argv), capture_output=True,
                          text=True, timeout=300, check=False)


def healthy(server: Server, stack: str) -> int:
    return sum(1 for r in server.ps(stack) if r["state"] == "running"
               and r["health"] == "healthy")


def test_cli_on_another_host_applies_a_stack_with_an_app_dir(
        bed_server: tuple[Bed, Server], tmp_path: Path) -> None:
    bed, server = bed_server
    stack = unique("ce")
    src, root = tmp_path / "src", tmp_path / "client"
    tar_digest = stack_dir(src, stack)
    root.mkdir()

    res = client(bed, server, root, src, "apply", "-f", "stack.yaml", "-y")
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(root.iterdir()) == []  # the client's copy was never where the server looks
    url = f"http://127.0.0.1:{APP_PORT}"
    assert httpx.get(f"{url}/index.html").text == f"hello from {stack}\n"
    assert httpx.get(f"{url}/home.html").text == f"hello from {stack}\n"
    # The server keeps the tarball by its sha256; no path of the client's is stored.
    assert httpx.get(f"{server.url}/v1/tarballs/{tar_digest}", headers=server.auth,
                     timeout=10).json()["size"] == (src / "rootfs.tar").stat().st_size
    [release] = json.loads(server.cli("releases", f"{stack}/web", "--json").stdout)
    assert release["label"] == "./app" and release["status"] == "live", release
    with sqlite3.connect(f"file:{server.data_dir / 'rackfire.db'}?mode=ro", uri=True) as db:
        stored = "\n".join(db.iterdump())
    assert str(root) not in stored and str(src) not in stored

    # The same file again: the same digests (packing is deterministic), no change; the
    # kept tarball is the first one still (its mtime is in the image's build key).
    kept = server.data_dir / "uploads" / "tarballs" / f"{tar_digest}.tar"
    before = kept.stat()
    res = client(bed, server, root, src, "plan", "-f", "stack.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # Without any copy of the client's (its namespace is gone, and so is the source), a
    # change still builds from what was uploaded.
    shutil.rmtree(src / "app")
    server.cli("scale", f"{stack}/web", "2")
    wait_for(lambda: healthy(server, stack) == 2, 90, "two healthy web instances")
    assert {httpx.get(f"{url}/index.html").text for _ in range(4)} == {f"hello from {stack}\n"}

    # An older client's request, with paths and no uploads, is refused before any change.
    generation = server.api(f"/v1/stacks/{stack}")["generation"]
    old = httpx.post(f"{server.url}/v1/apply", headers=server.auth, timeout=60, json={
        "yaml": (src / "stack.yaml").read_text(), "filename": "stack.yaml",
        "base_dir": str(root / "stack")})
    assert old.status_code == 400, old.text
    error = old.json()["error"]
    assert error["message"].startswith("stack.yaml:"), error
    assert "roles.web.app: no source was uploaded for ./app" in error["message"], error
    assert "rackfire CLI" in error["hint"], error
    assert server.api(f"/v1/stacks/{stack}")["generation"] == generation

    server.cli("destroy", stack, "-y")
    assert server.api("/v1/stacks") == []
