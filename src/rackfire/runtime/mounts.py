"""Disks and mounts: an ext4 image per instance (a real disk limit) and the overlay root.

mount(8) with `-o loop` sets LO_FLAGS_AUTOCLEAR, so unmounting the disk also frees its loop
device: nothing to track separately, nothing to leak.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from rackfire.errors import ExecError, PrereqError
from rackfire.model.units import format_size


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ExecError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout}")


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == target for line in f)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def make_disk(image: Path, size: int) -> None:
    """A sparse ext4 image of exactly `size` bytes (so writes past it get ENOSPC)."""
    with open(image, "wb") as f:
        f.truncate(size)
    # No reserved blocks: the role's `disk` is what the instance can use.
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
          "--", str(image)])


def mount_disk(image: Path, target: Path) -> None:
    if mounted(target):
        return
    target.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-o", "loop,nodev,nosuid", "--", str(image), str(target)])


def mount_overlay(target: Path, lower: list[Path], upper: Path, work: Path) -> None:
    if mounted(target):
        return
    for d in (target, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    # nosuid/nodev: this mount is also visible on the host, where a setuid file an instance
    # made must not run as root.
    _run(["mount", "-t", "overlay", "-o", f"{opts},nosuid,nodev", "--", "overlay",
          str(target)])


def unmount(target: Path) -> None:
    """Unmount if mounted (lazily as a last resort, so a stuck reader cannot block destroy)."""
    while mounted(target):
        proc = subprocess.run(["umount", "--", str(target)], capture_output=True, check=False)
        if proc.returncode != 0:
            _run(["umount", "-l", "--", str(target)])


# growing a disk -----------------------------------------------------------------------------

CAP_SYS_RESOURCE = 24


def disk_size(image: Path) -> int:
    return image.stat().st_size


def check_grow(image: Path, size: int) -> bool:
    """Whether `image` must grow to hold `size` bytes. Refuses a shrink before any change."""
    current = disk_size(image)
    if size < current:
        raise PrereqError(
            f"disk {format_size(current)} → {format_size(size)}: an instance's disk is ext4, "
            "which can grow online but never shrink in use",
            hint=f"keep disk at {format_size(current)} or more; for a smaller disk, destroy "
                 "the instance and create it anew (its data is lost)")
    return size > current


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
    """Grow the ext4 image mounted at `target` to `size` bytes while it is in use: enlarge
    the sparse file, have its loop device re-read the size, resize2fs the mounted fs."""
    dev = loop_device(target)
    backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file")
    try:
        backed = backing.read_text().strip()
    except OSError:
        backed = ""
    if backed != os.path.realpath(image):  # never resize some other disk by mistake
        raise ExecError(f"{dev} at {target} is not backed by {image} (but {backed or '?'})")
    os.truncate(image, size)  # sparse: allocates nothing
    _run(["losetup", "--set-capacity", dev])
    _run(["resize2fs", dev])


def grow_offline(image: Path, size: int) -> None:
    """Grow an unmounted ext4 image to `size` bytes (resize2fs wants a checked fs first)."""
    os.truncate(image, size)
    proc = subprocess.run(["e2fsck", "-f", "-p", str(image)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode > 1:  # 1: errors corrected, fine to resize
        raise ExecError(f"e2fsck of {image} failed: {proc.stdout.strip()} "
                        f"{proc.stderr.strip()}")
    _run(["resize2fs", str(image)])


def loop_device(target: Path) -> str:
    """The device mounted at `target` (a loop device, for a disk mounted with -o loop)."""
    path = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == path:
                # after the " - " separator: fstype, source, super options
                source = fields[fields.index("-") + 2]
                if source.startswith("/dev/loop"):
                    return source
                raise ExecError(f"{target} is mounted from {source}, not a loop device")
    raise ExecError(f"{target} is not mounted")
