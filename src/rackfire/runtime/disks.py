"""An instance's disk: an ext4 image (a real disk limit) with headroom, made, measured and
grown. Mounting it is mounts.py's; the superblock fields it sets, ext4.py's.

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
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import ExecError, PrereqError
from rackfire.model.units import format_size
from rackfire.runtime.ext4 import NO_UID, read_super, write_super
from rackfire.runtime.mounts import loop_device, run_tool

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
FS_IOC_GETFSLABEL = 0x8100_9431  # _IOR(0x94, 49, char[256])
FS_IOC_SETFSLABEL = 0x4100_9432  # _IOW(0x94, 50, char[256])


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
    run_tool(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-i", "65536",
              "-J", f"size={journal}",
              "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,"
                    f"resize={min(16 * blocks, 2**32 - 1)}",
              "--", str(image)])
    sb = read_super(image)
    # mke2fs records the metadata's size (s_overhead_clusters), which the kernel leaves out
    # of statvfs's f_blocks; an older one leaves it 0 (then the kernel computes it).
    usable = sb.blocks - (sb.overhead or sb.blocks - sb.free)
    write_super(image, resuid=NO_UID,
                reserved=_reservation(usable, _default_resv(sb.blocks), size, sb.block_size))


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
        write_super(dev, reserved=reserved)
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
    run_tool(["losetup", "--set-capacity", dev])
    run_tool(["resize2fs", dev])


def grow_offline(image: Path, size: int) -> None:
    """Grow an unmounted ext4 image to hold `size` bytes (resize2fs wants a checked fs first;
    for a headroom disk, `grant` follows once it is mounted)."""
    headroom = has_headroom(image)
    _enlarge(image, disk_ceiling(size) if headroom else size)
    held = read_super(image).reserved
    if headroom:
        # e2fsck takes a reservation of over half the disk for a corrupt superblock and stops.
        write_super(image, reserved=0)
    try:
        proc = subprocess.run(["e2fsck", "-f", "-p", str(image)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
        if proc.returncode > 1:  # 1: errors corrected, fine to resize
            raise ExecError(f"e2fsck of {image} failed: {proc.stdout.strip()} "
                            f"{proc.stderr.strip()}")
        run_tool(["resize2fs", str(image)])
    except ExecError:
        if headroom:  # the disk keeps its size until a retry: not the whole ceiling
            with contextlib.suppress(ExecError, OSError):
                write_super(image, reserved=held)
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
    run_tool(["sync", "-f", "--", str(target)])

