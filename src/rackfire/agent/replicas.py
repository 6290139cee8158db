"""Standby copies of data disks (`data: {replicas: 2}`) on this host, both halves:

- as the primary's host: `send(key, base)` freezes the instance's data disk for a moment,
  reflinks it to `<data-dir>/replicas/<id>/next.img`, and streams what changed since
  `base.img`, the version the standby confirmed (runtime/extents.py: FIEMAP on reflinks),
  or all of it when the standby has nothing or another version; `shipped(key, token)`
  makes `next.img` the new `base.img` once the standby has it.
- as the standby's host: `receive(key, chunks)` applies such a stream to
  `<data-dir>/replicas/<id>/standby.img` (atomically: the copy is always a whole version);
  `stage(key, disk_size)` makes the disks a create with `adopt_disks` takes from it (a
  fresh root disk, the standby copy as the data disk) when the instance fails over here.

A version's token is the time its snapshot was taken, in milliseconds: how old the standby
is (the RPO of a failover onto it) follows from it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from rackfire.errors import NotFound
from rackfire.model.instance import InstanceKey
from rackfire.runtime import diskcopy, disks, extents, freeze, mounts
from rackfire.runtime.layout import instance_dir, volume_path

BASE, NEXT, STANDBY = "base.img", "next.img", "standby.img"


class HostReplicas:
    def __init__(self, root: Path, instances: Path, volumes: Path, incoming: Path) -> None:
        self.root = root
        self._instances = instances
        self._volumes = volumes
        self._incoming = incoming

    def send(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        """The delta from version `base` (or all of it) to a snapshot of the data disk."""
        volume = volume_path(self._volumes, key)
        if not volume.is_file():
            raise NotFound(f"instance {key} has no data disk on this host")
        here = self.root / key.id
        here.mkdir(parents=True, exist_ok=True)
        nxt = here / NEXT
        nxt.unlink(missing_ok=True)
        mount = instance_dir(self._instances, key).data
        held = [mount] if mounts.mounted(mount) else []
        if held:
            freeze.settle(mount, volume)
        with freeze.frozen(held):
            taken = time.time()
            freeze.clone(volume, nxt)
        token = str(int(taken * 1000))
        if base and extents.read_token(here / BASE, key.id) == base:
            ranges = extents.changed_ranges(here / BASE, nxt).ranges
        else:
            base, ranges = "", extents.whole_ranges(nxt)
        return extents.send_delta(nxt, ranges, key.id, base, token)

    def shipped(self, key: InstanceKey, token: str) -> None:
        """The standby holds `token`: the snapshot it came from is the next base."""
        here = self.root / key.id
        if not (here / NEXT).is_file():
            return  # already moved (a repeated call)
        os.replace(here / NEXT, here / BASE)
        extents.record_token(here / BASE, key.id, token)

    def receive(self, key: InstanceKey, chunks: Iterable[bytes]) -> str:
        here = self.root / key.id
        here.mkdir(parents=True, exist_ok=True)
        return extents.apply_delta(here / STANDBY, chunks, key.id).token

    def version(self, key: InstanceKey) -> str:
        """The version the standby copy here holds ("" for none)."""
        return extents.read_token(self.root / key.id / STANDBY, key.id) or ""

    def stage(self, key: InstanceKey, disk_size: int) -> str:
        """The standby copy as the instance's data disk and a new root disk, in
        <incoming>/<id>/ as if received, for a create with `adopt_disks`: the version it
        holds."""
        standby = self.root / key.id / STANDBY
        token = self.version(key)
        if not token:
            raise NotFound(f"no whole standby copy of {key}'s data disk on this host")

        def fill(staging: Path) -> None:
            disks.make_disk(staging / diskcopy.ROOT_DISK, disk_size)
            freeze.clone(standby, staging / diskcopy.DATA_DISK)

        diskcopy.stage(self._incoming / key.id, fill)
        return token

    def drop(self, key: InstanceKey) -> None:
        shutil.rmtree(self.root / key.id, ignore_errors=True)

    def drop_stack(self, stack: str) -> None:
        for p in self.root.glob(f"{stack}.*"):
            shutil.rmtree(p, ignore_errors=True)
