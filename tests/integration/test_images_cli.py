"""`rackfire image ...` through the real CLI: build, import (safely), list, remove."""

from __future__ import annotations

import getpass
import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness import Server, unique, write_stack  # type: ignore[import-not-found]

pytestmark = pytest.mark.root

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def images(server: Server) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in json.loads(server.cli("image", "ls", "--json").stdout)}


def make_rootfs_tarball(tmp: Path, name: str = "rootfs.tar.gz") -> Path:
    """A small root filesystem: a few directories and files copied from the host."""
    path = tmp / name
    with tarfile.open(path, "w:gz") as tf:
        for d in ("etc", "bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        tf.add("/etc/hostname", arcname="etc/hostname")
        tf.add("/etc/os-release", arcname="etc/os-release")
        tf.add("/bin/true", arcname="bin/true")
        motd = b"imported\n"
        info = tarfile.TarInfo("etc/motd")
        info.size, info.mode = len(motd), 0o644
        tf.addfile(info, io.BytesIO(motd))
    return path


def make_evil_tarball(tmp: Path, member: str) -> Path:
    path = tmp / f"evil-{hashlib.sha256(member.encode()).hexdigest()[:6]}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ok = b"fine\n"
        info = tarfile.TarInfo("etc/ok")
        info.size = len(ok)
        tf.addfile(info, io.BytesIO(ok))
        bad = b"pwned\n"
        info = tarfile.TarInfo(member)
        info.size = len(bad)
        tf.addfile(info, io.BytesIO(bad))
    return path


def test_build_from_host_lists_it_and_rm_removes_it(server: Server) -> None:
    name = unique("img")
    out = server.cli("image", "build", name, "--from", "host").stdout
    assert name in out
    listed = images(server)
    assert set(listed) == {name}
    assert HEX64.match(listed[name]["digest"])
    assert listed[name]["source"] == "host"
    assert listed[name]["digest"][:12] in out
    # The table form shows it too.
    assert name in server.cli("image", "ls").stdout

    assert "removed" in server.cli("image", "rm", name).stdout
    assert images(server) == {}
    # Removing it again is not an error.
    assert "nothing to do" in server.cli("image", "rm", name).stdout


def test_import_tarball_lists_it_with_the_stream_digest(server: Server, tmp_path: Path) -> None:
    name = unique("imp")
    tarball = make_rootfs_tarball(tmp_path)
    proc = server.cli("image", "import", name, str(tarball), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = images(server)
    assert set(listed) == {name}
    assert listed[name]["source"] == "tarball"
    # The digest is the sha256 of the decompressed tar stream.
    assert listed[name]["digest"] == hashlib.sha256(gzip.decompress(tarball.read_bytes())
                                                    ).hexdigest()
    assert listed[name]["size_bytes"] >= Path("/bin/true").stat().st_size
    server.cli("image", "rm", name)
    assert images(server) == {}


@pytest.mark.parametrize("member", ["../evil", "/etc/evil"])
def test_import_refuses_escaping_members(server: Server, tmp_path: Path, member: str) -> None:
    keep = unique("keep")
    server.cli("image", "build", keep, "--from", "host")
    before = images(server)
    name = unique("evil")
    proc = server.cli("image", "import", name, str(make_evil_tarball(tmp_path, member)),
                      check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "refused" in proc.stderr and repr(member) in proc.stderr, proc.stderr
    assert images(server) == before
    # Nothing was written outside the store, nor left in its staging area.
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert list((server.data_dir / "images" / "tmp").iterdir()) == []


def test_image_in_use_cannot_be_removed(server: Server, tmp_path: Path) -> None:
    stack = unique("iu")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  app:
    image: base
    resources: {{memory: 32M, disk: 32M}}
    command: ["sleep", "100000"]
""")
    server.cli("apply", "-f", str(f), "-y")
    before = images(server)
    assert set(before) == {"base"}
    proc = server.cli("image", "rm", "base", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{stack}/app/0" in proc.stderr, proc.stderr  # says who uses it
    assert images(server) == before
    assert [r["state"] for r in server.ps(stack)] == ["running"]

    server.cli("destroy", stack, "-y")
    server.cli("image", "rm", "base")
    assert images(server) == {}


# -- hostile and broken tarballs (issue 13) ------------------------------------------------

def make_plain_rootfs_tarball(tmp: Path) -> tuple[Path, int]:
    """An uncompressed rootfs tarball, and where its last member's header starts."""
    path = make_rootfs_tarball(tmp, "rootfs.tar.gz")
    plain = tmp / "rootfs.tar"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    with tarfile.open(plain) as tf:
        last = tf.getmembers()[-1].offset
    return plain, last


def image_events(server: Server) -> list[dict[str, Any]]:
    # The requests about images, not a stack's own builds (its build-image actions).
    return [e for e in json.loads(server.cli("events", "--json").stdout)
            if e["target"].startswith("image/") and not e["stack"]]


@pytest.mark.parametrize("codec", ["plain", "gz"])
def test_import_refuses_a_truncated_tarball(server: Server, tmp_path: Path, codec: str) -> None:
    plain, last = make_plain_rootfs_tarball(tmp_path)
    raw = plain.read_bytes()
    cut = tmp_path / f"cut.{codec}"
    # plain: cut where the last member's header should start, so every member before it is
    # whole (tarfile alone took that for the end); gz: a stream that lost its trailer.
    cut.write_bytes(raw[:last] if codec == "plain" else gzip.compress(raw)[:-8])
    name = unique("cut")
    proc = server.cli("image", "import", name, str(cut), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the uploaded tarball is truncated" in proc.stderr, proc.stderr
    assert ".upload" not in proc.stderr  # not the server's spool file
    assert images(server) == {}
    assert list((server.data_dir / "images" / "tmp").iterdir()) == []
    assert list((server.data_dir / "images" / "layers").iterdir()) == []
    # The whole archive imports.
    server.cli("image", "import", name, str(plain))
    assert set(images(server)) == {name}


def test_image_import_and_rm_are_events(server: Server, tmp_path: Path) -> None:
    name = unique("ev")
    good = make_rootfs_tarball(tmp_path)
    server.cli("image", "import", name, str(good))
    digest = images(server)[name]["digest"]
    evil = unique("evil")
    assert server.cli("image", "import", evil, str(make_evil_tarball(tmp_path, "../x")),
                      check=False).returncode == 1
    server.cli("image", "rm", name)
    server.cli("image", "rm", name)  # nothing left: still asked for
    host = unique("host")
    server.cli("image", "build", host, "--from", "host")
    got = [(e["target"], e["action"], e["result"]) for e in image_events(server)]
    assert got == [(f"image/{name}", "import", "ok"), (f"image/{evil}", "import", "refused"),
                   (f"image/{name}", "remove", "ok"), (f"image/{name}", "remove", "ok"),
                   (f"image/{host}", "build", "ok")]
    events = image_events(server)
    assert {e["actor"] for e in events} == {f"{getpass.getuser()}@{socket.gethostname()}"}
    assert {e["stack"] for e in events} == {""}
    assert digest[:12] in events[0]["reason"]
    assert "'../x'" in events[1]["reason"] and "refused" in events[1]["reason"]
    assert events[3]["reason"] == "no such image"
    # The table shows them too.
    table = server.cli("events").stdout
    assert f"image/{evil}" in table and "refused" in table


def test_refused_image_rm_is_an_event(server: Server, tmp_path: Path) -> None:
    stack = unique("ir")
    f = write_stack(tmp_path, f"""\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  app:
    image: base
    resources: {{memory: 32M, disk: 32M}}
    command: ["sleep", "100000"]
""")
    server.cli("apply", "-f", str(f), "-y")
    assert server.cli("image", "rm", "base", check=False).returncode == 1
    [event] = image_events(server)
    assert (event["target"], event["action"], event["result"]) == (
        "image/base", "remove", "refused")
    assert f"{stack}/app/0" in event["reason"]
