"""An instance's disks as a byte stream, for a cold migration between hosts.

The sender reads the stopped instance's root disk image and its data disk (if it has one)
and sends only what they hold: their data extents (SEEK_DATA/SEEK_HOLE), less the 4 KiB
pieces of zeros in them. The receiver writes those at their offsets into files of the same
size, so holes stay holes (an image of a 4 GiB ceiling holding 20 MiB arrives as 20 MiB).

The stream (integers big-endian; every header is of fixed size, a name at most 255 bytes):

    stream = MAGIC  u8 n  id[n]  disk  [disk]  "Z"
    disk   = "F"  u8 n  name[n]  u64 size  extent*  "H"  digest[32]
    extent = "X"  u64 offset  u32 length  data[length]

MAGIC is b"RFDISKS" and a version byte, 1. `id` is the instance id: a stream is refused by
another instance. `name` is "disk.img" (the root disk, always first) then, if the instance
has one, "data.img" (its data disk). Extents come in ascending order, do not overlap, hold
1 to 1 MiB and never cross a 1 MiB boundary; what they do not cover is zeros. "Z" ends the
stream: a stream cut anywhere is incomplete, and refused as such.

`digest` covers the disk's whole logical content, holes read as zeros, as a two-level
sha256: the sha256 of the concatenated sha256s of its 1 MiB blocks (the last one shorter).
A plain sha256 would hash every zero of the sparse ceiling (8 times the disk's size, 4 GiB
at least: 2.7 s per 4 GiB here, minutes for large disks) on both sides; a block of zeros
hashes to a constant, so this costs what the data costs. `disk_digest` computes it of a file.

The receiver writes into `<incoming>.new/` (a retry starts it afresh), checks sizes and
digests, fsyncs, then renames it to `<incoming>/` (replacing an older copy): a copy there is
whole, never half of one. Malformed or corrupt input is refused (PrereqError) and the
staging dir removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.runtime import mounts
from rackfire.runtime.layout import InstanceDir

MAGIC = b"RFDISKS\x01"
ROOT_DISK = "disk.img"
DATA_DISK = "data.img"
MANIFEST = "manifest.json"
BLOCK = 1 << 20  # the digest's block, and the largest extent
PIECE = 4096  # zeros are left out at this granularity (ext4's block size)
MAX_SIZE = 1 << 46  # 64 TiB: a bound on what a header may claim

_FILE = struct.Struct("!Q")
_EXTENT = struct.Struct("!QI")
_ZERO_BLOCK = bytes(BLOCK)
_ZERO_PIECE = bytes(PIECE)
_ZERO_HASH = hashlib.sha256(_ZERO_BLOCK).digest()


class Malformed(Exception):
    """The stream breaks the format; the message says where."""


class _Digest:
    """The two-level sha256 of one disk, fed its blocks in ascending order; blocks never
    fed are zeros."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._blocks = -(-size // BLOCK)
        self._outer = hashlib.sha256()
        self._next = 0

    def block(self, index: int, data: bytes | bytearray | memoryview | None) -> None:
        """Block `index`'s content; None for all zeros."""
        self._zeros_until(index)
        self._outer.update(self._zero(index) if data is None
                           else hashlib.sha256(data).digest())
        self._next = index + 1

    def digest(self) -> bytes:
        self._zeros_until(self._blocks)
        return self._outer.digest()

    def _zero(self, index: int) -> bytes:
        length = min(BLOCK, self._size - index * BLOCK)
        return _ZERO_HASH if length == BLOCK else hashlib.sha256(bytes(length)).digest()

    def _zeros_until(self, index: int) -> None:
        full = min(index, self._size // BLOCK)  # blocks before the short last one
        while self._next < full:
            n = min(full - self._next, 1 << 16)
            self._outer.update(_ZERO_HASH * n)
            self._next += n
        if self._next < index:  # the short last block
            self._outer.update(self._zero(self._next))
            self._next += 1


def disk_digest(path: Path) -> str:
    """The stream's digest of the file at `path` (hex), holes read as zeros."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        digest = _Digest(size)
        for index in _data_blocks(fd, size):
            data = _pread_block(fd, index, size, path)
            digest.block(index, None if _is_zero(data) else data)
        return digest.digest().hex()
    finally:
        os.close(fd)


# sending ---------------------------------------------------------------------------------

def read_disks(d: InstanceDir, volume: Path) -> Iterator[bytes]:
    """The stream of the instance's root disk image and, if it exists, its data disk at
    `volume`. Refused (before anything is sent) while either is mounted anywhere, i.e. the
    caller must have stopped the instance and unmounted its disks: only then are the image
    files all there is of them. A disk that changes while it is read aborts the stream (an
    exception from the iterator), which the receiver then refuses as incomplete."""
    if not d.disk_image.is_file():
        raise NotFound(f"instance {d.root.name} has no root disk image here")
    disks = [(ROOT_DISK, d.disk_image)] + ([(DATA_DISK, volume)] if volume.is_file() else [])
    for _, path in disks:
        check_unused(path)
    return stream_disks(d.root.name, disks)


def stream_disks(instance_id: str, disks: list[tuple[str, Path]]) -> Iterator[bytes]:
    name = instance_id.encode()
    yield MAGIC + bytes([len(name)]) + name
    for label, path in disks:
        yield from _send_disk(label, path)
    yield b"Z"


def _send_disk(label: str, path: Path) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        check_unused(path)  # again: the caller's check was before the stream started
        size = before.st_size
        if size > MAX_SIZE:
            raise PrereqError(f"{path} is larger than a disk stream can carry")
        yield b"F" + bytes([len(label)]) + label.encode() + _FILE.pack(size)
        digest = _Digest(size)
        for index in _data_blocks(fd, size):
            data = _pread_block(fd, index, size, path)
            if _is_zero(data):
                digest.block(index, None)
                continue
            digest.block(index, data)
            base = index * BLOCK
            for start, end in _nonzero_runs(data):
                yield b"X" + _EXTENT.pack(base + start, end - start) + data[start:end]
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != \
                (before.st_size, before.st_mtime_ns, before.st_ctime_ns):
            raise ExecError(f"{path} changed while it was being sent: the copy is void",
                            hint="keep the instance stopped while its disks are copied")
        check_unused(path)
        yield b"H" + digest.digest()
    finally:
        os.close(fd)


def check_unused(path: Path) -> None:
    """Refuse a disk image that a loop device holds: mounted, it may change under the read,
    and what the kernel has not written back yet is not in the file."""
    real = os.path.realpath(path)
    held = [dev for dev, backing in mounts.loops_under(path.parent).items() if backing == real]
    if held:
        raise PrereqError(f"{path} is in use ({', '.join(sorted(held))})",
                          hint="stop the instance (its disks are copied only while stopped)")


def _data_blocks(fd: int, size: int) -> Iterator[int]:
    """Indexes of the 1 MiB blocks that hold any data extent, ascending."""
    last, pos = -1, 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data past pos
                return
            if e.errno == errno.EINVAL and pos == 0:  # no SEEK_DATA here: all is data
                yield from range(-(-size // BLOCK))
                return
            raise
        if start >= size:
            return
        for index in range(max(start // BLOCK, last + 1), (end - 1) // BLOCK + 1):
            yield index
            last = index
        pos = end


def _pread_block(fd: int, index: int, size: int, path: Path) -> bytes:
    want = min(BLOCK, size - index * BLOCK)
    data = os.pread(fd, want, index * BLOCK)
    if len(data) != want:
        raise ExecError(f"{path} shrank while it was being read")
    return data


def _is_zero(data: bytes) -> bool:
    return data == _ZERO_BLOCK[:len(data)]


def _nonzero_runs(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the runs of `data`'s 4 KiB pieces that are not all zeros."""
    runs: list[tuple[int, int]] = []
    view = memoryview(data)
    start = -1
    for p in range(0, len(data), PIECE):
        piece = view[p:p + PIECE]
        if piece == _ZERO_PIECE[:len(piece)]:
            if start >= 0:
                runs.append((start, p))
                start = -1
        elif start < 0:
            start = p
    if start >= 0:
        runs.append((start, len(data)))
    return runs


# receiving -------------------------------------------------------------------------------

class StreamReader:
    """Exact reads from an iterable of byte chunks of any sizes (also the delta stream's,
    runtime/extents.py, which hashes what it reads: `digest`). A stream that ends before
    a read raises Malformed."""

    def __init__(self, chunks: Iterable[bytes], digest: Any = None) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self.digest = digest  # a hashlib object every byte read goes through, or None

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                raise Malformed("it ends early (incomplete)") from None
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += chunk
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        if self.digest is not None:
            self.digest.update(out)
        return out

    def text(self) -> str:
        """A string of up to 255 bytes, after its length byte."""
        return self.read(self.read(1)[0]).decode("utf-8", "replace")

    def at_end(self) -> bool:
        if self._pos < len(self._buf):
            return False
        return all(not chunk for chunk in self._chunks)


def write_disks(incoming: Path, chunks: Iterable[bytes]) -> None:
    """Receive a stream of `read_disks` into `incoming` (`<data-dir>/incoming/<id>`, whose
    name is the instance id the stream must carry): staged in `<incoming>.new/`, verified,
    fsynced, then renamed over any earlier copy. Anything wrong leaves no staging behind and
    the earlier copy, if any, as it was."""
    staging = staging_dir(incoming)
    incoming.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier try
    staging.mkdir(mode=0o700)
    try:
        manifest = _receive(StreamReader(chunks), incoming.name, staging)
        path = staging / MANIFEST
        path.write_text(json.dumps(manifest))
        fsync_path(path)
        fsync_path(staging)
        shutil.rmtree(incoming, ignore_errors=True)  # a whole copy replaces a whole copy
        os.rename(staging, incoming)
        fsync_path(incoming.parent)
    except Malformed as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise PrereqError(f"refused the disks of {incoming.name}: the stream {e}",
                          hint="nothing of it was kept; send the disks again") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def stage(incoming: Path, fill: Callable[[Path], None]) -> None:
    """Disks made here, not received, kept in `incoming` as a received copy is (for a
    create with `adopt_disks`): `fill` puts disk.img (and data.img) into a staging dir, then
    the manifest is written and the dir renamed over any earlier copy; a failure leaves no
    staging behind."""
    staging = staging_dir(incoming)
    incoming.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        fill(staging)
        disks = {label: {"size": (staging / label).stat().st_size, "digest": ""}
                 for label in (ROOT_DISK, DATA_DISK) if (staging / label).is_file()}
        (staging / MANIFEST).write_text(json.dumps({"id": incoming.name, "disks": disks}))
        fsync_path(staging)
        shutil.rmtree(incoming, ignore_errors=True)
        os.rename(staging, incoming)
        fsync_path(incoming.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def staging_dir(incoming: Path) -> Path:
    return incoming.with_name(incoming.name + ".new")


def _receive(r: StreamReader, instance_id: str, staging: Path) -> dict[str, object]:
    if r.read(len(MAGIC)) != MAGIC:
        raise Malformed("is not a rackfire disk stream (version 1)")
    sent_id = r.read(r.read(1)[0]).decode("ascii", "replace")
    if sent_id != instance_id:
        raise Malformed(f"carries the disks of {sent_id!r}")
    disks: dict[str, object] = {}
    tag = r.read(1)
    for expected in (ROOT_DISK, DATA_DISK):  # the root disk, then maybe the data disk
        if tag != b"F":
            break
        name = r.read(r.read(1)[0]).decode("ascii", "replace")
        if name != expected:
            raise Malformed(f"has disk {name!r} where {expected!r} belongs")
        (size,) = _FILE.unpack(r.read(_FILE.size))
        if size > MAX_SIZE:
            raise Malformed(f"claims {name} holds {size} bytes")
        disks[name] = {"size": size, "digest": _receive_disk(r, staging / name, size)}
        tag = r.read(1)
    if tag != b"Z":
        raise Malformed(f"has {tag!r} where a disk or its end belongs")
    if not disks:
        raise Malformed("holds no root disk")
    if not r.at_end():
        raise Malformed("has bytes after its end")
    return {"id": instance_id, "disks": disks}


def _receive_disk(r: StreamReader, path: Path, size: int) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)  # the whole disk a hole: the extents fill it in
        digest = _Digest(size)
        block = bytearray(BLOCK)  # the current block's content, for its digest
        current, end = -1, 0

        def finish() -> None:
            if current >= 0:
                digest.block(current, memoryview(block)[:min(BLOCK, size - current * BLOCK)])

        while (tag := r.read(1)) == b"X":
            offset, length = _EXTENT.unpack(r.read(_EXTENT.size))
            if not 0 < length <= BLOCK or offset < end or offset + length > size \
                    or offset // BLOCK != (offset + length - 1) // BLOCK:
                raise Malformed(f"has an extent at {offset} of {length} bytes that does not "
                                 f"fit {path.name} ({size} bytes; the last one ended at {end})")
            data = r.read(length)
            index = offset // BLOCK
            if index != current:
                finish()
                current = index
                block[:] = _ZERO_BLOCK
            start = offset - index * BLOCK
            block[start:start + length] = data
            _pwrite_all(fd, data, offset)
            end = offset + length
        if tag != b"H":
            raise Malformed(f"has {tag!r} inside {path.name}")
        finish()
        sent, got = r.read(32), digest.digest()
        if sent != got:
            raise Malformed(f"does not match its digest for {path.name} (sent {sent.hex()[:16]}, "
                             f"received {got.hex()[:16]}): corrupted on the way")
        os.fsync(fd)
        return got.hex()
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_path(path: Path) -> None:
    """fsync a file, or a dir (making a rename or unlink in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# after a migration -----------------------------------------------------------------------

def discard(incoming: Path, volume: Path) -> None:
    """Remove a received copy (whole or staged) and the data disk at `volume`; missing parts
    are fine. Refused while a loop device holds the data disk."""
    if volume.exists():
        check_unused(volume)
    shutil.rmtree(staging_dir(incoming), ignore_errors=True)
    shutil.rmtree(incoming, ignore_errors=True)
    volume.unlink(missing_ok=True)
