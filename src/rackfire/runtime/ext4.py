"""The few fields of an ext4 superblock that disks.py reads and writes (its size, free and
reserved blocks, the uid the reserved ones are for), and its checksum.

mke2fs and tune2fs refuse a reservation of more than half the disk. debugfs does not, but
it also writes the group descriptors back from the copy it read, which on a mounted fs in
use may be stale by then. So the few fields are written here, as tune2fs writes a mounted
fs's superblock: only the bytes that change (the rest is the kernel's), and the checksum.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import ExecError

NO_UID = 0xFFFF_FFFF  # s_def_resuid: -1, no uid at all where the kernel reads its high half
#                       (6.18+); 65535, a uid no one is given, where it does not.
_SB = 1024  # the superblock's offset on the disk; it is 1024 bytes long
_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80
_RO_COMPAT_METADATA_CSUM = 0x400
_CHECKSUM = 0x3FC


@dataclass(frozen=True, slots=True)
class Superblock:
    raw: bytes

    def _get(self, offset: int, fmt: str = "<I") -> int:
        return int(struct.unpack_from(fmt, self.raw, offset)[0])

    @property
    def is_64bit(self) -> bool:
        return bool(self._get(0x60) & _INCOMPAT_64BIT)

    def _wide(self, lo: int, hi: int) -> int:
        return self._get(lo) | (self._get(hi) << 32 if self.is_64bit else 0)

    @property
    def block_size(self) -> int:
        return 1024 << self._get(0x18)

    @property
    def blocks(self) -> int:
        return self._wide(0x04, 0x150)

    @property
    def reserved(self) -> int:
        return self._wide(0x08, 0x154)

    @property
    def free(self) -> int:
        return self._wide(0x0C, 0x158)

    @property
    def overhead(self) -> int:
        return self._get(0x248)

    @property
    def resuid(self) -> int:
        return self._get(0x50, "<H") | self._get(0x284, "<H") << 16

    @property
    def has_checksum(self) -> bool:
        return bool(self._get(0x64) & _RO_COMPAT_METADATA_CSUM)


def read_super(path: Path | str) -> Superblock:
    """The superblock of an image, or of a loop device: a mounted fs's is read through the
    device, which shares the kernel's copy (its image file may lag behind)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _superblock(path, os.pread(fd, 1024, _SB))
    finally:
        os.close(fd)


def _superblock(path: Path | str, raw: bytes) -> Superblock:
    if len(raw) < 1024 or struct.unpack_from("<H", raw, 0x38)[0] != _MAGIC:
        raise ExecError(f"{path} holds no ext4 filesystem")
    return Superblock(raw)


def write_super(path: Path | str, *, reserved: int | None = None,
                resuid: int | None = None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        raw = bytearray(os.pread(fd, 1024, _SB))
        sb = _superblock(path, bytes(raw))
        fields: list[tuple[int, str, int]] = []
        if reserved is not None:
            if reserved >> 32 and not sb.is_64bit:
                raise ExecError(f"{path}: {reserved} reserved blocks need a 64bit ext4")
            fields.append((0x08, "<I", reserved & 0xFFFF_FFFF))
            if sb.is_64bit:
                fields.append((0x154, "<I", reserved >> 32))
        if resuid is not None:
            fields += [(0x50, "<H", resuid & 0xFFFF), (0x284, "<H", resuid >> 16)]
        for offset, fmt, value in fields:
            struct.pack_into(fmt, raw, offset, value)
        if sb.has_checksum:
            fields.append((_CHECKSUM, "<I", _crc32c(bytes(raw[:_CHECKSUM]))))
            struct.pack_into("<I", raw, _CHECKSUM, fields[-1][2])
        for offset, fmt, _ in fields:
            os.pwrite(fd, bytes(raw[offset:offset + struct.calcsize(fmt)]), _SB + offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = n >> 1 ^ (0x82F6_3B78 if n & 1 else 0)
        table.append(n)
    return tuple(table)


_CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C as ext4 keeps it: seeded with ~0, not inverted at the end."""
    crc = 0xFFFF_FFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ crc >> 8
    return crc
