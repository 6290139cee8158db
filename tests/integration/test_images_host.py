"""build_host on this machine's real OS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rackfire.images.build import build_host
from rackfire.images.store import ImageStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (never skipped when CI=true)"),
]


def test_build_host(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    info = build_host(store, "hostos")
    r = info.rootfs
    assert (r / "etc/passwd").is_file()
    assert not os.path.lexists(r / "etc/shadow")
    assert not os.path.lexists(r / "etc/gshadow")
    assert list((r / "etc").glob("ssh/ssh_host_*")) == []
    assert "/usr" in info.host_binds
    for d in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / d
        if host.is_symlink():
            assert os.readlink(r / d) == os.readlink(host)
        elif host.is_dir():
            assert f"/{d}" in info.host_binds and (r / d).is_dir()
    # Everything the runtime bind-mounts has a mount point in the layer.
    for b in info.host_binds:
        assert (r / b.lstrip("/")).is_dir()
    again = build_host(store, "hostos2")
    assert again.digest == info.digest and again.rootfs == info.rootfs
    assert [i.name for i in store.list()] == ["hostos", "hostos2"]
    assert list(store.tmp.iterdir()) == []
