"""Mounts: this mount namespace's table read (mountinfo), and the mounts rackfire makes and
removes: an instance's disk (`-o loop`) and its overlay root, unmounted deepest first, and
trees removed without ever deleting through a mount. The disks themselves are disks.py's.

mount(8) with `-o loop` sets LO_FLAGS_AUTOCLEAR, so unmounting the disk also frees its loop
device: nothing to track separately, nothing to leak.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rackfire.errors import ExecError


def run_tool(args: list[str]) -> None:
    """Run a mount or disk tool; ExecError with what it said if it fails."""
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


def mount_disk(image: Path, target: Path) -> None:
    if mounted(target):
        return
    target.mkdir(parents=True, exist_ok=True)
    # noinit_itable: no ext4lazyinit thread zeroing the inode tables of the sparse image
    # (they read as zeros already; a loop device may write the zeros out). discard: blocks
    # the instance frees are punched out of the image again, so what the image holds on the
    # host stays what the instance stores now, not all it ever wrote across its ceiling.
    run_tool(["mount", "-o", "loop,nodev,nosuid,noinit_itable,discard", "--", str(image),
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
    run_tool(["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "--",
              "mount", "-t", "overlay", "-o", f"{opts},nosuid,nodev", "--", "overlay",
              str(target)])


def unmount(target: Path) -> None:
    """Unmount if mounted (lazily as a last resort, so a stuck reader cannot block destroy)."""
    while mounted(target):
        proc = subprocess.run(["umount", "--", str(target)], capture_output=True, check=False)
        if proc.returncode != 0:
            run_tool(["umount", "-l", "--", str(target)])


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


def loop_device(target: Path) -> str:
    """The device mounted at `target` (a loop device, for a disk mounted with -o loop)."""
    path = os.path.realpath(target)
    for where, source in _mount_table():
        if where == path:
            if source.startswith("/dev/loop"):
                return source
            raise ExecError(f"{target} is mounted from {source}, not a loop device")
    raise ExecError(f"{target} is not mounted")
