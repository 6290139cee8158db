"""Safe tarball import: crafted hostile archives are refused and leave nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest

from rackfire.errors import PrereqError
from rackfire.images.safe_tar import ImportLimits, import_tarball
from rackfire.images.store import ImageStore

MTIME = 1_600_000_000

Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"hello\n", mode: int = 0o644) -> Member:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
    return ti, data


def node(name: str, type_: bytes, mode: int = 0o755, link: str = "") -> Member:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = type_, mode, MTIME, link
    return ti, None


def dir_(name: str, mode: int = 0o755) -> Member:
    return node(name, tarfile.DIRTYPE, mode)


def sym(name: str, target: str) -> Member:
    return node(name, tarfile.SYMTYPE, 0o777, target)


def hard(name: str, target: str) -> Member:
    return node(name, tarfile.LNKTYPE, 0o644, target)


def make_tar(path: Path, members: list[Member], trailing: bytes = b"") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue() + trailing
    if path.name.endswith((".gz", ".tgz")):
        path.write_bytes(gzip.compress(raw))
    elif path.name.endswith(".xz"):
        path.write_bytes(lzma.compress(raw))
    else:
        path.write_bytes(raw)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def assert_clean(store: ImageStore) -> None:
    assert store.list() == []
    for sub in ("names", "layers", "cache", "tmp"):
        assert list((store.root / sub).iterdir()) == [], sub


GOOD = [
    dir_("./"),
    dir_("./etc"),
    reg("./etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    reg("./etc/hostname", b"box\n", 0o600),
    dir_("./tmp", 0o1777),
    dir_("./proc", 0o555),
    dir_("./usr/bin"),  # parent "usr" is implied
    reg("./usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    hard("./usr/bin/tool2", "./usr/bin/tool"),
    sym("./bin", "usr/bin"),
    sym("./etc/mtab", "/proc/self/mounts"),  # absolute: resolves inside the image
    sym("./usr/bin/up", "../../etc/passwd"),
    dir_("./var/mail", 0o2775),  # setgid directory: stripped, not refused
]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.xz"])
def test_good_tarball_imports(store: ImageStore, tmp_path: Path, suffix: str) -> None:
    tar = make_tar(tmp_path / f"root{suffix}", GOOD)
    info = import_tarball(store, "base", tar)

    raw = tar.read_bytes()
    if suffix in (".tar.gz", ".tgz"):
        raw = gzip.decompress(raw)
    elif suffix == ".tar.xz":
        raw = lzma.decompress(raw)
    assert info.digest == hashlib.sha256(raw).hexdigest()
    assert info.source == "tarball" and info.host_binds == () and info.name == "base"
    r = info.rootfs
    assert r == store.root / "layers" / info.digest / "rootfs"
    assert (r / "etc/passwd").read_bytes().startswith(b"root:")
    assert stat.S_IMODE((r / "etc/hostname").stat().st_mode) == 0o600
    assert stat.S_IMODE((r / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((r / "proc").stat().st_mode) == 0o555
    assert stat.S_IMODE((r / "var/mail").stat().st_mode) == 0o775
    assert (r / "usr/bin/tool").stat().st_ino == (r / "usr/bin/tool2").stat().st_ino
    assert os.readlink(r / "bin") == "usr/bin"
    assert os.readlink(r / "etc/mtab") == "/proc/self/mounts"
    assert (r / "etc/passwd").stat().st_mtime == MTIME
    assert (r / "etc").stat().st_mtime == MTIME  # dir mtimes applied after their contents
    assert info.size_bytes == len(b"root:x:0:0:root:/root:/bin/sh\n") + 4 + 18
    assert list((store.root / "tmp").iterdir()) == []


def test_get_list_remove(store: ImageStore, tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "root.tar", GOOD)
    a = import_tarball(store, "a", tar)
    b = import_tarball(store, "b", tar)  # same content: same layer
    assert a.digest == b.digest
    assert store.get("a") == a and store.get("missing") is None
    assert [i.name for i in store.list()] == ["a", "b"]
    assert store.by_digest(a.digest) == a
    assert store.remove("a") is True
    assert a.rootfs.is_dir()  # "b" still points at it
    assert store.remove("a") is False
    assert store.remove("b") is True
    assert not a.rootfs.exists()
    assert store.by_digest(a.digest) is None
    assert_clean(store)


def refused(store: ImageStore, tmp_path: Path, members: list[Member], match: str,
            limits: ImportLimits | None = None, trailing: bytes = b"") -> PrereqError:
    tar = make_tar(tmp_path / "bad.tar.gz", members, trailing)
    with pytest.raises(PrereqError, match=match) as ei:
        if limits is None:
            import_tarball(store, "bad", tar)
        else:
            import_tarball(store, "bad", tar, limits)
    assert_clean(store)
    return ei.value


@pytest.mark.parametrize(("members", "match"), [
    ([reg("/etc/passwd")], r"'/etc/passwd': absolute path"),
    ([reg("../x")], r"'\.\./x': path '\.\./x' has a '\.\.' component"),
    ([dir_("a"), reg("a/../../x")], r"'a/\.\./\.\./x'.*'\.\.' component"),
    ([dir_("a"), sym("a/l", "../../etc")], r"'a/l': symlink target '\.\./\.\./etc' escapes"),
    ([sym("l", "x/../../y")], r"'l': symlink target .* escapes"),
    ([sym("l", "/tmp"), reg("l/evil")], r"'l/evil': its parent 'l' is a symlink"),
    ([dir_("d"), sym("d/l", "."), reg("d/l/x")], r"'d/l/x': its parent 'd/l' is a symlink"),
    ([reg("f"), reg("f/x")], r"'f/x': its parent 'f' is not a directory"),
    ([hard("h", "../../etc/passwd")], r"'h'.*'\.\.' component"),
    ([hard("h", "/etc/passwd")], r"'h': absolute path"),
    ([hard("h", "later"), reg("later")], r"'h': hard link target 'later' is not a regular"),
    ([dir_("d"), hard("h", "d")], r"'h': hard link target 'd'"),
    ([node("null", tarfile.CHRTYPE, 0o666)], r"'null': device nodes are not allowed"),
    ([node("sda", tarfile.BLKTYPE, 0o660)], r"'sda': device nodes are not allowed"),
    ([node("fifo", tarfile.FIFOTYPE, 0o644)], r"'fifo': FIFOs are not allowed"),
    ([reg("su", b"x", 0o4755)], r"'su': setuid/setgid files are not allowed"),
    ([reg("wall", b"x", 0o2755)], r"'wall': setuid/setgid files are not allowed"),
    ([dir_("d"), reg("d")], r"'d': would replace a directory"),
    ([reg("d"), dir_("d")], r"'d': a directory would replace"),
])
def test_hostile_members_refused(store: ImageStore, tmp_path: Path,
                                 members: list[Member], match: str) -> None:
    err = refused(store, tmp_path, [dir_("./"), reg("ok"), *members], match)
    assert err.message.startswith("refused tarball member ")
    assert err.hint


def test_symlink_trick_writes_nothing_outside(store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    refused(store, tmp_path, [sym("l", str(outside)), reg("l/evil")], "parent 'l' is a symlink")
    refused(store, tmp_path, [sym("l", str(outside)), sym("l/evil", "/x")], "is a symlink")
    assert list(outside.iterdir()) == []


def test_too_many_entries(store: ImageStore, tmp_path: Path) -> None:
    members = [reg(f"f{i}") for i in range(5)]
    refused(store, tmp_path, members, r"'f3': more than 3 entries",
            ImportLimits(max_entries=3))


def test_too_many_bytes(store: ImageStore, tmp_path: Path) -> None:
    members = [reg("a", b"x" * 60), reg("b", b"y" * 60)]
    refused(store, tmp_path, members, r"'b': the archive's files add up to more than 100",
            ImportLimits(max_bytes=100))


def test_member_too_big(store: ImageStore, tmp_path: Path) -> None:
    refused(store, tmp_path, [reg("a", b"x" * 60)], r"'a': 60 bytes is more than 50",
            ImportLimits(max_member_bytes=50))


def test_not_enough_free_space(store: ImageStore, tmp_path: Path) -> None:
    refused(store, tmp_path, [reg("a")], r"'a': not enough free space",
            ImportLimits(min_free_bytes=2**62))


def test_decompression_bomb_in_trailing_junk(store: ImageStore, tmp_path: Path) -> None:
    limits = ImportLimits(max_bytes=1000, max_entries=10)
    refused(store, tmp_path, [reg("a")], "decompressed archive is larger than", limits,
            trailing=bytes(20 * 1024 * 1024))


def test_not_a_tarball(store: ImageStore, tmp_path: Path) -> None:
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(PrereqError, match="not a readable tar archive"):
        import_tarball(store, "bad", bad)
    other = tmp_path / "upload.bin"  # the format is told by content, whatever the name
    other.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(PrereqError, match="not a readable tar archive"):
        import_tarball(store, "bad", other)
    assert_clean(store)


@pytest.mark.parametrize("name", ["Bad", "../x", "a.b", "", "x" * 40])
def test_invalid_image_name(store: ImageStore, tmp_path: Path, name: str) -> None:
    tar = make_tar(tmp_path / "root.tar", GOOD)
    with pytest.raises(PrereqError, match="invalid image name"):
        import_tarball(store, name, tar)
    assert_clean(store)
