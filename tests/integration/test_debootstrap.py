"""A real Debian base built with debootstrap (cached by content), running as a container with
no host directories in it. Slow (about a minute, from the Debian mirror), so one test."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Server, runc_exec, unique, write_stack

pytestmark = pytest.mark.root


def test_debootstrap_image_runs_and_is_cached(server: Server, tmp_path: Path) -> None:
    stack = unique("deb")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images:
  debian: {{from: debootstrap, suite: bookworm, packages: [python3-minimal]}}
roles:
  box:
    image: debian
    resources: {{memory: 64M, disk: 64M}}
    command: ["python3", "-c", "import time; print('up', flush=True); time.sleep(100000)"]
""")
    server.cli("apply", "-f", str(f), "-y", timeout=900)
    [row] = server.ps(stack)
    assert row["state"] == "running"
    cid = f"{stack}.box.0"
    assert runc_exec(cid, "cat", "/etc/debian_version").stdout.startswith("12.")
    # Its own /usr, not the host's: nothing the host added under /usr/local is there.
    host_only = sorted(p.name for p in Path("/usr/local/bin").iterdir())
    listing = runc_exec(cid, "ls", "/usr/local/bin").stdout.split()
    assert not set(host_only) & set(listing)
    mounts = runc_exec(cid, "cat", "/proc/mounts").stdout
    assert " /usr " not in mounts

    images = {i["name"]: i for i in server.api("/v1/images")}
    digest = images["debian"]["digest"]
    # Building the same content again is a cache hit: same layer, in well under a second.
    out = server.cli("image", "build", "again", "--from", "debootstrap", "-p",
                     "python3-minimal", timeout=60)
    assert digest[:12] in out.stdout
