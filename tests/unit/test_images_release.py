"""App sources (pack, store), release layers without pip, and the host-wide debootstrap cache
(a fake debootstrap: nothing here downloads anything)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from rackfire.api.pack import pack_source
from rackfire.errors import NotFound, PrereqError
from rackfire.images import build
from rackfire.images.build import build_debootstrap, debootstrap_key
from rackfire.images.release import build_release, image_python
from rackfire.images.sources import source_dir, store_source
from rackfire.images.store import ImageStore
from rackfire.images.tree import resolve_in_root, tree_digest


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def make_app(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "app.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o775)
    (root / "pkg/__init__.py").write_text("")
    os.symlink("pkg/__init__.py", root / "init-link")
    for skipped in (".git", ".venv/bin", "pkg/__pycache__"):
        (root / skipped).mkdir(parents=True)
        (root / skipped / "junk").write_text("x")
    (root / "old.pyc").write_bytes(b"\0")
    return root


def packed(src: Path) -> bytes:
    buf = io.BytesIO()
    pack_source(src, buf)
    return buf.getvalue()


def upload(store: ImageStore, tmp_path: Path, data: bytes, name: str = "up.tgz") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return store_source(store, p)


# -- pack_source -----------------------------------------------------------------------------

def test_pack_source_is_deterministic(tmp_path: Path) -> None:
    a = make_app(tmp_path / "a")
    b = make_app(tmp_path / "b")
    os.utime(b / "app.py", (12345, 12345))
    os.chmod(b / "app.py", 0o664)  # another umask
    assert packed(a) == packed(a) == packed(b)
    with tarfile.open(fileobj=io.BytesIO(packed(a)), mode="r:gz") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["app.py", "init-link", "pkg", "pkg/__init__.py",
                                         "run.sh"]  # sorted by path
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["app.py"] == 0o644 and modes["run.sh"] == 0o755 and modes["pkg"] == 0o755


@pytest.mark.parametrize("target", ["../../outside", "/etc/passwd", "../pkg/../../x"])
def test_pack_source_refuses_links_out(tmp_path: Path, target: str) -> None:
    src = make_app(tmp_path / "a")
    os.symlink(target, src / "pkg/bad")
    out = io.BytesIO()
    with pytest.raises(PrereqError, match="points outside") as e:
        pack_source(src, out)
    assert e.value.hint and out.getvalue() == b""  # refused before writing anything


def test_pack_source_refuses_link_escaping_through_another_link(tmp_path: Path) -> None:
    src = make_app(tmp_path / "a")
    (src / "a/b").mkdir(parents=True)
    os.symlink(".", src / "a/b/s")
    os.symlink("a/b/s/../../..", src / "t")  # lexically inside, really one level above
    with pytest.raises(PrereqError, match="points outside"):
        pack_source(src, io.BytesIO())


def test_pack_source_refuses_fifo_device_and_size(tmp_path: Path) -> None:
    src = make_app(tmp_path / "a")
    os.mkfifo(src / "fifo")
    with pytest.raises(PrereqError, match="device, FIFO or socket"):
        pack_source(src, io.BytesIO())
    os.unlink(src / "fifo")
    if os.geteuid() == 0:
        os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        with pytest.raises(PrereqError, match="device, FIFO or socket"):
            pack_source(src, io.BytesIO())
        os.unlink(src / "null")
    with open(src / "big.bin", "wb") as f:
        f.truncate(257 * 1024 * 1024)  # sparse: only its size counts
    with pytest.raises(PrereqError, match="more than 256 MiB") as e:
        pack_source(src, io.BytesIO())
    assert "left out" in e.value.hint


# -- store_source ----------------------------------------------------------------------------

def test_store_source_is_idempotent_and_ignores_tar_details(store: ImageStore,
                                                            tmp_path: Path) -> None:
    src = make_app(tmp_path / "a")
    digest = upload(store, tmp_path, packed(src))
    assert len(digest) == 64 and source_dir(store, digest) == store.sources / digest
    stored = source_dir(store, digest)
    assert (stored / "app.py").read_text() == "print('hi')\n"
    assert not (stored / ".git").exists() and not (stored / "old.pyc").exists()
    ino = stored.stat().st_ino
    assert upload(store, tmp_path, packed(src), "again.tgz") == digest
    assert stored.stat().st_ino == ino  # kept, not replaced

    # The same tree from another tar: uncompressed, other order, owners, times and umask.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in ("run.sh", "pkg/__init__.py", "app.py"):
            data = (src / name).read_bytes()
            ti = tarfile.TarInfo(name)
            ti.size, ti.uid, ti.gid, ti.mtime, ti.uname = len(data), 1000, 1000, 99, "me"
            ti.mode = 0o775 if name == "run.sh" else 0o664
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("init-link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "pkg/__init__.py"
        tf.addfile(ti)
    assert upload(store, tmp_path, buf.getvalue(), "other.tar") == digest
    assert [p.name for p in store.sources.iterdir()] == [digest]
    assert list(store.tmp.iterdir()) == []


def test_source_dir_checks(store: ImageStore) -> None:
    with pytest.raises(NotFound):
        source_dir(store, "a" * 64)
    with pytest.raises(PrereqError, match="invalid source digest"):
        source_dir(store, "../../etc")


def hostile(*members: tuple[str, bytes, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, type_, link in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = type_, link
            tf.addfile(ti, io.BytesIO(b"") if type_ == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize("members, match", [
    ([("/etc/cron.d/x", tarfile.REGTYPE, "")], "absolute path"),
    ([("../x", tarfile.REGTYPE, "")], r"'\.\.' component"),
    ([("a/../../x", tarfile.REGTYPE, "")], r"'\.\.' component"),
    ([("up", tarfile.SYMTYPE, "../../etc")], "escapes the image root"),
    ([("abs", tarfile.SYMTYPE, "/etc/shadow")], "points outside the source"),
    ([("a/b/", tarfile.DIRTYPE, ""), ("a/b/s", tarfile.SYMTYPE, "."),
      ("t", tarfile.SYMTYPE, "a/b/s/../../..")], "escapes the image root"),
    ([("l", tarfile.SYMTYPE, "."), ("l/x", tarfile.REGTYPE, "")], "is a symlink"),
    ([("fifo", tarfile.FIFOTYPE, "")], "FIFOs are not allowed"),
])
def test_store_source_refuses_hostile_tarballs(store: ImageStore, tmp_path: Path,
                                               members: list[tuple[str, bytes, str]],
                                               match: str) -> None:
    with pytest.raises(PrereqError, match=match):
        upload(store, tmp_path, hostile(*members))
    assert list(store.sources.iterdir()) == [] and list(store.tmp.iterdir()) == []


# -- release layers (no requirements: no pip) ------------------------------------------------

def fake_base(store: ImageStore, name: str, python: str | None = "python3.11") -> str:
    d = store.tmp / f"base-{name}"
    (d / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", d / "bin")
    if python:
        (d / "usr/bin" / python).write_bytes(b"\x7fELF")
        os.symlink(f"/bin/{python}", d / "usr/bin/python3")  # absolute: resolved in the image
    return store.commit(name, d, tree_digest(d), "debootstrap").digest


def test_image_python(store: ImageStore) -> None:
    info = store.by_digest(fake_base(store, "py"))
    assert info is not None and image_python(info) == "3.11"
    none = store.by_digest(fake_base(store, "nopy", python=None))
    assert none is not None and image_python(none) is None
    assert resolve_in_root(store.root, "../../etc", jail=True) == "etc"
    assert resolve_in_root(store.root, "../../etc", jail=False) is None


def test_release_without_requirements_is_cached(store: ImageStore, tmp_path: Path) -> None:
    base = fake_base(store, "base")
    digest = upload(store, tmp_path, packed(make_app(tmp_path / "a")))
    rel = build_release(store, digest, base)
    assert rel.source == "release" and rel.name == f"rel-{rel.digest[:12]}"
    assert sorted(p.name for p in rel.rootfs.iterdir()) == ["app"]
    assert (rel.rootfs / "app/.release").read_text() == digest[:12] + "\n"
    assert (rel.rootfs / "app/app.py").read_text() == "print('hi')\n"
    assert not (rel.rootfs / "app/.deps").exists()
    # Not a hard link into the stored source: pip may write in the copy.
    assert (rel.rootfs / "app/app.py").stat().st_ino != (store.sources / digest / "app.py"
                                                         ).stat().st_ino
    t0 = time.monotonic()
    assert build_release(store, digest, base) == rel
    assert time.monotonic() - t0 < 1
    assert {i.name: i.source for i in store.list()} == {"base": "debootstrap",
                                                        rel.name: "release"}
    assert store.remove("base") and store.by_digest(rel.digest) is not None  # release kept


def test_release_needs_python_for_requirements(store: ImageStore, tmp_path: Path) -> None:
    base = fake_base(store, "nopy", python=None)
    src = make_app(tmp_path / "a")
    (src / "requirements.txt").write_text("pymemcache==4.0.0\n")
    digest = upload(store, tmp_path, packed(src))
    with pytest.raises(PrereqError, match="has no python3"):
        build_release(store, digest, base)
    assert [i.name for i in store.list()] == ["nopy"]


def test_release_names_are_reserved(store: ImageStore) -> None:
    d = store.tmp / "x"
    d.mkdir()
    with pytest.raises(PrereqError, match="reserved for release layers"):
        store.commit("rel-0123456789ab", d, "a" * 64, "host")
    with pytest.raises(PrereqError, match="reserved for release layers"):
        store.commit("mine", d, "a" * 64, "release")


# -- the host-wide debootstrap cache ---------------------------------------------------------

@pytest.fixture
def host_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "hostcache"
    monkeypatch.setenv("RACKFIRE_CACHE_DIR", str(root))
    monkeypatch.setattr(build, "host_arch", lambda: "amd64")
    return root


def fake_rootfs(target: Path) -> None:
    (target / "etc").mkdir(parents=True)
    (target / "etc/debian_version").write_text("12.5\n")
    os.symlink("usr/bin", target / "bin")


def no_debootstrap(*_args: object) -> None:
    raise AssertionError("debootstrap ran")


def test_debootstrap_cache_hit_in_a_fresh_store(host_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    key = debootstrap_key("bookworm", ["python3"], None)
    entry = host_cache / "debootstrap" / key
    fake_rootfs(entry / "rootfs")
    digest = tree_digest(entry / "rootfs")
    (entry / "digest").write_text(digest + "\n")
    monkeypatch.setattr(build, "_debootstrap", no_debootstrap)

    store = ImageStore(tmp_path / "s1")
    info = build_debootstrap(store, "deb", "bookworm", ["python3"])
    assert info.digest == digest and info.source == "debootstrap" and info.build_key == key
    assert (info.rootfs / "etc/debian_version").read_text() == "12.5\n"
    # Hard links on one filesystem: no second copy of the data.
    assert ((info.rootfs / "etc/debian_version").stat().st_ino
            == (entry / "rootfs/etc/debian_version").stat().st_ino)
    assert store.cache_get(key) == digest and list(store.tmp.iterdir()) == []


def test_debootstrap_cache_miss_fills_it_once(host_cache: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    key = debootstrap_key("bookworm", [], None)
    partial = host_cache / "debootstrap" / key
    fake_rootfs(partial / "rootfs")  # no digest file: an interrupted entry, ignored
    (partial / "rootfs/etc/debian_version").write_text("garbage\n")
    partial.rename(host_cache / "debootstrap" / f".tmp-{key}-crashed")
    calls: list[Path] = []

    def slow_debootstrap(target: Path, *_args: object) -> None:
        calls.append(target)
        time.sleep(0.3)  # long enough for the other builder to queue on the host lock
        fake_rootfs(target)

    monkeypatch.setattr(build, "_debootstrap", slow_debootstrap)
    stores = [ImageStore(tmp_path / f"s{i}") for i in range(2)]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = build_debootstrap(stores[i], "deb", "bookworm", []).digest

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1]
    entry = host_cache / "debootstrap" / key
    assert (entry / "digest").read_text().strip() == results[0]
    assert (entry / "rootfs/etc/debian_version").read_text() == "12.5\n"
    assert [p.name for p in (host_cache / "debootstrap").iterdir()
            if p.name.startswith(".tmp-")] == []  # the crashed writer's leftovers are gone

    monkeypatch.setattr(build, "_debootstrap", no_debootstrap)
    third = build_debootstrap(ImageStore(tmp_path / "s3"), "deb", "bookworm", [])
    assert third.digest == results[0]


def test_debootstrap_cache_writable_by_others_is_ignored(host_cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    key = debootstrap_key("bookworm", [], None)
    entry = host_cache / "debootstrap" / key
    fake_rootfs(entry / "rootfs")
    (entry / "digest").write_text(tree_digest(entry / "rootfs") + "\n")
    os.chmod(host_cache / "debootstrap", 0o777)
    calls: list[Path] = []
    monkeypatch.setattr(build, "_debootstrap", lambda target, *_a: (calls.append(target),
                                                                     fake_rootfs(target)))
    build_debootstrap(ImageStore(tmp_path / "s"), "deb", "bookworm", [])
    assert len(calls) == 1  # a planted entry is not trusted
