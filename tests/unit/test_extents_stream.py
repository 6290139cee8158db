"""The delta stream of a replicated volume on plain files (no reflinks: the compare path):
what changed is found and shipped, a range turned to zeros is zeros (a hole) on the standby,
disks grow and shrink; a stream for another instance or another base, malformed, corrupt or
cut short is refused and leaves the standby and its token as they were."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackfire.errors import ExecError, PrereqError
from rackfire.runtime import extents
from rackfire.runtime.extents import (
    COMPARE,
    MAGIC,
    Extent,
    apply_delta,
    changed_ranges,
    diff_maps,
    read_token,
    send_delta,
    whole_ranges,
)

MiB = 1 << 20
SIZE = 16 * MiB
ID = "shop.db.0"


def _write(path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    mode = "r+b" if path.exists() else "wb"
    with open(path, mode) as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def _copy(src: Path, dst: Path) -> None:
    """A copy that shares no blocks whatever the filesystem (holes stay holes)."""
    size = src.stat().st_size
    with open(src, "rb") as s:
        _write(dst, size, [(a, os.pread(s.fileno(), b - a, a))
                           for a, b in whole_ranges(src)])


def _sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _state(target: Path) -> tuple[str, int, int, bytes | None, list[str]]:
    token = extents.token_path(target)
    return (_sha(target), target.stat().st_ino, target.stat().st_mtime_ns,
            token.read_bytes() if token.exists() else None,
            sorted(p.name for p in target.parent.iterdir()))


@pytest.fixture
def disks(tmp_path: Path) -> tuple[Path, Path, Path]:
    """base (version t1), the standby holding it, and new: base with writes in 3 places,
    one of them now zeros."""
    base, standby, new = tmp_path / "base.img", tmp_path / "standby" / "data.img", \
        tmp_path / "new.img"
    standby.parent.mkdir()
    _write(base, SIZE, [(0, os.urandom(3 * MiB)), (6 * MiB + 123, os.urandom(5000)),
                        (10 * MiB, os.urandom(2 * MiB))])
    result = apply_delta(standby, send_delta(base, whole_ranges(base), ID, "", "t1"), ID)
    assert result.token == "t1" and result.written >= 5 * MiB
    assert _sha(standby) == _sha(base) and read_token(standby, ID) == "t1"
    _copy(base, new)
    _write(new, SIZE, [(MiB + 4096 * 3, b"changed" * 100),  # inside a data block
                       (8 * MiB, os.urandom(8192)),  # where base has a hole
                       (10 * MiB, bytes(MiB))])  # data turned to zeros
    return base, standby, new


def test_changed_ranges_by_content(disks: tuple[Path, Path, Path]) -> None:
    base, _, new = disks
    changes = changed_ranges(base, new)
    assert changes.method == COMPARE  # the files share no blocks: FIEMAP cannot tell
    assert changes == changed_ranges(base, new, use_fiemap=False)
    assert changes.ranges == ((MiB + 4096 * 3, MiB + 4096 * 4),
                              (8 * MiB, 8 * MiB + 8192),
                              (10 * MiB, 11 * MiB))
    assert changes.changed == 4096 + 8192 + MiB and changes.size == SIZE
    assert changed_ranges(base, base).ranges == ()


def test_round_trip_with_zeros(disks: tuple[Path, Path, Path]) -> None:
    base, standby, new = disks
    held = os.stat(standby).st_blocks
    changes = changed_ranges(base, new)
    result = apply_delta(standby, send_delta(new, changes.ranges, ID, "t1", "t2"), ID)
    assert _sha(standby) == _sha(new)
    assert (result.token, result.written, result.zeroed) == ("t2", 4096 + 8192, MiB)
    assert read_token(standby, ID) == "t2"
    # The zeros were punched: the standby holds a MiB less, and no data at 10 MiB.
    assert os.stat(standby).st_blocks * 512 <= held * 512 - MiB + 8192
    fd = os.open(standby, os.O_RDONLY)
    try:
        assert os.lseek(fd, 10 * MiB, os.SEEK_DATA) >= 11 * MiB
    finally:
        os.close(fd)
    assert sorted(p.name for p in standby.parent.iterdir()) == ["data.img", "data.img.token"]
    # The next delta applies to t2 only.
    with pytest.raises(PrereqError, match="'t1'"):
        apply_delta(standby, send_delta(new, changes.ranges, ID, "t1", "t3"), ID)


@pytest.mark.parametrize("size", [40 * MiB + 5, 4 * MiB + 100])
def test_disk_grows_and_shrinks(disks: tuple[Path, Path, Path], size: int) -> None:
    base, standby, new = disks
    _write(new, size, [(size - 10, b"the end!!!")])
    changes = changed_ranges(base, new)
    assert changes.ranges[-1][1] == size  # cut at the size, not at its 4 KiB piece
    result = apply_delta(standby, send_delta(new, changes.ranges, ID, "t1", "t2"), ID)
    assert result.size == size == standby.stat().st_size
    assert _sha(standby) == _sha(new)


def _raw(*, instance: str = ID, base: str = "t1", token: str = "t2", size: int = SIZE,
         pieces: tuple[bytes, ...] = (), digest: bytes | None = None) -> list[bytes]:
    """A stream built by hand, with a right digest unless one is given."""
    body = b"".join((MAGIC, bytes([len(instance)]), instance.encode(), bytes([len(base)]),
                     base.encode(), bytes([len(token)]), token.encode(),
                     struct.pack("!Q", size), *pieces, b"H"))
    return [body, digest if digest is not None else hashlib.sha256(body).digest(), b"Z"]


def _x(offset: int, data: bytes) -> bytes:
    return b"X" + struct.pack("!QI", offset, len(data)) + data


def _o(offset: int, length: int) -> bytes:
    return b"O" + struct.pack("!QQ", offset, length)


def test_handmade_stream_applies(disks: tuple[Path, Path, Path]) -> None:
    _, standby, _ = disks
    before = standby.read_bytes()
    result = apply_delta(standby, _raw(pieces=(_x(0, b"hello"), _o(10, 4096))), ID)
    assert (result.written, result.zeroed, result.pieces) == (5, 4096, 2)
    after = standby.read_bytes()
    assert after[:5] == b"hello" and after[5:10] == before[5:10]
    assert after[10:4106] == bytes(4096) and after[4106:] == before[4106:]


def _cuts(chunks: list[bytes]) -> Iterator[list[bytes]]:
    whole = b"".join(chunks)
    for n in sorted({0, 1, 7, 8, 9, 20, 40, len(whole) // 2, len(whole) - 33, len(whole) - 1}):
        yield [whole[:n]]


BAD: dict[str, tuple[list[bytes], str]] = {
    "another instance": (_raw(instance="shop.web.0"), "shop.web.0"),
    "another base": (_raw(base="t0"), "applies to version 't0'"),
    "not a delta": ([b"RFDISKS\x01" + bytes(40)], "not a rackfire delta"),
    "no token": (_raw(token=""), "malformed header"),
    "too large": (_raw(size=1 << 60), "malformed header"),
    "corrupt": (_raw(pieces=(_x(0, b"data"),), digest=bytes(32)), "digest"),
    "overlap": (_raw(pieces=(_x(4096, b"a" * 100), _x(4000, b"b"))), "does not fit"),
    "past the end": (_raw(size=MiB, pieces=(_o(MiB - 10, 11),)), "does not fit"),
    "too long": (_raw(pieces=(b"X" + struct.pack("!QI", 0, MiB + 1) + bytes(MiB + 1),)),
                 "does not fit"),
    "empty piece": (_raw(pieces=(_o(0, 0),)), "does not fit"),
    "unknown tag": (_raw(pieces=(b"Q" + bytes(12),)), "b'Q'"),
    "trailing bytes": ([*_raw(), b"more"], "after its end"),
    "no end": ([*_raw()[:2], b"Y"], "no end"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_streams_change_nothing(disks: tuple[Path, Path, Path], case: str) -> None:
    _, standby, _ = disks
    chunks, message = BAD[case]
    before = _state(standby)
    with pytest.raises(PrereqError, match=message):
        apply_delta(standby, chunks, ID)
    assert _state(standby) == before


def test_cut_streams_change_nothing(disks: tuple[Path, Path, Path]) -> None:
    base, standby, new = disks
    stream = list(send_delta(new, changed_ranges(base, new).ranges, ID, "t1", "t2"))
    before = _state(standby)
    for cut in _cuts(stream):
        with pytest.raises(PrereqError, match=r"ends early|not a rackfire delta"):
            apply_delta(standby, cut, ID)
        assert _state(standby) == before
    apply_delta(standby, stream, ID)  # the whole stream still applies
    assert _sha(standby) == _sha(new)


def test_sender_failing_midway_changes_nothing(disks: tuple[Path, Path, Path]) -> None:
    base, standby, new = disks
    stream = send_delta(new, changed_ranges(base, new).ranges, ID, "t1", "t2")

    def broken() -> Iterator[bytes]:
        yield next(stream)
        yield next(stream)
        raise ConnectionResetError("the peer went away")

    before = _state(standby)
    with pytest.raises(ConnectionResetError):
        apply_delta(standby, broken(), ID)
    assert _state(standby) == before


def test_standby_written_in_place_has_no_version(disks: tuple[Path, Path, Path]) -> None:
    """A standby used (e.g. mounted by a failover) is no longer the version its token names."""
    base, standby, new = disks
    with open(standby, "r+b") as f:
        f.write(b"mounted and written")
    assert read_token(standby, ID) is None
    assert read_token(standby, "shop.web.0") is None
    before = _state(standby)
    with pytest.raises(PrereqError, match="no known version"):
        apply_delta(standby, send_delta(new, changed_ranges(base, new).ranges, ID, "t1", "t2"),
                    ID)
    assert _state(standby) == before
    # A whole copy (a delta from nothing) starts it afresh.
    apply_delta(standby, send_delta(new, whole_ranges(new), ID, "", "t2"), ID)
    assert _sha(standby) == _sha(new) and read_token(standby, ID) == "t2"


def test_new_changing_while_sent_aborts(disks: tuple[Path, Path, Path]) -> None:
    base, _, new = disks
    stream = send_delta(new, changed_ranges(base, new).ranges, ID, "t1", "t2")
    next(stream)
    _write(new, SIZE, [(13 * MiB, b"late write")])
    with pytest.raises(ExecError, match="changed while"):
        list(stream)


def test_send_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(PrereqError, match="token"):
        send_delta(tmp_path / "x", [], ID, "t1", "")
    with pytest.raises(PrereqError, match="longer than 255"):
        send_delta(tmp_path / "x", [], "i" * 256, "t1", "t2")


def _e(logical: int, physical: int, length: int, flags: int = 0) -> Extent:
    return Extent(logical, physical, length, flags)


def test_extent_maps_compared() -> None:
    """What FIEMAP's answers mean: the same blocks are unchanged, and so are a hole and an
    unwritten extent (zeros both); moved blocks, data on one side only, or an extent whose
    place is not known are changed."""
    k = 4096
    base = [_e(0, 100 * k, 10 * k), _e(20 * k, 500 * k, 4 * k),
            _e(30 * k, 900 * k, 2 * k, extents.EXTENT_UNWRITTEN), _e(40 * k, 50 * k, 4 * k)]
    new = [_e(0, 100 * k, 3 * k),  # shared
           _e(3 * k, 700 * k, 2 * k),  # rewritten (copy on write moved it)
           _e(5 * k, 105 * k, 5 * k),  # shared again
           _e(12 * k, 800 * k, k),  # written into a hole
           # base's 20k..24k deleted (a hole now): changed
           _e(30 * k, 900 * k, 2 * k),  # same blocks, but written now (was unwritten)
           _e(40 * k, 50 * k, 4 * k, 0x4),  # delayed allocation: not known
           _e(44 * k, 990 * k, 4 * k, extents.EXTENT_UNWRITTEN)]  # zeros, as in base
    changed, shared = diff_maps(base, new, 48 * k)
    assert changed == [(3 * k, 5 * k), (12 * k, 13 * k), (20 * k, 24 * k), (30 * k, 32 * k),
                       (40 * k, 44 * k)]
    assert shared == 8 * k
    # Past `size` nothing counts; two copies with nothing in common share nothing.
    assert diff_maps(base, base, 10 * k) == ([], 10 * k)
    assert diff_maps([], [_e(0, 0, k)], k)[1] == 0
