"""A cold migration's disks moved on this host, never copied: a stopped instance's disks
released (unmounted, which writes back what the kernel still holds of them) and set aside in
`<incoming>/<id>/` as if received, and the disks received there taken into an instance (the
root disk into its dir, the data disk to its volume path). Every step is a rename, and can be
repeated after a crash at any point; container.py says when they run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rackfire.errors import NotFound, PrereqError
from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.runtime import diskcopy, mounts
from rackfire.runtime.layout import InstanceDir, rendered_paths
from rackfire.runtime.reload import unlink_beneath
from rackfire.runtime.runc import Runc


def release(runc: Runc, key: InstanceKey, d: InstanceDir, host: str, what: str) -> None:
    """Unmount a stopped instance's overlay and disks (which writes back what the kernel
    still holds of them); refused while it runs."""
    state = runc.state(key.id)
    if state not in (None, "stopped"):
        raise PrereqError(f"instance {key} is {state} on host {host}: its disks are "
                          f"{what} only while it is stopped", hint="stop it first")
    for path in (d.rootfs, d.disk, d.data):
        mounts.unmount(path)


def set_aside(d: InstanceDir, key: InstanceKey, volume: Path, final: Path) -> None:
    """Move the released instance's root disk and data disk (`volume`) into `final`, through
    its staging dir, with a manifest as a received copy has (a disk already moved into the
    staging dir stays there)."""
    staging = diskcopy.staging_dir(final)
    if d.disk_image.exists() or staging.is_dir():
        staging.mkdir(parents=True, exist_ok=True)
        disks: dict[str, object] = {}
        for src, name in ((d.disk_image, diskcopy.ROOT_DISK), (volume, diskcopy.DATA_DISK)):
            if src.exists():
                os.replace(src, staging / name)
            if (staging / name).exists():
                disks[name] = {"size": (staging / name).stat().st_size}
        (staging / diskcopy.MANIFEST).write_text(json.dumps({"id": key.id, "disks": disks}))
        diskcopy.fsync_path(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        diskcopy.fsync_path(final.parent)


def adopt(d: InstanceDir, req: InstanceRequest, arrived: Path, volume: Path,
          host: str) -> None:
    """Take the disks received in `arrived` into the instance, its adoption recorded: the
    dir moves into the instance dir in one rename, then each disk to its place. Its root disk
    is mounted, without the copies of rendered files in its upper dir."""
    staged = d.root / "adopting"
    if arrived.is_dir():  # (again, on a retry: a copy sent again is the newer one)
        shutil.rmtree(staged, ignore_errors=True)
        os.rename(arrived, staged)
        diskcopy.fsync_path(arrived.parent)
    if staged.is_dir():
        _place(d, staged, volume)
    if not d.disk_image.is_file():
        raise NotFound(f"the disks of {req.key} have not arrived on host {host}")
    # As a reconfigure does: copies of rendered files in the upper dir (written by a
    # reload on the source) would hide the config layer this create writes.
    mounts.mount_disk(d.disk_image, d.disk)
    for file in rendered_paths(req):
        unlink_beneath(d.disk / "upper", file)


def _place(d: InstanceDir, staged: Path, volume: Path) -> None:
    manifest = json.loads((staged / diskcopy.MANIFEST).read_text())
    root, data = staged / diskcopy.ROOT_DISK, staged / diskcopy.DATA_DISK
    if root.exists():
        os.replace(root, d.disk_image)
    if data.exists():
        # Moved even if the role has no data disk now: as on the source, it is kept.
        if volume.exists():
            diskcopy.check_unused(volume)
        volume.parent.mkdir(parents=True, exist_ok=True)
        os.replace(data, volume)
        diskcopy.fsync_path(volume.parent)
    elif diskcopy.DATA_DISK not in manifest["disks"]:
        # It had none on the source: one left here from an earlier time is not its.
        if volume.exists():
            diskcopy.check_unused(volume)
        volume.unlink(missing_ok=True)
    shutil.rmtree(staged)
    diskcopy.fsync_path(d.root)
