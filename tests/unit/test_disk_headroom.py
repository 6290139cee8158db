"""The headroom disk's pieces that need no mount: its ceiling, and the superblock fields it
writes itself (mkfs.ext4, dumpe2fs and e2fsck on an image file need no root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rackfire.runtime import disks, ext4

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(("size", "ceiling"), [
    (32 * MiB, 4 * GiB), (256 * MiB, 4 * GiB), (1 * GiB, 8 * GiB),
    (3 * GiB + 1, 24 * GiB + 128 * MiB), (2 << 40, 8 << 40), (16 << 40, (17 << 40) + 128 * MiB),
])
def test_ceiling(size: int, ceiling: int) -> None:
    assert disks.disk_ceiling(size) == ceiling


def test_a_new_disk_reserves_all_but_its_size_for_no_one(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    disks.make_disk(image, 32 * MiB)
    assert image.stat().st_size == 4 * GiB
    assert image.stat().st_blocks * 512 < 1 * MiB  # sparse
    sb = ext4.read_super(image)
    assert disks.has_headroom(image) and sb.resuid == ext4.NO_UID
    # What the kernel will leave the instance: all but the metadata, its own 2 % (at most
    # 4096 blocks) and the reservation.
    usable = sb.blocks - sb.overhead - min(sb.blocks // 50, 4096) - sb.reserved
    assert usable * sb.block_size == 32 * MiB

    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                            check=True)
    assert f"Reserved block count:     {sb.reserved}\n" in header.stdout
    assert "Reserved blocks uid:      65535" in header.stdout  # its low half
    assert "checksum" not in header.stderr.lower()  # the superblock's checksum holds

    # e2fsck takes a reservation of over half the disk for corruption; without it, clean.
    assert sb.reserved > sb.blocks // 2
    ext4.write_super(image, reserved=0)
    check = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
