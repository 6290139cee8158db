"""Disks and mounts: an ext4 image per instance (a real disk limit) and the overlay root.

mount(8) with `-o loop` sets LO_FLAGS_AUTOCLEAR, so unmounting the disk also frees its loop
device: nothing to track separately, nothing to leak.

Headroom: the image is a sparse ext4 several times larger than the disk's size (its
*ceiling*), and all of it but that size is held back as ext4 reserved blocks, reserved for a
uid no process has. Growing the disk within the ceiling lowers the reservation, a superblock
field the kernel reads on every allocation: it takes effect at once, mounted and in use, and
needs no CAP_SYS_RESOURCE (which ext4's online resize wants, and some sandboxed roots lack).
Only past the ceiling does the filesystem itself grow (resize2fs). Disks made before headroom
(no reservation) still work: they grow as they always did.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import ExecError, PrereqError
from rackfire.model.units import format_size


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ExecError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout}")


def mounted(path: Path) -> bool:
    # The target escaped as mountinfo writes it, not every line unescaped: a host with a
    # thousand mounts reads this file several times per instance created.
    target = _escape(os.path.realpath(path))
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ", 5)[4] == target for line in f)


def _escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def make_disk(image: Path, size: int) -> None:
    """A sparse ext4 image of `disk_ceiling(size)` bytes of which the instance can use `size`
    (writes past it get ENOSPC): the rest is reserved for no one, and `grant` hands it out."""
    ceiling = disk_ceiling(size)
    with open(image, "wb") as f:
        f.truncate(ceiling)
    blocks = ceiling // BLOCK
    # -i: an inode per 64 KiB of ceiling (one per 8 KiB of `size` at 8 times; ext4's default
    # is one per 16 KiB). Journal: 1/32 of `size`, 4 to 128 MiB: it is written over and over,
    # so the host ends up holding all of it; sized for the disk, not for its ceiling.
    # resize=: GDT blocks reserved for online growth up to 16 times the ceiling, not ext4's
    # 1024 times, which would write ~2 MiB per 4 GiB. nodiscard: a new sparse file is empty.
    journal = min(128, max(4, size // (32 * MiB)))
    _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-i", "65536",
          "-J", f"size={journal}",
          "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,"
                f"resize={min(16 * blocks, 2**32 - 1)}",
          "--", str(image)])
    sb = read_super(image)
    # mke2fs records the metadata's size (s_overhead_clusters), which the kernel leaves out
    # of statvfs's f_blocks; an older one leaves it 0 (then the kernel computes it).
    usable = sb.blocks - (sb.overhead or sb.blocks - sb.free)
    _write_super(image, resuid=NO_UID,
                 reserved=_reservation(usable, _default_resv(sb.blocks), size, sb.block_size))


def mount_disk(image: Path, target: Path) -> None:
    if mounted(target):
        return
    target.mkdir(parents=True, exist_ok=True)
    # noinit_itable: no ext4lazyinit thread zeroing the inode tables of the sparse image
    # (they read as zeros already; a loop device may write the zeros out). discard: blocks
    # the instance frees are punched out of the image again, so what the image holds on the
    # host stays what the instance stores now, not all it ever wrote across its ceiling.
    _run(["mount", "-o", "loop,nodev,nosuid,noinit_itable,discard", "--", str(image),
          str(target)])


def mount_overlay(target: Path, lower: list[Path], upper: Path, work: Path) -> None:
    if mounted(target):
        return
    for d in (target, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    # nosuid/nodev: this mount is also visible on the host, where a setuid file an instance
    # made must not run as root.
    # Without CAP_SYS_RESOURCE: overlayfs writes to the upper dir with the credentials of
    # whoever mounted it, and ext4 lets a holder of that capability into reserved blocks,
    # which would take the instance past its disk size up to the ceiling.
    _run(["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "--",
          "mount", "-t", "overlay", "-o", f"{opts},nosuid,nodev", "--", "overlay",
          str(target)])


def unmount(target: Path) -> None:
    """Unmount if mounted (lazily as a last resort, so a stuck reader cannot block destroy)."""
    while mounted(target):
        proc = subprocess.run(["umount", "--", str(target)], capture_output=True, check=False)
        if proc.returncode != 0:
            _run(["umount", "-l", "--", str(target)])


def loops_under(directory: Path) -> dict[str, str]:
    """Loop devices backed by a file under `directory`: device -> backing file."""
    root = os.path.realpath(directory) + "/"
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip().removesuffix(" (deleted)")
            if path.startswith(root):
                found[f"/dev/{backing.parent.parent.name}"] = path
    return found


def release_under(directory: Path) -> None:
    """Unmount every disk whose image is under `directory` and free its loop device, so the
    images can be deleted (an unlinked image still held by a loop device leaks its space).
    Raises if one stays in use."""
    for dev in loops_under(directory):
        for target in _mounts_of(dev):
            unmount(Path(target))
        if Path(f"/sys/block/{Path(dev).name}/loop/backing_file").exists():
            # Not mounted (any more): a device left behind without autoclear.
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    deadline = time.monotonic() + 2  # autoclear may free a device just after the unmount
    while (left := loops_under(directory)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        raise ExecError(f"disks under {directory} are still in use: "
                        + ", ".join(f"{d} ({p})" for d, p in sorted(left.items())),
                        hint="an instance (or another mount namespace) may still hold them")


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory` in this mount namespace, deepest first."""
    root = os.path.realpath(directory)
    return _deepest_first({t for t, _ in _mount_table()
                           if t == root or t.startswith(root.rstrip("/") + "/")})


def remove_tree(directory: Path) -> None:
    """rmtree that never deletes through a mount: every mount under `directory` is
    unmounted first (deepest first), and if one stays the tree is kept and this raises.
    shutil.rmtree alone descends into mount points: into an instance's data disk or its
    overlay root it would delete what they hold."""
    if not os.path.lexists(directory):
        return
    for target in mounts_under(directory):
        with contextlib.suppress(ExecError):
            unmount(Path(target))
    left = mounts_under(directory)
    if left:
        raise ExecError(f"not removing {directory}: still mounted under it: {', '.join(left)}",
                        hint="a process (or another mount namespace) may still hold them")
    shutil.rmtree(directory)


def _mounts_of(dev: str) -> list[str]:
    """Where `dev` is mounted in this mount namespace, deepest first."""
    return _deepest_first(t for t, source in _mount_table() if source == dev)


def _mount_table() -> Iterator[tuple[str, str]]:
    """(mount point, source) of every mount in this mount namespace, from mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # after the " - " separator: fstype, source, super options
            yield _unescape(fields[4]), fields[fields.index("-") + 2]


def _deepest_first(targets: Iterable[str]) -> list[str]:
    """Mount points in the order they can be unmounted: one below another goes first."""
    return sorted(targets, key=lambda t: (t.count("/"), len(t)), reverse=True)


# growing a disk -----------------------------------------------------------------------------

CAP_SYS_RESOURCE = 24
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
BLOCK = 4096
# The ceiling: 8 times the disk, so it grows 8-fold in place; at least 4 GiB, so a small
# disk grows further; at most 8 TiB (a file on the host's ext4 ends at 16 TiB), yet always
# room for the disk and its metadata; in whole block groups of 128 MiB. Its cost, measured
# with mke2fs 1.47 (the default 256 MiB disk → 4 GiB): make_disk ~10 ms, 212 KiB held on
# the host; a 64 GiB ceiling: ~10 ms, 1.2 MiB. The instance can write its `disk` size but
# ~64 KiB (dd in a 256 MiB one: 255.94 MiB; a 32 MiB disk made without headroom held ~25).
HEADROOM = 8
MIN_CEILING = 4 * GiB
MAX_CEILING = 8 * TiB
GROUP = 128 * MiB


def disk_ceiling(size: int) -> int:
    """The size of the image (and its filesystem) made for a disk of `size` bytes."""
    ceiling = max(min(HEADROOM * size, MAX_CEILING), MIN_CEILING, size + size // 16 + GROUP)
    return _round_up(ceiling, GROUP)


class Grow(enum.Enum):
    NONE = "none"
    GRANT = "grant"  # within the ceiling: a smaller reservation (online, no capability)
    RESIZE = "resize"  # the filesystem itself grows: resize2fs (online: CAP_SYS_RESOURCE)


@dataclass(frozen=True, slots=True)
class Room:
    granted: int  # bytes the instance may use
    most: int  # bytes it may be granted without resizing the filesystem
    block: int


def disk_size(image: Path) -> int:
    """The size of a disk made without headroom: its image's."""
    return image.stat().st_size


def has_headroom(image: Path) -> bool:
    """Whether `image` was made with headroom (its reserved blocks are no uid's)."""
    return read_super(image).resuid == NO_UID


def room(image: Path, target: Path) -> Room:
    """The headroom disk `image`, mounted at `target`, measured as the kernel counts it:
    statvfs's f_blocks (all but the metadata), less the blocks ext4 keeps for itself and the
    reserved ones. The instance's limit in `stats` is the same number."""
    dev = _loop_of(image, target)
    st, sb = os.statvfs(target), read_super(dev)
    most = st.f_blocks - _resv(dev, sb.blocks)
    return Room(granted=max(0, most - sb.reserved) * st.f_frsize, most=most * st.f_frsize,
                block=st.f_frsize)


def plan_grow(image: Path, target: Path, size: int, applied: int | None) -> Grow:
    """What it takes for the disk to hold `size` bytes; refuses a shrink before any change.
    `applied`: the size the instance's meta records (written once a grow is complete), None
    if unknown. A headroom disk must be mounted at `target`."""
    if not has_headroom(image):
        current = disk_size(image)
        _refuse_shrink(current, size)
        # meta records the size the fs reached: an image larger than that is a grow that
        # failed half-way (file enlarged, fs not), which resize2fs finishes.
        half_done = applied is not None and applied < current
        return Grow.RESIZE if size > current or half_done else Grow.NONE
    now = room(image, target)
    _refuse_shrink(now.granted if applied is None else applied, size)
    want = _round_up(size, now.block)
    if want > now.most:
        return Grow.RESIZE
    # What is granted differs from meta's size after a grow that stopped half-way (a crash
    # between resize2fs and `grant`, say): granting `size` finishes it.
    return Grow.NONE if want == now.granted else Grow.GRANT


def _refuse_shrink(current: int, size: int) -> None:
    if size < current:
        raise PrereqError(
            f"disk {format_size(current)} → {format_size(size)}: an instance's disk is ext4, "
            "which can grow online but never shrink in use",
            hint=f"keep disk at {format_size(current)} or more; for a smaller disk, destroy "
                 "the instance and create it anew (its data is lost)")


def grant(image: Path, target: Path, size: int) -> None:
    """Let the instance use `size` bytes of its headroom disk, mounted at `target`: reserve
    the rest. The kernel reads the reservation on every allocation, so it holds at once."""
    dev = _loop_of(image, target)
    st, sb = os.statvfs(target), read_super(dev)
    reserved = _reservation(st.f_blocks, _resv(dev, sb.blocks), size, st.f_frsize)
    if reserved != sb.reserved:
        _write_super(dev, reserved=reserved)
        _journal_super(target)


def can_grow_online() -> bool:
    """ext4's online resize ioctl wants CAP_SYS_RESOURCE (ext4_resize_begin), which a root
    without it in its bounding set, as in some sandboxes, cannot have."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def grow_online(image: Path, target: Path, size: int) -> None:
    """Grow the ext4 image mounted at `target` to hold `size` bytes while it is in use:
    enlarge the sparse file (to a new ceiling, for a headroom disk: `grant` follows), have its
    loop device re-read the size, resize2fs the mounted fs."""
    dev = _loop_of(image, target)
    _enlarge(image, disk_ceiling(size) if has_headroom(image) else size)
    _run(["losetup", "--set-capacity", dev])
    _run(["resize2fs", dev])


def grow_offline(image: Path, size: int) -> None:
    """Grow an unmounted ext4 image to hold `size` bytes (resize2fs wants a checked fs first;
    for a headroom disk, `grant` follows once it is mounted)."""
    headroom = has_headroom(image)
    _enlarge(image, disk_ceiling(size) if headroom else size)
    held = read_super(image).reserved
    if headroom:
        # e2fsck takes a reservation of over half the disk for a corrupt superblock and stops.
        _write_super(image, reserved=0)
    try:
        proc = subprocess.run(["e2fsck", "-f", "-p", str(image)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
        if proc.returncode > 1:  # 1: errors corrected, fine to resize
            raise ExecError(f"e2fsck of {image} failed: {proc.stdout.strip()} "
                            f"{proc.stderr.strip()}")
        _run(["resize2fs", str(image)])
    except ExecError:
        if headroom:  # the disk keeps its size until a retry: not the whole ceiling
            with contextlib.suppress(ExecError, OSError):
                _write_super(image, reserved=held)
        raise


def _enlarge(image: Path, size: int) -> None:
    """Make the sparse file `size` bytes, never smaller (a grow stopped half-way may have
    enlarged it further already): allocates nothing."""
    if image.stat().st_size < size:
        os.truncate(image, size)


def _loop_of(image: Path, target: Path) -> str:
    """The loop device mounted at `target`, checked to be `image`'s: never change some other
    disk by mistake."""
    dev = loop_device(target)
    backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file")
    try:
        backed = backing.read_text().strip()
    except OSError:
        backed = ""
    if backed != os.path.realpath(image):
        raise ExecError(f"{dev} at {target} is not backed by {image} (but {backed or '?'})")
    return dev


def _reservation(usable: int, resv: int, size: int, block: int) -> int:
    """The reserved blocks that leave `size` bytes of `usable` blocks to the instance, when
    ext4 keeps `resv` of them for itself."""
    reserved = usable - resv - _round_up(size, block) // block
    if reserved < 0:
        raise ExecError(f"a disk of {format_size(size)} does not fit in its filesystem of "
                        f"{format_size((usable - resv) * block)}")
    return reserved


def _resv(dev: str, blocks: int) -> int:
    """The blocks ext4 keeps back for its own use (s_resv_clusters), which statvfs leaves
    out of f_bavail as it does reserved blocks."""
    try:
        return int(Path(f"/sys/fs/ext4/{Path(dev).name}/reserved_clusters").read_text())
    except (OSError, ValueError):
        return _default_resv(blocks)


def _default_resv(blocks: int) -> int:
    return min(blocks // 50, 4096)  # ext4_calculate_resv_clusters: 2 %, at most 4096


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def loop_device(target: Path) -> str:
    """The device mounted at `target` (a loop device, for a disk mounted with -o loop)."""
    path = os.path.realpath(target)
    for where, source in _mount_table():
        if where == path:
            if source.startswith("/dev/loop"):
                return source
            raise ExecError(f"{target} is mounted from {source}, not a loop device")
    raise ExecError(f"{target} is not mounted")


# the superblock ----------------------------------------------------------------------------
# mke2fs and tune2fs refuse a reservation of more than half the disk. debugfs does not, but
# it also writes the group descriptors back from the copy it read, which on a mounted fs in
# use may be stale by then. So the few fields are written here, as tune2fs writes a mounted
# fs's superblock: only the bytes that change (the rest is the kernel's), and the checksum.

NO_UID = 0xFFFF_FFFF  # s_def_resuid: -1, no uid at all where the kernel reads its high half
#                       (6.18+); 65535, a uid no one is given, where it does not.
FS_IOC_GETFSLABEL = 0x8100_9431  # _IOR(0x94, 49, char[256])
FS_IOC_SETFSLABEL = 0x4100_9432  # _IOW(0x94, 50, char[256])
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


def _write_super(path: Path | str, *, reserved: int | None = None,
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


def _journal_super(target: Path) -> None:
    """Have the kernel write the superblock through its journal, by setting the label it has
    already: a journal replay after a crash then brings back this superblock, not an older
    copy, and its checksum is the kernel's own. Then commit (syncfs)."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        label = bytearray(256)
        fcntl.ioctl(fd, FS_IOC_GETFSLABEL, label)
        fcntl.ioctl(fd, FS_IOC_SETFSLABEL, bytes(label))
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):  # no such ioctl before Linux 5.17
            raise ExecError(f"cannot rewrite the superblock of {target}: {e}") from e
    finally:
        os.close(fd)
    _run(["sync", "-f", "--", str(target)])


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
