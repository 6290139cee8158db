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
from rackfire.images.safe_tar import check_tarball, import_tarball
from rackfire.images.store import ImageStore
from rackfire.images.tar_checks import ImportLimits

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


# -- links that lead out through other links (issue 13) -----------------------------------

CHAIN = [dir_("a"), sym("a/l1", ".."), sym("a/l2", "l1/.."), sym("a/l3", "l2/..")]


@pytest.mark.parametrize(("members", "match"), [
    # a/l1 is the root, so a/l2 = root/.. is above it: no count of `..` in one target shows it.
    (CHAIN, r"'a/l2': symlink target 'l1/\.\.' escapes the image root"),
    ([dir_("a"), sym("a/l1", "."), sym("a/l2", "l1/../..")], r"'a/l2'.*escapes"),
    # The order trick: a/l2 is made while l1 is not there yet; a/l1 then makes it lead out.
    ([dir_("a"), sym("a/l2", "l1/.."), sym("a/l1", "..")], r"'a/l2'.*escapes"),
    # An earlier harmless file is replaced by a link that makes an earlier link lead out.
    ([dir_("a"), reg("a/l1"), sym("a/l2", "l1/.."), sym("a/l1", "..")], r"'a/l2'.*escapes"),
    # Through a symlinked directory deeper down: d/s -> ../.. from d/e/ is the root.
    ([dir_("d/e"), sym("d/e/s", "../.."), sym("d/x", "e/s/../..")], r"'d/x'.*escapes"),
    # Hard links to symlinks, and members written through a link (however deep the chain).
    ([sym("s", "etc"), hard("h", "s")], r"'h': hard link target 's' is not a regular file"),
    ([dir_("a"), sym("a/l1", ".."), reg("a/l1/x")], r"'a/l1/x': its parent 'a/l1' is a symlink"),
    ([dir_("a"), sym("a/l1", ".."), dir_("a/l1/d")], r"'a/l1/d': its parent 'a/l1' is a symlink"),
    ([dir_("a"), sym("a/l1", ".."), hard("a/l1/h", "ok")], r"'a/l1/h': its parent 'a/l1'"),
])
def test_chained_symlinks_that_climb_out_are_refused(
        store: ImageStore, tmp_path: Path, members: list[Member], match: str) -> None:
    outside = tmp_path / "x"
    refused(store, tmp_path, [dir_("./"), reg("ok"), *members], match)
    assert not outside.exists()


def test_links_that_stay_inside_through_other_links_are_kept(
        store: ImageStore, tmp_path: Path) -> None:
    """Real images chain links (/lib -> usr/lib, then ../lib/... from usr/bin)."""
    members = [dir_("./"), dir_("usr/lib"), dir_("usr/bin"), reg("usr/lib/libc.so"),
               sym("lib", "usr/lib"), sym("usr/bin/libc", "../../lib/libc.so"),
               dir_("a"), sym("a/l1", ".."), sym("a/l2", "l1/a"), sym("a/l3", "l2/l1"),
               sym("a/loop", "loop/x"),  # never resolves (ELOOP): leads nowhere
               sym("a/abs", "/"), sym("a/via-abs", "abs/..")]  # no worse than the absolute one
    info = import_tarball(store, "chain", make_tar(tmp_path / "ok.tar", members))
    assert os.readlink(info.rootfs / "a/l3") == "l2/l1"
    assert (info.rootfs / "usr/bin/libc").resolve() == (info.rootfs / "usr/lib/libc.so")


# -- truncated and corrupt archives (issue 13) ---------------------------------------------

def _three_files() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(3):
            data = bytes([65 + i]) * 700
            ti = tarfile.TarInfo(f"f{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# Member headers at 0, 1536 and 3072 (512 bytes each, then 700 bytes of data padded to 1024),
# then the end-of-archive blocks from 4608.
@pytest.mark.parametrize(("cut", "match"), [
    (1536, "ends without its end-of-archive marker"),  # at a member boundary
    (3072, "ends without its end-of-archive marker"),
    (4608, "ends without its end-of-archive marker"),  # every member there, no end block
    (1600, "ends inside a member header"),
    (4700, "ends inside a member header"),  # in the end block itself
    (2500, "ends inside a member's data"),  # inside a member's data
])
def test_truncated_plain_tar_is_refused(store: ImageStore, tmp_path: Path, cut: int,
                                        match: str) -> None:
    tar = tmp_path / "cut.tar"
    tar.write_bytes(_three_files()[:cut])
    for check in (lambda: import_tarball(store, "cut", tar), lambda: check_tarball(tar)):
        with pytest.raises(PrereqError, match=match) as ei:
            check()
        assert f"{tar} is truncated" in ei.value.message, ei.value.message
        assert ei.value.hint
    assert_clean(store)


def test_corrupt_header_is_refused(store: ImageStore, tmp_path: Path) -> None:
    raw = bytearray(_three_files())
    raw[1536:1546] = b"garbage!!!"  # the second member's header: its checksum fails
    tar = tmp_path / "bad.tar"
    tar.write_bytes(bytes(raw))
    with pytest.raises(PrereqError, match="truncated or corrupt: a member header is corrupt"):
        import_tarball(store, "bad", tar)
    assert_clean(store)


@pytest.mark.parametrize("codec", ["gz", "xz"])
def test_truncated_compressed_stream_is_refused(store: ImageStore, tmp_path: Path,
                                                codec: str) -> None:
    raw = _three_files()
    packed = gzip.compress(raw) if codec == "gz" else lzma.compress(raw)
    tar = tmp_path / f"cut.tar.{codec}"
    # Without its trailer (gzip: crc and size, 8 bytes), and cut in the middle.
    for cut in (len(packed) - 8, len(packed) - 1, len(packed) // 2):
        tar.write_bytes(packed[:cut])
        for check in (lambda: import_tarball(store, "cut", tar), lambda: check_tarball(tar)):
            with pytest.raises(PrereqError, match=r" is truncated"):
                check()
    assert_clean(store)


def test_a_lone_end_block_is_enough(store: ImageStore, tmp_path: Path) -> None:
    """GNU tar accepts an archive whose second end block or record padding is missing."""
    tar = tmp_path / "short-end.tar"
    tar.write_bytes(_three_files()[:4608 + 512])
    assert import_tarball(store, "ok", tar).name == "ok"
    check_tarball(tar)


def test_check_tarball_refuses_what_import_would_and_writes_nothing(
        store: ImageStore, tmp_path: Path) -> None:
    check_tarball(make_tar(tmp_path / "good.tar.gz", GOOD))
    for members in ([reg("../x")], CHAIN, [node("null", tarfile.CHRTYPE)],
                    [sym("l", "/tmp"), reg("l/evil")]):
        with pytest.raises(PrereqError, match="refused tarball member"):
            check_tarball(make_tar(tmp_path / "bad.tar", members))
    for bad, match in ((tmp_path / "missing.tar", "does not exist"),
                       (tmp_path, "is not a regular file")):
        with pytest.raises(PrereqError, match=match):
            check_tarball(bad)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"NOT A TAR\n" * 100)
    with pytest.raises(PrereqError, match="not a readable tar archive"):
        check_tarball(junk)
    assert list(tmp_path.glob("**/x")) == [] and not (tmp_path / "l").exists()
    assert_clean(store)
