"""How a container instance's disks grow: a resize checked before any change (`Grows`: what
it takes of each disk), a disk grown (within its headroom, online, or offline), and the data
disk made, reused or grown as it is mounted at each start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import NotFound, PrereqError
from rackfire.model.instance import InstanceRequest
from rackfire.model.units import format_size_approx
from rackfire.runtime import disks, mounts, stats
from rackfire.runtime.layout import InstanceDir, read_meta, resources_of
from rackfire.runtime.runc import Runc


@dataclass(frozen=True, slots=True)
class Grows:
    """How a resize grows the instance's disks."""

    root: disks.Grow
    data: disks.Grow = disks.Grow.NONE


def check_resize(d: InstanceDir, req: InstanceRequest, volume: Path, host: str,
                 runc: Runc) -> Grows:
    """Refuse, before any change, a resize this instance cannot take live; else say how
    its disks would grow."""
    meta = read_meta(d)
    if meta is None or not d.disk_image.exists():
        raise NotFound(f"instance {req.key} does not exist on host {host}")
    new, old = req.resources, resources_of(meta)
    # The disk is measured mounted (a stopped instance's stays mounted anyway).
    mounts.mount_disk(d.disk_image, d.disk)
    grows = Grows(disks.plan_grow(d.disk_image, d.disk, new.disk,  # refuses a shrink
                                  old.disk if old is not None else None))
    if req.data is not None and volume.exists():
        # Grown as the root disk is. (A data disk it has none of yet comes with its
        # next start.)
        mounts.mount_disk(volume, d.data)
        applied = (meta.get("data") or {}).get("size")
        grows = Grows(grows.root, disks.plan_grow(volume, d.data, req.data.size, applied))
    if runc.state(req.key.id) in (None, "stopped"):
        return grows
    resizing = [name for name, g in (("disk", grows.root), ("data disk", grows.data))
                if g is disks.Grow.RESIZE]
    if resizing and not disks.can_grow_online():
        raise PrereqError(
            f"{req.key}: its {' and '.join(resizing)} cannot grow this far while it runs: "
            "past its headroom the ext4 filesystem itself must grow, and this host's root "
            "lacks CAP_SYS_RESOURCE, which growing a mounted ext4 needs",
            hint="stop the instance and start it again: a stopped disk grows offline")
    used, _ = stats.cgroup_memory(req.key.id)
    if new.memory is not None and used is not None and used > new.memory:
        raise PrereqError(
            f"{req.key} uses {format_size_approx(used)} of memory now: a "
            f"{format_size_approx(new.memory)} limit would not hold (there is no swap)",
            hint="choose a larger limit, or restart the instance with the smaller one")
    return grows


def grow_disk(image: Path, target: Path, size: int, grow: disks.Grow,
              holders: tuple[Path, ...] = ()) -> None:
    """Grow the disk `image` mounted at `target`; `holders` are mounts on top of it."""
    if grow is disks.Grow.RESIZE:
        if mounts.mounted(target) and disks.can_grow_online():
            disks.grow_online(image, target, size)
        else:
            # Not running (resize checked): nothing uses the disk; _start mounts it again.
            for path in (*holders, target):
                mounts.unmount(path)
            disks.grow_offline(image, size)
    if disks.has_headroom(image):
        # Within the (new) ceiling: the reservation is set on the mounted fs, at once.
        mounts.mount_disk(image, target)
        disks.grant(image, target, size)


def mount_data(d: InstanceDir, req: InstanceRequest, volume: Path) -> bool:
    """Mount the instance's data disk at `d.data`, made if missing, else reused as it is
    (grown if `req` asks for more). False if it has none."""
    if req.data is None:
        mounts.unmount(d.data)  # dropped from the role: its disk stays in `volumes`
        return False
    if not volume.exists():
        volume.parent.mkdir(parents=True, exist_ok=True)
        new = volume.with_name(volume.name + ".new")
        disks.make_disk(new, req.data.size)
        os.replace(new, volume)  # whole: a crash in mkfs leaves no half disk to reuse
    mounts.mount_disk(volume, d.data)
    try:
        grow = disks.plan_grow(volume, d.data, req.data.size, None)
    except PrereqError:
        grow = disks.Grow.NONE  # larger than asked: a disk never shrinks, data stays
    if grow is not disks.Grow.NONE:
        grow_disk(volume, d.data, req.data.size, grow)
    return True
