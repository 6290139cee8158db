"""Disks and mounts: an ext4 image per instance (a real disk limit) and the overlay root.

mount(8) with `-o loop` sets LO_FLAGS_AUTOCLEAR, so unmounting the disk also frees its loop
device: nothing to track separately, nothing to leak.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from rackfire.errors import ExecError


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
