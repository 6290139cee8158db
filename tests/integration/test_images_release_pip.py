"""Release layers with real pip (from PyPI or the host's configured mirror) on a `from: host`
image, and for an image whose Python differs from the server's."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from rackfire.api.pack import pack_source
from rackfire.errors import ExecError
from rackfire.images.build import build_host
from rackfire.images.release import build_release, image_python
from rackfire.images.sources import store_source
from rackfire.images.store import ImageStore
from rackfire.images.tree import tree_digest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (never skipped when CI=true)"),
]


def upload_app(store: ImageStore, tmp_path: Path, requirements: str) -> str:
    src = tmp_path / "app"
    src.mkdir()
    (src / "app.py").write_text("import pymemcache\n")
    (src / "requirements.txt").write_text(requirements)
    buf = io.BytesIO()
    pack_source(src, buf)
    tarball = tmp_path / "app.tgz"
    tarball.write_bytes(buf.getvalue())
    return store_source(store, tarball)


def test_release_on_host_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    base = build_host(store, "hostos")
    host_py = os.path.basename(os.path.realpath("/usr/bin/python3")).removeprefix("python")
    assert image_python(base) == host_py
    source = upload_app(store, tmp_path, "pymemcache==4.0.0\n")
    lines: list[str] = []
    rel = build_release(store, source, base.digest, lines.append)
    assert rel.source == "release" and rel.name == f"rel-{rel.digest[:12]}"
    app = rel.rootfs / "app"
    assert (app / ".deps/pymemcache/__init__.py").is_file()
    assert (app / ".release").read_text() == source[:12] + "\n"
    assert (app / "app.py").is_file() and lines  # pip's output went to progress

    t0 = time.monotonic()
    again = build_release(store, source, base.digest)
    assert again.digest == rel.digest and time.monotonic() - t0 < 2  # cached: no pip
    assert [i.source for i in store.list()] == ["host", "release"]
    assert list(store.tmp.iterdir()) == []


def test_release_for_another_python_version(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    other = f"3.{sys.version_info.minor + 1}"
    d = store.tmp / "base"
    (d / "usr/bin").mkdir(parents=True)
    (d / f"usr/bin/python{other}").write_bytes(b"\x7fELF")
    os.symlink(f"python{other}", d / "usr/bin/python3")
    base = store.commit("other", d, tree_digest(d), "debootstrap")
    source = upload_app(store, tmp_path, "pymemcache==4.0.0\n")
    rel = build_release(store, source, base.digest)
    deps = rel.rootfs / "app/.deps"
    assert (deps / "pymemcache/__init__.py").is_file()
    assert not list(deps.rglob("*.pyc"))  # not compiled for the server's own Python


def test_pip_failure_is_reported(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    base = build_host(store, "hostos")
    source = upload_app(store, tmp_path, "rackfire-no-such-package-xyz==0.0.1\n")
    with pytest.raises(ExecError, match=r"pip install -r requirements\.txt failed") as e:
        build_release(store, source, base.digest)
    assert "rackfire-no-such-package-xyz" in e.value.message
    assert [i.name for i in store.list()] == ["hostos"] and list(store.tmp.iterdir()) == []
