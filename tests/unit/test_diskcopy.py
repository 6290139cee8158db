"""The disk stream of a cold migration: sparse files round-trip as sparse files, verified;
anything malformed, corrupt or cut short is refused and leaves nothing staged."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from rackfire.errors import PrereqError
from rackfire.runtime import diskcopy
from rackfire.runtime.diskcopy import BLOCK, disk_digest, read_disks, write_disks
from rackfire.runtime.layout import InstanceDir

MiB = 1 << 20
ID = "shop.db.0"


def _sparse(path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def _instance(tmp_path: Path, data_disk: bool = True) -> tuple[InstanceDir, Path]:
    d = InstanceDir(tmp_path / "src" / "instances" / ID)
    d.root.mkdir(parents=True)
    # Data across a block boundary, a lone byte, explicitly written zeros (a data extent
    # that must travel as nothing), and a short last block.
    _sparse(d.disk_image, 48 * MiB + 5000, [
        (0, b"superblock" * 100),
        (3 * MiB - 10, os.urandom(20)),
        (17 * MiB + 4096 * 3, b"x"),
        (30 * MiB, bytes(2 * MiB)),
        (48 * MiB + 4000, b"tail"),
    ])
    volume = tmp_path / "src" / "volumes" / "shop" / "db-0.img"
    volume.parent.mkdir(parents=True)
    if data_disk:
        _sparse(volume, 32 * MiB, [(16 * MiB, b"the data" * 1000)])
    return d, volume


def _rechunk(chunks: Iterable[bytes], size: int = 7777) -> Iterator[bytes]:
    """The same bytes in other pieces, as a network would deliver them."""
    buf = b"".join(chunks)
    for i in range(0, len(buf), size):
        yield buf[i:i + size]


def _content(path: Path) -> bytes:
    return path.read_bytes()


def test_round_trip_keeps_content_and_sparseness(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path)
    incoming = tmp_path / "dst" / "incoming" / ID
    write_disks(incoming, _rechunk(read_disks(d, volume)))

    assert sorted(p.name for p in incoming.parent.iterdir()) == [ID]  # no staging left
    got_root, got_data = incoming / "disk.img", incoming / "data.img"
    assert _content(got_root) == _content(d.disk_image)
    assert _content(got_data) == _content(volume)
    # Holes stay holes; the explicitly written 2 MiB of zeros became one too.
    assert got_root.stat().st_size == 48 * MiB + 5000
    assert got_root.stat().st_blocks * 512 <= 64 * 1024
    assert got_data.stat().st_blocks * 512 <= 16 * 1024
    manifest = json.loads((incoming / "manifest.json").read_text())
    assert manifest["id"] == ID
    assert manifest["disks"]["disk.img"] == {"size": 48 * MiB + 5000,
                                             "digest": disk_digest(d.disk_image)}
    assert manifest["disks"]["data.img"]["digest"] == disk_digest(got_data)


def test_digest_is_the_sha256_of_the_block_sha256s(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _sparse(path, 2 * MiB + 10, [(MiB + 1, b"a")])
    content = path.read_bytes()
    blocks = [content[i:i + BLOCK] for i in range(0, len(content), BLOCK)]
    want = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()
    assert disk_digest(path) == want
    _sparse(path, 0, [])
    assert disk_digest(path) == hashlib.sha256(b"").hexdigest()


def test_without_a_data_disk_only_the_root_disk_travels(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path, data_disk=False)
    incoming = tmp_path / "dst" / "incoming" / ID
    write_disks(incoming, read_disks(d, volume))
    assert sorted(p.name for p in incoming.iterdir()) == ["disk.img", "manifest.json"]


def _refused(tmp_path: Path, stream: Iterable[bytes], match: str) -> Path:
    incoming = tmp_path / "dst" / "incoming" / ID
    with pytest.raises(PrereqError, match=match):
        write_disks(incoming, stream)
    assert not diskcopy.staging_dir(incoming).exists()
    return incoming


def test_corrupt_stream_is_refused_and_nothing_staged(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path)
    good = b"".join(read_disks(d, volume))
    i = good.index(b"the data")
    bad = good[:i] + b"THE" + good[i + 3:]
    incoming = _refused(tmp_path, _rechunk([bad]), "does not match its digest for data.img")
    assert not incoming.exists()


def test_truncated_wrong_or_trailing_streams_are_refused(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path)
    good = b"".join(read_disks(d, volume))
    _refused(tmp_path, [good[:-1]], "ends early")
    _refused(tmp_path, [good[:len(good) // 2]], "ends early")
    _refused(tmp_path, [good + b"x"], "bytes after its end")
    _refused(tmp_path, [b"GARBAGE!" + good[8:]], "not a rackfire disk stream")
    other = diskcopy.MAGIC + bytes([9]) + b"shop.db.1" + good[len(diskcopy.MAGIC) + 10:]
    _refused(tmp_path, [other], "disks of 'shop.db.1'")
    # Only the data disk, no root disk first.
    head = diskcopy.MAGIC + bytes([len(ID)]) + ID.encode()
    _refused(tmp_path, [head + b"F\x08data.img" + struct.pack("!Q", 10)], "where 'disk.img'")
    _refused(tmp_path, [head + b"Z"], "no root disk")


def test_extents_out_of_bounds_or_order_are_refused(tmp_path: Path) -> None:
    head = diskcopy.MAGIC + bytes([len(ID)]) + ID.encode() + b"F\x08disk.img" \
        + struct.pack("!Q", 4 * MiB)

    def extent(offset: int, data: bytes) -> bytes:
        return b"X" + struct.pack("!QI", offset, len(data)) + data

    for body in (extent(4 * MiB - 2, b"abc"),  # past the end
                 extent(MiB - 1, b"ab"),  # across a block boundary
                 extent(100, b"ab") + extent(101, b"cd"),  # overlapping
                 b"X" + struct.pack("!QI", 0, 0),  # empty
                 b"X" + struct.pack("!QI", 0, 1 << 31)):  # larger than a block
        _refused(tmp_path, [head + body], "does not fit disk.img")
    _refused(tmp_path, [head + b"Q"], "inside disk.img")
    _refused(tmp_path, [head[:-8] + struct.pack("!Q", 1 << 60)], "claims disk.img holds")


def test_a_retry_replaces_a_copy_and_a_failed_one_keeps_it(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path)
    incoming = tmp_path / "dst" / "incoming" / ID
    write_disks(incoming, read_disks(d, volume))
    # An interrupted earlier try left staging behind: the next one starts afresh.
    diskcopy.staging_dir(incoming).mkdir()
    (diskcopy.staging_dir(incoming) / "junk").write_text("x")
    _sparse(volume, 32 * MiB, [(0, b"newer")])
    write_disks(incoming, read_disks(d, volume))
    assert (incoming / "data.img").read_bytes()[:5] == b"newer"
    assert not diskcopy.staging_dir(incoming).exists()

    def broken() -> Iterator[bytes]:
        stream = read_disks(d, volume)
        yield next(stream)
        yield next(stream)
        raise ConnectionError("the sender went away")

    with pytest.raises(ConnectionError):
        write_disks(incoming, broken())
    assert not diskcopy.staging_dir(incoming).exists()
    assert (incoming / "data.img").read_bytes()[:5] == b"newer"  # the whole copy stays


def test_discard_removes_copies_and_the_data_disk(tmp_path: Path) -> None:
    d, volume = _instance(tmp_path)
    incoming = tmp_path / "dst" / "incoming" / ID
    write_disks(incoming, read_disks(d, volume))
    diskcopy.staging_dir(incoming).mkdir()
    diskcopy.discard(incoming, volume)
    assert not incoming.exists() and not diskcopy.staging_dir(incoming).exists()
    assert not volume.exists()
    diskcopy.discard(incoming, volume)  # again: nothing to do
