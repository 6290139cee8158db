"""A replicated volume's shipment on real disks: an instance's ext4 data disk kept on a
loop-mounted XFS made with reflink=1, snapshotted while mounted (frozen), written, and
snapshotted again. FIEMAP tells the changed extents apart without reading the data (a few
MiB of a disk, and they cover every byte that differs); shipped as a delta onto a standby
copy of the first snapshot they make it the second, byte for byte, an ext4 that mounts with
the new files. FIEMAP pages through files of more extents than one call returns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rackfire.runtime import diskcopy, freeze, mounts
from rackfire.runtime.disks import make_disk
from rackfire.runtime.extents import (
    COMPARE,
    EXTENT_UNWRITTEN,
    FIEMAP,
    apply_delta,
    changed_ranges,
    fiemap,
    read_token,
    record_token,
    send_delta,
)

pytestmark = pytest.mark.root

MiB = 1 << 20
ID = "shop.db.0"


def _snapshot(mount: Path, image: Path, copy: Path) -> None:
    freeze.settle(mount, image)
    with freeze.frozen([mount]):
        assert freeze.clone(image, copy) == freeze.REFLINK


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _covered(inner: tuple[tuple[int, int], ...], outer: tuple[tuple[int, int], ...]) -> bool:
    return all(any(s <= a and b <= e for s, e in outer) for a, b in inner)


def test_changed_extents_shipped_onto_a_standby(tmp_path: Path, xfs: Path) -> None:
    image, mnt, seen = xfs / "data.img", tmp_path / "mnt", tmp_path / "standby-mnt"
    a, b, standby = xfs / "a.img", xfs / "b.img", xfs / "standby" / "data.img"
    standby.parent.mkdir()
    make_disk(image, 64 * MiB)
    mounts.mount_disk(image, mnt)
    try:
        first, second, gone = os.urandom(8 * MiB), os.urandom(2 * MiB), os.urandom(MiB)
        (mnt / "first").write_bytes(first)
        (mnt / "second").write_bytes(second)
        (mnt / "gone").write_bytes(gone)
        _snapshot(mnt, image, a)
        assert freeze.clone(a, standby) == freeze.REFLINK  # as if shipped whole once
        record_token(standby, ID, "a")

        middle, more, added = os.urandom(MiB), os.urandom(512 << 10), os.urandom(2 * MiB)
        with open(mnt / "first", "r+b") as f:  # overwritten in place
            f.seek(3 * MiB)
            f.write(middle)
        with open(mnt / "second", "ab") as f:
            f.write(more)
        (mnt / "added").write_bytes(added)
        (mnt / "gone").unlink()
        _snapshot(mnt, image, b)
    finally:
        mounts.unmount(mnt)

    changes = changed_ranges(a, b)
    assert changes.method == FIEMAP
    # What was written (3.5 MiB), what was freed (1 MiB, discarded: punched out of the
    # image), and some metadata and journal: not the ~12 MiB the disk holds.
    assert 3 * MiB < changes.changed < 8 * MiB, changes
    by_content = changed_ranges(a, b, use_fiemap=False)
    assert by_content.method == COMPARE
    assert _covered(by_content.ranges, changes.ranges), (by_content.ranges, changes.ranges)

    before = _used(xfs)
    result = apply_delta(standby, send_delta(b, changes.ranges, ID, "a", "b"), ID)
    assert result.written + result.zeroed <= changes.changed
    assert diskcopy.disk_digest(standby) == diskcopy.disk_digest(b)
    assert read_token(standby, ID) == "b"
    # The standby still shares what did not change (staged in a reflink clone of itself).
    assert _used(xfs) - before <= result.written + MiB, (_used(xfs) - before, result)

    mounts.mount_disk(standby, seen)
    try:
        assert (seen / "first").read_bytes() == first[:3 * MiB] + middle + first[4 * MiB:]
        assert (seen / "second").read_bytes() == second + more
        assert (seen / "added").read_bytes() == added
        assert not (seen / "gone").exists()
    finally:
        mounts.unmount(seen)
    assert read_token(standby, ID) is None  # mounted (and so written): no version any more


def test_fiemap_pages_through_many_extents(xfs: Path) -> None:
    """A file of 1500 data extents (every other 4 KiB block written): more than one FIEMAP
    call returns. Its clone with three blocks rewritten differs in those three only."""
    base, new = xfs / "base", xfs / "new"
    with open(base, "wb") as f:
        for i in range(1500):
            f.seek(2 * i * 4096)
            f.write(os.urandom(4096))
            if i % 100 == 99:
                os.fsync(f.fileno())  # allocated as it goes: no one big delayed extent
    fd = os.open(base, os.O_RDONLY)
    try:
        found = fiemap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert found is not None and len(found) > 3 * 512
    # XFS fills the holes between with preallocated (unwritten) extents as it goes.
    assert sum(1 for e in found if not e.flags & EXTENT_UNWRITTEN) == 1500
    assert freeze.clone(base, new) == freeze.REFLINK
    with open(new, "r+b") as f:
        for i in (7, 700, 1499):
            f.seek(2 * i * 4096)
            f.write(os.urandom(4096))
    changes = changed_ranges(base, new)
    assert changes.method == FIEMAP
    assert changes.ranges == tuple((2 * i * 4096, (2 * i + 1) * 4096) for i in (7, 700, 1499))
