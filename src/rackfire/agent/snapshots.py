"""The snapshots this host holds: its instances' disks, frozen and copied at one point.

    <data-dir>/snapshots/<stack>/<name>/<instance name>/disk.img   the root disk
                                                        data.img   its data disk, if any
                                                        part.json  what the copy was

A snapshot is made in `<name>.new/` and renamed once every instance's copy is whole, so a
name that exists holds all of it; an interrupted one is removed by the next try or by
`remove`. The controller's record (store/snapshots.py) says which hosts hold a snapshot.
With the data dir on XFS (reflink=1) or btrfs a copy shares the image's extents: it is made
in milliseconds and stores only what either side writes after it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.model.agent import SnapshotDisk, SnapshotPart
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import NAME_PATTERN
from rackfire.runtime import diskcopy, freeze, mounts
from rackfire.runtime.layout import InstanceDir, instance_dir, read_meta, volume_path

log = logging.getLogger("rackfire.agent")
PART = "part.json"


class HostSnapshots:
    def __init__(self, root: Path, instances: Path, volumes: Path, incoming: Path) -> None:
        self.root = root
        self._instances = instances
        self._volumes = volumes
        self._incoming = incoming

    def take(self, stack: str, name: str, keys: list[InstanceKey]) -> list[SnapshotPart]:
        return self.made(stack, name, lambda staging: self._copy(keys, staging))

    def made(self, stack: str, name: str,
             fill: Callable[[Path], list[SnapshotPart]]) -> list[SnapshotPart]:
        """Snapshot `name` made by `fill` in its staging dir, renamed once it is whole;
        refused if it exists, removed if `fill` fails."""
        final = self.path(stack, name)
        staging = final.with_name(name + ".new")
        if final.exists():
            raise PrereqError(f"snapshot {stack}@{name} already exists on this host")
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier try
        staging.mkdir(parents=True, mode=0o700)
        try:
            parts = fill(staging)
            diskcopy.fsync_path(staging)
            os.rename(staging, final)
            diskcopy.fsync_path(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return parts

    def record_part(self, where: Path, key: InstanceKey, labels: list[str], method: str,
                    frozen_ms: float, taken: float | None = None) -> SnapshotPart:
        """What one instance's copy in `where` is, written beside it (part.json)."""
        taken = time.time() if taken is None else taken
        copies = tuple(SnapshotDisk(label, os.stat(where / label).st_size,
                                    freeze.allocated(where / label)) for label in labels)
        (where / PART).write_text(json.dumps(
            {"id": key.id, "disks": labels, "method": method, "frozen_ms": frozen_ms,
             "taken": taken}))
        return SnapshotPart(key, copies, method if copies else "", frozen_ms, taken)

    def _copy(self, keys: list[InstanceKey], staging: Path) -> list[SnapshotPart]:
        disks: dict[InstanceKey, list[tuple[str, Path, Path | None]]] = {}
        for key in keys:
            d = instance_dir(self._instances, key)
            if read_meta(d) is None:
                raise NotFound(f"instance {key} is not on this host")
            disks[key] = _disks_of(d, volume_path(self._volumes, key))
        held = [(m, img) for found in disks.values() for _, img, m in found if m is not None]
        for m, img in held:
            freeze.settle(m, img)
        methods: dict[InstanceKey, set[str]] = {}
        start = time.time()
        t0 = time.perf_counter()
        with freeze.frozen([m for m, _ in held]):
            for key, found in disks.items():
                (staging / key.name).mkdir()
                methods[key] = {freeze.clone(img, staging / key.name / label)
                                for label, img, _ in found}
        frozen_ms = (time.perf_counter() - t0) * 1000 if held else 0.0
        parts = [self.record_part(staging / key.name, key, [label for label, _, _ in found],
                                  freeze.COPY if freeze.COPY in methods[key] else freeze.REFLINK,
                                  frozen_ms, start)
                 for key, found in disks.items()]
        log.info("snapshot %s: %d instance(s) frozen %.1f ms", staging.name, len(parts),
                 frozen_ms)
        return parts

    def remove(self, stack: str, name: str) -> None:
        path = self.path(stack, name)
        for p in (path, path.with_name(name + ".new")):
            shutil.rmtree(p, ignore_errors=True)
        with_stack = path.parent
        if with_stack.is_dir() and not any(with_stack.iterdir()):
            with_stack.rmdir()

    def remove_stack(self, stack: str) -> None:
        _check(stack, "stack")
        shutil.rmtree(self.root / stack, ignore_errors=True)

    def stage(self, key: InstanceKey, stack: str, name: str, source: str) -> None:
        """Copy `source`'s disks of the snapshot into <incoming>/<key id>/ with the manifest
        a received copy has (runtime/diskcopy.py), replacing an earlier one."""
        _check(source, "instance")
        found = self.path(stack, name) / source
        if not (found / diskcopy.ROOT_DISK).is_file():
            raise NotFound(f"snapshot {stack}@{name} holds no disks of {source} on this host",
                           hint="restore it on the host that took it (`snapshot ls`)")

        def fill(staging: Path) -> None:
            for label in (diskcopy.ROOT_DISK, diskcopy.DATA_DISK):
                if (found / label).is_file():
                    freeze.clone(found / label, staging / label)

        diskcopy.stage(self._incoming / key.id, fill)

    def thaw_all(self) -> None:
        """Thaw every instance filesystem here: an agent that died between a freeze and
        its thaw would leave them blocked until this runs (at its start)."""
        for mount in mounts.mounts_under(self._instances):
            try:
                if freeze.thaw(Path(mount)):
                    log.warning("thawed %s, left frozen by an earlier run", mount)
            except (OSError, ExecError):
                continue  # not a filesystem that freezes (an overlay): nothing to thaw

    def path(self, stack: str, name: str) -> Path:
        _check(stack, "stack")
        _check(name, "snapshot")
        return self.root / stack / name


def _disks_of(d: InstanceDir, volume: Path) -> list[tuple[str, Path, Path | None]]:
    """(label, image, where it is mounted or None) of each disk the instance has."""
    found: list[tuple[str, Path, Path | None]] = []
    for label, image, mount in ((diskcopy.ROOT_DISK, d.disk_image, d.disk),
                                (diskcopy.DATA_DISK, volume, d.data)):
        if image.is_file():
            found.append((label, image, mount if mounts.mounted(mount) else None))
    return found


def _check(name: str, what: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise PrereqError(f"invalid {what} name {name!r}",
                          hint="lowercase letters, digits and hyphens, at most 32")
