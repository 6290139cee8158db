"""What changed between two snapshots of a disk image, and a stream that carries just that
onto a standby copy: the host-side half of a replicated volume.

`changed_ranges(base, new)` finds the byte ranges of `new` that may differ from `base`, two
copies of one image taken at different times. Where both are reflinks (XFS reflink=1,
btrfs) it asks FIEMAP where their extents lie: a range both map to the same physical blocks
is the same data (a copy-on-write filesystem gives a written block a new place), anything
else may have changed. That reads no data, so it costs what the extent maps cost, not what
the disk holds. Where FIEMAP is missing, or the files share no blocks (copies on ext4), it
compares what either holds, 1 MiB at a time, and narrows each differing block to its 4 KiB
pieces. `Changes.method` says which it was.

`send_delta(new, ranges, ...)` streams those ranges; `apply_delta(target, chunks, ...)` makes
the standby copy of `base` into a copy of `new`. The stream (integers big-endian):

    stream = MAGIC  u8 n id[n]  u8 n base[n]  u8 n token[n]  u64 size  piece*  "H" digest[32]  "Z"
    piece  = "X"  u64 offset  u32 length  data[length]       bytes to write at offset
           | "O"  u64 offset  u64 length                     a range that reads as zeros now

MAGIC is b"RFDELTA" and a version byte, 1. `id` is the instance id. `base` is the token of
the version the delta applies to ("" for a stream that carries all of `new`, applied onto
nothing), `token` the one of the version it makes; the caller chooses tokens (a snapshot's
name, a sequence number). Pieces are ascending and do not overlap; an "X" holds 1 byte to
1 MiB. A range that turned to zeros travels as an "O" and is punched out of the target
(written as zeros where punching is not supported), so it holds no stale data. `size` is
`new`'s: the target is resized to it. `digest` is the sha256 of every byte before it, "H"
included: it catches a corrupted stream. "Z" ends it: a stream cut anywhere is refused.

Why tokens and not a digest of the base: a whole-disk digest (diskcopy.disk_digest) reads
all the disk holds on both sides at every shipment of a few MiB every few seconds (0.6 s
warm, 0.8 s cold for a 512 MiB disk holding 400 MiB, where FIEMAP took 0.3 ms and
shipping 8 MiB of changes 40-60 ms). Instead the standby's token lives beside it, in
`<target>.token`, bound to the target file's inode, size and mtime: the token of a file that
changed since (mounted by a failover, written by hand, replaced) no longer counts, and a
delta onto it is refused. A token says which version the target holds because the target is
never written in place: `apply_delta` stages a reflink clone of it (freeze.clone; a
sparse copy where there are no reflinks), applies the stream there, fsyncs it, and renames
it over the target. A cut stream, a crash or a refusal leaves the earlier version whole.
`diskcopy.disk_digest` of both sides remains the way to audit a standby now and then.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import itertools
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import ExecError, PrereqError
from rackfire.runtime import freeze
from rackfire.runtime.diskcopy import MAX_SIZE, Malformed, StreamReader, check_unused, fsync_path

MAGIC = b"RFDELTA\x01"
FIEMAP, COMPARE = "fiemap", "compare"
BLOCK = 1 << 20  # the compare's block, and the largest "X"
PIECE = 4096  # ranges are aligned to it; zeros are found at it
VERSION_SUFFIX = ".token"  # beside the target: the version it holds
STAGING_SUFFIX = ".delta-new"

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1
EXTENT_LAST = 0x1
EXTENT_UNWRITTEN = 0x800  # allocated, reads as zeros
# Where the data is not (only) at fe_physical, or not yet: such an extent is never "the same
# blocks as the other file's", whatever its address says.
_UNSURE = (0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400)  # UNKNOWN DELALLOC ENCODED
#                                 DATA_ENCRYPTED NOT_ALIGNED DATA_INLINE DATA_TAIL
_NO_FIEMAP = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EBADR}
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")
_FIEMAP_BATCH = 512  # extents per call (28 KiB of buffer)

_SIZE = struct.Struct("!Q")
_DATA = struct.Struct("!QI")
_ZEROS = struct.Struct("!QQ")
_ZERO_PIECE = bytes(PIECE)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x1, 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


@dataclass(frozen=True, slots=True)
class Changes:
    """The ranges of `new` to ship: (start, end) byte offsets, ascending, merged, 4 KiB
    aligned (but the last may end at `size`, which is not)."""

    ranges: tuple[tuple[int, int], ...]
    method: str  # FIEMAP or COMPARE
    changed: int  # bytes the ranges cover
    size: int  # new's size


@dataclass(frozen=True, slots=True)
class ApplyResult:
    token: str  # the version the target holds now
    size: int
    written: int  # data bytes written
    zeroed: int  # bytes punched (or written as zeros)
    pieces: int


# what changed ------------------------------------------------------------------------------

def changed_ranges(base: Path, new: Path, *, use_fiemap: bool = True) -> Changes:
    """The ranges of `new` whose content may differ from `base`'s: by FIEMAP where the two
    share blocks, else by comparing their content (`use_fiemap=False` forces that). Both
    must not change meanwhile (frozen snapshots: they do not)."""
    with open(base, "rb") as b, open(new, "rb") as n:
        size = os.fstat(n.fileno()).st_size
        ranges = None
        if use_fiemap:
            ranges = _by_fiemap(b.fileno(), os.fstat(b.fileno()).st_size, n.fileno(), size)
        method = FIEMAP
        if ranges is None:
            ranges, method = _by_compare(b.fileno(), n.fileno(), size), COMPARE
    merged = _align(ranges, size)
    return Changes(tuple(merged), method, sum(e - s for s, e in merged), size)


@dataclass(frozen=True, slots=True)
class Extent:
    """One extent of a FIEMAP answer (bytes)."""

    logical: int
    physical: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.logical + self.length


def fiemap(fd: int, size: int) -> list[Extent] | None:
    """The file's extents below `size` in logical order, written back first; None where the
    filesystem has no FIEMAP."""
    out: list[Extent] = []
    buf = bytearray(_FIEMAP_HEAD.size + _FIEMAP_EXTENT.size * _FIEMAP_BATCH)
    start, flags = 0, FIEMAP_FLAG_SYNC  # written back once, at the first call
    while start < size:
        _FIEMAP_HEAD.pack_into(buf, 0, start, size - start, flags, 0, _FIEMAP_BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        except OSError as e:
            if e.errno in _NO_FIEMAP:
                return None
            raise
        flags = 0
        mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            break
        for i in range(mapped):
            out.append(Extent(*_FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)))
        last = out[-1]
        if last.flags & EXTENT_LAST or last.end <= start:
            break
        start = last.end  # the next page of extents
    return out


def _by_fiemap(base: int, base_size: int, new: int, size: int) -> list[tuple[int, int]] | None:
    """Changed ranges from the two extent maps; None if there are none to read or the files
    share no blocks (not reflinks of one another: only their content tells)."""
    a, b = fiemap(base, base_size), fiemap(new, size)
    if a is None or b is None:
        return None
    changed, shared = diff_maps(a, b, size)
    if shared == 0 and (a or b):
        return None
    return changed


def diff_maps(a: list[Extent], b: list[Extent], size: int) -> tuple[list[tuple[int, int]], int]:
    """The ranges below `size` where the extent maps `a` and `b` (each in logical order)
    do not map to the same blocks, and how many bytes they do map to the same blocks.
    An unwritten extent (allocated, not written) reads as zeros, as a hole does: XFS does
    not share one with a clone, which has a hole there instead."""
    a, b = _written(a), _written(b)
    points = sorted({0, size} | {min(max(p, 0), size) for e in a + b
                                 for p in (e.logical, e.end)})
    changed: list[tuple[int, int]] = []
    shared = 0
    ia = ib = 0
    for p, q in itertools.pairwise(points):
        if p >= q:
            continue
        while ia < len(a) and a[ia].end <= p:
            ia += 1
        while ib < len(b) and b[ib].end <= p:
            ib += 1
        ea = a[ia] if ia < len(a) and a[ia].logical <= p else None
        eb = b[ib] if ib < len(b) and b[ib].logical <= p else None
        if ea is None and eb is None:
            continue  # a hole in both
        if ea is not None and eb is not None and _same_blocks(ea, eb):
            shared += q - p
            continue
        changed.append((p, q))
    return changed, shared


def _written(extents: list[Extent]) -> list[Extent]:
    return [e for e in extents if e.flags & (EXTENT_UNWRITTEN | _UNSURE) != EXTENT_UNWRITTEN]


def _same_blocks(a: Extent, b: Extent) -> bool:
    """Whether the two map the same offsets to the same physical blocks, known to be there."""
    return not (a.flags | b.flags) & _UNSURE \
        and a.physical - a.logical == b.physical - b.logical


def _by_compare(base: int, new: int, size: int) -> list[tuple[int, int]]:
    """The 4 KiB pieces that differ, read in the 1 MiB blocks that hold data in either (a
    block beyond `base`'s end compares with zeros)."""
    blocks = _merge([(s // BLOCK, -(-e // BLOCK)) for fd in (base, new)
                     for s, e in _data_extents(fd, size)])
    a, b = bytearray(BLOCK), bytearray(BLOCK)
    changed: list[tuple[int, int]] = []
    for first, last in blocks:
        for index in range(first, last):
            offset = index * BLOCK
            want = min(BLOCK, size - offset)
            got_a = os.preadv(base, [a], offset)
            if got_a < want:
                a[got_a:want] = bytes(want - got_a)  # base is shorter: zeros beyond it
            if os.preadv(new, [b], offset) != want:
                raise ExecError("the image shrank while it was compared")
            if (a == b) if want == BLOCK else (a[:want] == b[:want]):
                continue
            va, vb = memoryview(a), memoryview(b)
            for p in range(0, want, PIECE):
                e = min(p + PIECE, want)
                if va[p:e] != vb[p:e]:
                    changed.append((offset + p, offset + e))
    return changed


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    try:
        return list(freeze.data_extents(fd, size))
    except OSError as e:
        if e.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
            return [(0, size)] if size else []
        raise


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _align(ranges: Iterable[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Merged, widened to 4 KiB pieces, and cut at `size` (what lies past it, truncating
    the target removes)."""
    return _merge((s // PIECE * PIECE, min(-(-e // PIECE) * PIECE, size))
                  for s, e in ranges if s < size)


# sending -----------------------------------------------------------------------------------

def send_delta(new: Path, ranges: Iterable[tuple[int, int]], instance_id: str, base: str,
               token: str) -> Iterator[bytes]:
    """The stream that makes a copy of the version `base` into `new` (tagged `token`) by
    `ranges` of it (Changes.ranges); `base` "" with ranges covering all `new` holds is a
    whole copy (`whole_ranges`). Arguments are checked now; `new` changing while it is read
    aborts the stream (an exception from the iterator), which a receiver refuses as cut."""
    header = MAGIC + _short(instance_id, "instance id") + _short(base, "base token") \
        + _short(token, "token")
    if not token:
        raise PrereqError("a delta needs a token for the version it makes")
    return _send(new, _merge(ranges), header)


def whole_ranges(new: Path) -> tuple[tuple[int, int], ...]:
    """The ranges of `new` that hold data: what a stream from nothing (`base` "") carries."""
    fd = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return tuple(_align(_data_extents(fd, size), size))
    finally:
        os.close(fd)


def _short(text: str, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise PrereqError(f"the {what} {text[:40]!r}... is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _send(new: Path, ranges: list[tuple[int, int]], header: bytes) -> Iterator[bytes]:
    fd = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        size = before.st_size
        if size > MAX_SIZE:
            raise PrereqError(f"{new} is larger than a delta can carry")
        digest = hashlib.sha256()
        zeros: list[int] = []  # the pending run of zeros: [start, end], sent when it ends

        def out(*parts: bytes) -> Iterator[bytes]:
            for part in parts:
                digest.update(part)
                yield part

        def flush() -> Iterator[bytes]:
            if zeros:
                yield from out(b"O" + _ZEROS.pack(zeros[0], zeros[1] - zeros[0]))
                zeros.clear()

        def zero(start: int, end: int) -> Iterator[bytes]:
            if start >= end:
                return
            if zeros and zeros[1] == start:
                zeros[1] = end
                return
            yield from flush()
            zeros[:] = [start, end]

        yield from out(header + _SIZE.pack(size))
        for start, end in ranges:
            end = min(end, size)
            cursor = start
            for d, h in _data_within(fd, start, end):
                yield from zero(cursor, d)
                for offset, data in _read_blocks(fd, d, h, new):
                    for s, e, is_zero in _runs(data):
                        if is_zero:
                            yield from zero(offset + s, offset + e)
                        else:
                            yield from flush()
                            yield from out(b"X" + _DATA.pack(offset + s, e - s), data[s:e])
                cursor = h
            yield from zero(cursor, end)
        yield from flush()
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != \
                (before.st_size, before.st_mtime_ns, before.st_ctime_ns):
            raise ExecError(f"{new} changed while its delta was sent: the delta is void",
                            hint="send deltas of snapshots, which nothing writes")
        digest.update(b"H")
        yield b"H" + digest.digest() + b"Z"
    finally:
        os.close(fd)


def _data_within(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The parts of [start, end) of `fd` that hold data (the rest are holes)."""
    pos = start
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            if e.errno == errno.EINVAL:  # no SEEK_DATA here: read it all
                yield pos, end
                return
            raise
        if d >= end:
            return
        h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
        yield d, h
        pos = h


def _read_blocks(fd: int, start: int, end: int, path: Path) -> Iterator[tuple[int, bytes]]:
    """[start, end) of `fd` in reads that do not cross a 1 MiB boundary."""
    offset = start
    while offset < end:
        n = min(end, (offset // BLOCK + 1) * BLOCK) - offset
        data = os.pread(fd, n, offset)
        if len(data) != n:
            raise ExecError(f"{path} shrank while its delta was sent")
        yield offset, data
        offset += n


def _runs(data: bytes) -> list[tuple[int, int, bool]]:
    """`data` cut into runs of 4 KiB pieces that are zeros or not: (start, end, zeros)."""
    runs: list[tuple[int, int, bool]] = []
    view = memoryview(data)
    for p in range(0, len(data), PIECE):
        piece = view[p:p + PIECE]
        is_zero = piece == _ZERO_PIECE[:len(piece)]
        end = min(p + PIECE, len(data))
        if runs and runs[-1][2] == is_zero:
            runs[-1] = (runs[-1][0], end, is_zero)
        else:
            runs.append((p, end, is_zero))
    return runs


# the standby's token -----------------------------------------------------------------------

def token_path(target: Path) -> Path:
    return target.with_name(target.name + VERSION_SUFFIX)


def read_token(target: Path, instance_id: str) -> str | None:
    """The token of the version `target` holds, or None if it is unknown: no token, one of
    another instance, or one recorded for a file that is not the target as it is now."""
    try:
        record = json.loads(token_path(target).read_text())
        st = os.stat(target)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("instance") != instance_id \
            or record.get("file") != _identity(st):
        return None
    token = record.get("token")
    return token if isinstance(token, str) else None


def record_token(target: Path, instance_id: str, token: str) -> None:
    """Say that `target`, as it is now, is version `token` of `instance_id`'s disk (for a
    copy made otherwise, e.g. shipped whole by diskcopy)."""
    _write_token(target, instance_id, token, os.stat(target))
    fsync_path(target.parent)


def forget_token(target: Path) -> None:
    """No delta applies to `target` any more (it is about to be used, or removed)."""
    token_path(target).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        fsync_path(target.parent)


def _identity(st: os.stat_result) -> list[int]:
    # Not ctime: a rename changes it. The inode changes at each apply (a new file renamed
    # over the old one), mtime and size at any write in place.
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _write_token(target: Path, instance_id: str, token: str, st: os.stat_result) -> None:
    path = token_path(target)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"instance": instance_id, "token": token,
                               "file": _identity(st)}))
    fsync_path(tmp)
    os.rename(tmp, path)


# receiving ---------------------------------------------------------------------------------

def apply_delta(target: Path, chunks: Iterable[bytes], instance_id: str) -> ApplyResult:
    """Make `target`, `instance_id`'s standby copy, the version a `send_delta` stream makes.
    Refused (PrereqError, the target and its token as they were) if the stream is another
    instance's, applies to a version the target does not hold (by its token), is malformed,
    corrupt or cut; a target that a loop device holds (in use) is refused too. Anything else
    that fails leaves them as they were as well. One apply at a time per target (they
    share a staging file): the caller's replication loop is that one."""
    if target.exists():
        check_unused(target)
    r = StreamReader(chunks, hashlib.sha256())
    staging = target.with_name(target.name + STAGING_SUFFIX)
    try:
        if r.read(len(MAGIC)) != MAGIC:
            raise Malformed("is not a rackfire delta (version 1)")
        sent_id, base, token = r.text(), r.text(), r.text()
        (size,) = _SIZE.unpack(r.read(_SIZE.size))
    except Malformed as e:
        raise _refusal(target, str(e)) from None
    if sent_id != instance_id:
        raise _refusal(target, f"carries a disk of {sent_id!r}, not of {instance_id!r}")
    if not token or size > MAX_SIZE:
        raise _refusal(target, "has a malformed header")
    if base:
        held = read_token(target, instance_id)
        if held != base:
            raise PrereqError(
                f"refused the delta for {target.name}: it applies to version {base!r}, and "
                f"the copy here is " + (f"version {held!r}" if held else "of no known version"),
                hint="send the whole disk (a delta from nothing) to start the copy afresh")
    staging.unlink(missing_ok=True)  # an interrupted earlier try
    old_token = _read_bytes(token_path(target))
    try:
        if base:
            freeze.clone(target, staging)
        else:
            staging.touch(mode=0o600, exist_ok=False)
        fd = os.open(staging, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            written, zeroed, pieces = _apply(r, fd, size)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        # The token names the staged inode before the rename makes it the target: a crash
        # between leaves a token that matches no file, i.e. "no known version", never a
        # wrong one.
        _write_token(target, instance_id, token, st)
        try:
            os.rename(staging, target)
        except BaseException:
            _restore(token_path(target), old_token)
            raise
        fsync_path(target.parent)
    except Malformed as e:
        staging.unlink(missing_ok=True)
        raise _refusal(target, str(e)) from None
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return ApplyResult(token, size, written, zeroed, pieces)


def _apply(r: StreamReader, fd: int, size: int) -> tuple[int, int, int]:
    written = zeroed = pieces = 0
    end = 0  # where the last piece ended: pieces ascend and do not overlap
    while (tag := r.read(1)) in (b"X", b"O"):
        if tag == b"X":
            offset, length = _DATA.unpack(r.read(_DATA.size))
            limit = BLOCK
        else:
            offset, length = _ZEROS.unpack(r.read(_ZEROS.size))
            limit = size
        if not 0 < length <= limit or offset < end or offset + length > size:
            raise Malformed(f"has a piece at {offset} of {length} bytes that does not fit "
                             f"(the disk holds {size} bytes; the last piece ended at {end})")
        if tag == b"X":
            _pwrite_all(fd, r.read(length), offset)
            written += length
        else:
            _punch(fd, offset, length)
            zeroed += length
        end = offset + length
        pieces += 1
    if tag != b"H":
        raise Malformed(f"has {tag!r} where a piece or its digest belongs")
    got = r.digest.digest()
    if r.read(32) != got:
        raise Malformed("does not match its digest: corrupted on the way")
    if r.read(1) != b"Z":
        raise Malformed("has no end after its digest")
    if not r.at_end():
        raise Malformed("has bytes after its end")
    return written, zeroed, pieces


def _refusal(target: Path, why: str) -> PrereqError:
    return PrereqError(f"refused the delta for {target.name}: the stream {why}",
                       hint="the copy here is as it was; send the delta again")


def _punch(fd: int, offset: int, length: int) -> None:
    """[offset, offset+length) of `fd` zeros: a hole where the filesystem punches one."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise ExecError(f"cannot punch a hole: {os.strerror(err)}")
    zeros = bytes(min(length, BLOCK))
    while length:
        n = min(length, len(zeros))
        _pwrite_all(fd, zeros[:n], offset)
        offset, length = offset + n, length - n


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _restore(path: Path, content: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)
