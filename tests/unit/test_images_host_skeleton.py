"""build_host against a fake host tree: skeleton layout, secrets left out, digest reuse."""

from __future__ import annotations

import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from rackfire.errors import PrereqError
from rackfire.images.build import build_host, ensure_image
from rackfire.images.store import ImageStore
from rackfire.model.stack import ImageSource, ImageSpec


def fake_host(root: Path, *, merged_usr: bool) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    if merged_usr:
        for d in ("bin", "sbin", "lib"):
            (root / d).symlink_to(f"usr/{d}")
    else:
        for d in ("bin", "sbin", "lib"):
            (root / d).mkdir()
    (root / "lib64").symlink_to("usr/lib64")
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run")
    etc = root / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "ssl/private").mkdir(parents=True)
    (etc / "ssl/private/key.pem").write_text("SECRET")
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    for secret in ("shadow", "gshadow", "passwd-", "shadow-", "machine-id"):
        (etc / secret).write_text("SECRET")
    (etc / "ssh/ssh_host_ed25519_key").write_text("SECRET")
    (etc / "ssh/sshd_config").write_text("Port 22\n")
    (etc / "old-").mkdir()
    (etc / "old-/inside").write_text("SECRET")
    (etc / "mtab").symlink_to("../proc/self/mounts")
    (etc / "ro").mkdir()
    (etc / "ro/f").write_text("x")
    (etc / "ro").chmod(0o555)
    os.mkfifo(etc / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(etc / "sock"))
    return root


@pytest.mark.parametrize("merged_usr", [True, False])
def test_skeleton(tmp_path: Path, merged_usr: bool) -> None:
    host = fake_host(tmp_path / "host", merged_usr=merged_usr)
    store = ImageStore(tmp_path / "store")
    info = build_host(store, "hostos", host_root=host)
    r = info.rootfs
    assert info.source == "host"
    if merged_usr:
        assert info.host_binds == ("/usr",)
        assert os.readlink(r / "bin") == "usr/bin"
    else:
        assert info.host_binds == ("/usr", "/bin", "/sbin", "/lib")
        assert (r / "bin").is_dir() and not (r / "bin").is_symlink()
    assert os.readlink(r / "lib64") == "usr/lib64"
    assert os.readlink(r / "var/run") == "/run"
    assert (r / "usr").is_dir() and list((r / "usr").iterdir()) == []
    assert stat.S_IMODE((r / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((r / "proc").lstat().st_mode) == 0o555
    for d in ("var/tmp", "var/log", "var/lib", "var/cache", "srv", "root", "home", "run",
              "sys", "dev", "mnt", "opt"):
        assert (r / d).is_dir(), d
    etc = r / "etc"
    assert (etc / "passwd").read_text().startswith("root:")
    assert (etc / "ssh/sshd_config").exists()
    assert os.readlink(etc / "mtab") == "../proc/self/mounts"
    assert (etc / "ro/f").exists() and stat.S_IMODE((etc / "ro").stat().st_mode) == 0o555
    assert (etc / "ssl/private").is_dir()
    for gone in ("shadow", "gshadow", "passwd-", "shadow-", "machine-id", "old-", "fifo",
                 "sock", "ssh/ssh_host_ed25519_key", "ssl/private/key.pem"):
        assert not os.path.lexists(etc / gone), gone
    # Unchanged host: same digest, same layer; a changed /etc: a new layer.
    again = build_host(store, "hostos2", host_root=host)
    assert again.digest == info.digest and again.rootfs == info.rootfs
    (host / "etc/hostname").write_text("other\n")
    changed = build_host(store, "hostos3", host_root=host)
    assert changed.digest != info.digest
    assert list(store.tmp.iterdir()) == []


def test_ensure_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    spec = ImageSpec(name="t", source=ImageSource.TARBALL)
    with pytest.raises(PrereqError, match="needs a path"):
        ensure_image(store, spec)
    tar = tmp_path / "root.tar"
    with tarfile.open(tar, "w") as tf:
        ti = tarfile.TarInfo("etc")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    spec = ImageSpec(name="t", source=ImageSource.TARBALL, path=str(tar))
    first = ensure_image(store, spec)
    assert ensure_image(store, spec) == first  # unchanged: not imported again
    os.utime(tar, ns=(1, 1))  # a new version of the tarball: imported again
    second = ensure_image(store, spec)
    assert second.build_key != first.build_key
    tar.unlink()  # gone: keep what we have
    assert ensure_image(store, spec) == second
