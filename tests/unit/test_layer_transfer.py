"""Image layers from one store to another (images/transfer.py): the tree comes out exactly,
verified by its digest; anything else is refused and leaves nothing behind. And LocalAgent's
ensure_layer / collect_layers on top of it."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackfire.agent.local import LocalAgent
from rackfire.errors import NotFound, PrereqError
from rackfire.images.build import build_host
from rackfire.images.release import build_release
from rackfire.images.safe_tar import import_tarball
from rackfire.images.sources import store_source
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.images.tar_checks import ImportLimits
from rackfire.images.transfer import HEADER, pack_layer, receive_layer
from rackfire.images.tree import tree_digest, walk
from rackfire.model.stack import RuntimeKind

PAYLOAD = b"hello world payload\n"


@pytest.fixture
def src(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "src")


@pytest.fixture
def dst(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "dst")


def make_tree(root: Path) -> None:
    """Every kind of entry a layer has, with modes that a careless copy would lose."""
    root.mkdir(mode=0o755)
    (root / "etc").mkdir(mode=0o755)
    (root / "etc/motd").write_bytes(PAYLOAD)
    (root / "etc/secret").write_text("x")
    os.chmod(root / "etc/secret", 0o600)
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # spans chunks
    (root / "bin").mkdir()
    (root / "bin/tool").write_text("#!/bin/sh\n")
    os.chmod(root / "bin/tool", 0o4755)  # setuid: a real layer has some (su, passwd)
    os.link(root / "bin/tool", root / "bin/tool-again")
    (root / "private").mkdir(mode=0o700)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "var/mail").mkdir(parents=True)
    os.chmod(root / "var/mail", 0o2775)  # setgid dir, as Debian's
    os.symlink("etc/motd", root / "motd-link")
    os.symlink("/usr/bin", root / "abs-link")
    os.symlink("../../../outside", root / "etc/climbing")  # kept: never followed
    os.mkfifo(root / "fifo", 0o640)
    (root / os.fsdecode(b"odd-\xff-name")).write_text("latin1")
    if os.geteuid() == 0:
        (root / "dev").mkdir()
        os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def commit_tree(store: ImageStore, name: str = "base") -> ImageInfo:
    with store.staging() as stage:
        rootfs = stage / "rootfs"
        make_tree(rootfs)
        return store.commit(name, rootfs, tree_digest(rootfs), "debootstrap")


def listing(root: Path) -> list[tuple[str, int, int, int, str]]:
    out = []
    for rel, st in walk(root):
        p = root / rel
        detail = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
        out.append((rel, st.st_mode, st.st_uid, st.st_rdev, detail))
    return out


def left_behind(store: ImageStore) -> list[str]:
    return sorted(os.listdir(store.layers)) + sorted(os.listdir(store.tmp))


def stream(store: ImageStore, digest: str) -> bytes:
    return b"".join(pack_layer(store, digest))


# -- round trips ---------------------------------------------------------------------------

def test_round_trip_keeps_the_tree_exactly(src: ImageStore, dst: ImageStore) -> None:
    info = commit_tree(src)
    got = receive_layer(dst, info.digest, pack_layer(src, info.digest))
    assert got.digest == info.digest and got.name == "" and got.fetched
    assert got.source == "debootstrap" and got.size_bytes == info.size_bytes
    assert tree_digest(got.rootfs) == info.digest
    assert listing(got.rootfs) == listing(info.rootfs)
    assert (got.rootfs / "big.bin").read_bytes() == (info.rootfs / "big.bin").read_bytes()
    assert (got.rootfs / "bin/tool").stat().st_ino == (got.rootfs / "bin/tool-again").stat().st_ino
    # Found by digest; not a name, so `image ls` does not show it; nothing left in tmp/.
    assert dst.by_digest(info.digest) == got
    assert dst.list() == [] and os.listdir(dst.tmp) == []
    assert [i.digest for i in dst.fetched_layers()] == [info.digest]
    assert src.fetched_layers() == []  # the controller's own layers are not fetched ones


def test_host_release_and_tarball_layers_round_trip(src: ImageStore, dst: ImageStore,
                                                    tmp_path: Path) -> None:
    """Each producer's digest (bind: extras, the release extra, a tarball's stream hash)."""
    host = tmp_path / "host"
    (host / "usr/bin").mkdir(parents=True)
    (host / "lib").mkdir()
    (host / "etc").mkdir()
    (host / "etc/hostname").write_text("h\n")
    base = build_host(src, "hostos", host_root=host)
    assert base.host_binds == ("/usr", "/lib")
    app = tmp_path / "app.tar"
    with tarfile.open(app, "w") as tf:
        ti = tarfile.TarInfo("app.py")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"x=1"))
    release = build_release(src, store_source(src, app), base.digest)
    tarball = import_tarball(src, "tarred", app)
    for info in (base, release, tarball):
        got = receive_layer(dst, info.digest, pack_layer(src, info.digest))
        assert (got.digest, got.source, got.host_binds) == (info.digest, info.source,
                                                            info.host_binds)
        assert listing(got.rootfs) == listing(info.rootfs)


def test_receive_is_idempotent_and_does_not_read_again(src: ImageStore, dst: ImageStore) -> None:
    info = commit_tree(src)
    first = receive_layer(dst, info.digest, pack_layer(src, info.digest))

    def never() -> Iterator[bytes]:
        raise AssertionError("read a layer that is there already")
        yield b""

    assert receive_layer(dst, info.digest, never()) == first


def test_concurrent_receives_of_one_layer(src: ImageStore, dst: ImageStore) -> None:
    info = commit_tree(src)
    results: list[ImageInfo] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(receive_layer(dst, info.digest, pack_layer(src, info.digest)))
        except BaseException as e:  # reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4 and len(set(results)) == 1
    assert sorted(os.listdir(dst.layers)) == [info.digest] and os.listdir(dst.tmp) == []


# -- refusals ------------------------------------------------------------------------------

def test_content_that_does_not_match_the_digest_is_refused(src: ImageStore,
                                                           dst: ImageStore) -> None:
    info = commit_tree(src)
    data = stream(src, info.digest)
    assert data.count(PAYLOAD) == 1
    evil = data.replace(PAYLOAD, b"jello world payload\n")
    with pytest.raises(PrereqError, match=r"hashes to .* nothing was kept"):
        receive_layer(dst, info.digest, [evil])
    assert left_behind(dst) == [] and dst.by_digest(info.digest) is None
    # Cut short at a member boundary: tar reads it as complete, the digest does not.
    cut = data[:data.index(b"rootfs/tmp")] + b"\0" * 1024
    with pytest.raises(PrereqError, match="hashes to"):
        receive_layer(dst, info.digest, [cut])
    # Cut inside a member: a truncated archive.
    with pytest.raises(PrereqError, match="is truncated"):
        receive_layer(dst, info.digest, [data[:len(data) // 2 + 100]])
    assert left_behind(dst) == []


def test_another_layer_under_the_asked_digest_is_refused(src: ImageStore,
                                                         dst: ImageStore) -> None:
    info = commit_tree(src)
    other = "ab" * 32
    with pytest.raises(PrereqError, match=f"asked for layer {other[:12]}"):
        receive_layer(dst, other, pack_layer(src, info.digest))
    assert left_behind(dst) == []


def test_tarball_layer_checks_the_tree_digest_it_declares(src: ImageStore, dst: ImageStore,
                                                          tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as tf:
        ti = tarfile.TarInfo("motd")
        ti.size = len(PAYLOAD)
        tf.addfile(ti, io.BytesIO(PAYLOAD))
    info = import_tarball(src, "tarred", tar)
    data = stream(src, info.digest).replace(PAYLOAD, b"jello world payload\n")
    with pytest.raises(PrereqError, match="hashes to"):
        receive_layer(dst, info.digest, [data])
    assert left_behind(dst) == []


def crafted(digest: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A stream with a well-formed header and then whatever members a hostile sender likes."""
    buf = io.BytesIO()
    head = json.dumps({"format": 1, "digest": digest, "source": "debootstrap",
                       "host_binds": []}).encode()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(HEADER)
        ti.size = len(head)
        tf.addfile(ti, io.BytesIO(head))
        for ti, data in [(tarfile.TarInfo("rootfs"), None), *members]:
            if ti.name == "rootfs":
                ti.type = tarfile.DIRTYPE
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes = b"pwned\n", *, link: str = "") -> tuple[tarfile.TarInfo,
                                                                           bytes | None]:
    ti = tarfile.TarInfo(name)
    if link:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
        return ti, None
    ti.size = len(data)
    return ti, data


@pytest.mark.parametrize(("members", "reason"), [
    ([member("rootfs/../../escaped")], "'..' component"),
    ([member("/tmp/escaped-abs")], "absolute path"),
    ([member("rootfs/link", link="/tmp"), member("rootfs/link/escaped")],
     "'rootfs/link' is a symlink"),
    ([member("rootfs/etc/x"), member("stray")], "not layer.json and rootfs"),
])
def test_hostile_streams_are_refused(dst: ImageStore, tmp_path: Path,
                                     members: list[tuple[tarfile.TarInfo, bytes | None]],
                                     reason: str) -> None:
    digest = "cd" * 32
    with pytest.raises(PrereqError, match=reason):
        receive_layer(dst, digest, [crafted(digest, members)])
    assert left_behind(dst) == [] and dst.by_digest(digest) is None
    assert not Path("/tmp/escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not (dst.root / "escaped").exists()


def test_limits_hold(src: ImageStore, dst: ImageStore) -> None:
    info = commit_tree(src)
    with pytest.raises(PrereqError, match="more than"):
        receive_layer(dst, info.digest, pack_layer(src, info.digest),
                      ImportLimits(max_bytes=1024 * 1024, max_entries=10))
    assert left_behind(dst) == []


def test_pack_refuses_unknown_and_invalid_digests(src: ImageStore) -> None:
    with pytest.raises(NotFound):
        pack_layer(src, "ef" * 32)
    with pytest.raises(PrereqError, match="invalid digest"):
        pack_layer(src, "../../etc")


# -- LocalAgent: ensure_layer, collect_layers ---------------------------------------------

def agent(tmp_path: Path, name: str, source: ImageStore | None, calls: list[str] | None = None,
          grace: float = 0.0) -> LocalAgent:
    def fetch(digest: str) -> Iterator[bytes]:
        assert source is not None
        if calls is not None:
            calls.append(digest)
        return pack_layer(source, digest)

    return LocalAgent(tmp_path / name, host=name, runtimes=(RuntimeKind.PROCESS,),
                      layer_source=fetch if source is not None else None, layer_grace=grace)


def uses(a: LocalAgent, instance: str, digest: str) -> Path:
    d = a.data_dir / "instances" / instance
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"image": digest, "app": "", "phase": "created"}))
    return d


def test_ensure_fetches_once_and_collect_removes_only_unused_fetched(
        src: ImageStore, tmp_path: Path) -> None:
    info = commit_tree(src)
    calls: list[str] = []
    a = agent(tmp_path, "far", src, calls)
    own = commit_tree(a.store, "own")  # built here: never collected
    a.ensure_layer(info.digest)
    a.ensure_layer(info.digest)
    assert calls == [info.digest]
    assert a.store.by_digest(info.digest) is not None
    assert [i.name for i in a.images()] == ["own"]
    with pytest.raises(NotFound, match="no image layer"):
        a.ensure_layer("0" * 64)
    assert os.listdir(a.store.tmp) == []
    calls.clear()

    inst = uses(a, "s.web.0", info.digest)
    assert a.collect_layers() == []
    (inst / "meta.json").unlink()
    inst.rmdir()
    assert a.collect_layers() == [info.digest]
    assert a.store.by_digest(info.digest) is None
    assert a.store.by_digest(own.digest) == own
    a.ensure_layer(info.digest)  # fetched again when wanted again
    assert calls == [info.digest]


def test_collect_keeps_what_was_just_fetched_or_used(src: ImageStore, tmp_path: Path) -> None:
    info = commit_tree(src)
    a = agent(tmp_path, "far", src, grace=600)
    a.ensure_layer(info.digest)
    assert a.collect_layers() == []  # the create it was fetched for may be on its way


def test_without_a_source_nothing_is_fetched_or_collected(src: ImageStore,
                                                          tmp_path: Path) -> None:
    a = agent(tmp_path, "ctl", None)
    own = commit_tree(a.store)
    a.ensure_layer(own.digest)  # there: fine
    with pytest.raises(NotFound, match="is not on host ctl"):
        a.ensure_layer("ab" * 32)
    assert a.collect_layers() == [] and a.store.by_digest(own.digest) == own
    with pytest.raises(PrereqError, match="invalid digest"):
        a.ensure_layer("nope")
    assert b"".join(a.layer_stream(own.digest)).startswith(HEADER.encode())
