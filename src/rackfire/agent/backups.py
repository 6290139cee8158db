"""Backups on this host: a snapshot's disks sent to a repository by restic, and back.

Each instance of the snapshot is one restic snapshot (an *archive*) of one file,
`<stack>.<instance>.rfdisks`: its disks in the stream of runtime/diskcopy.py (only the data
extents, an end marker, a digest per disk), so restic deduplicates, compresses and encrypts
them, and a cut or corrupt archive is refused when it is read back (restic 0.14 saves a cut
stdin as a whole snapshot if its writer dies). Fetching rebuilds the snapshot on this host
in `<data-dir>/snapshots/<stack>/<name>/`, whole or not at all, to be restored from as any
other. Repository passwords and keys reach restic through its environment only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from rackfire.agent.snapshots import HostSnapshots
from rackfire.errors import NotFound, PrereqError
from rackfire.model.agent import BackedUp, BackupTarget, SnapshotPart
from rackfire.model.instance import InstanceKey
from rackfire.runtime import diskcopy
from rackfire.runtime.restic import Repository, Restic

SUFFIX = ".rfdisks"


class HostBackups:
    def __init__(self, snapshots: HostSnapshots, scratch: Path, host: str) -> None:
        self.snapshots = snapshots
        self.scratch = scratch  # restic's cache, and disks read back to be verified
        self.host = host

    def send(self, stack: str, name: str, repo: BackupTarget,
             tags: list[str]) -> list[BackedUp]:
        engine = self._engine(repo)
        engine.init()
        found = self.snapshots.path(stack, name)
        if not found.is_dir():
            raise NotFound(f"snapshot {stack}@{name} is not on host {self.host}")
        out = []
        for inst in sorted(p for p in found.iterdir() if p.is_dir()):
            disks = [(label, inst / label) for label in (diskcopy.ROOT_DISK, diskcopy.DATA_DISK)
                     if (inst / label).is_file()]
            if not disks:
                continue  # a runtime without disks of its own
            sent = _Counted(diskcopy.stream_disks(_instance_id(stack, inst.name), disks))
            archive = engine.backup_stream(sent, _file(stack, inst.name),
                                           [*tags, f"instance:{inst.name}"], self.host)
            out.append(BackedUp(inst.name, archive, sent.bytes))
        return out

    def fetch(self, stack: str, name: str, repo: BackupTarget,
              parts: list[tuple[str, str]]) -> list[SnapshotPart]:
        engine = self._engine(repo)

        def receive(staging: Path) -> list[SnapshotPart]:
            made = []
            for instance, archive in parts:
                received = staging / ".received" / _instance_id(stack, instance)
                diskcopy.write_disks(received, engine.dump(archive, _file(stack, instance)))
                (staging / instance).mkdir()
                labels = []
                for label in (diskcopy.ROOT_DISK, diskcopy.DATA_DISK):
                    if (received / label).is_file():
                        (received / label).rename(staging / instance / label)
                        labels.append(label)
                made.append(self.snapshots.record_part(staging / instance,
                                                       _key(stack, instance), labels,
                                                       "restore", 0.0))
            shutil.rmtree(staging / ".received")
            return made

        return self.snapshots.made(stack, name, receive)

    def verify(self, repo: BackupTarget, archives: list[str]) -> int:
        """restic's check of every pack, then each archive read back whole through the
        disk stream's own checks (sizes, digests, the end): the bytes read."""
        engine = self._engine(repo)
        engine.check(read_data=True)
        files = {s.id: s.paths for s in engine.snapshots(["rackfire"])}
        total = 0
        for archive in archives:
            paths = next((p for i, p in files.items() if i.startswith(archive)), None)
            if not paths:
                raise NotFound(f"archive {archive[:12]} is not in the repository")
            filename = paths[0].lstrip("/")
            stack, instance = filename.removesuffix(SUFFIX).split(".", 1)
            sink = self.scratch / "verify" / _instance_id(stack, instance)
            try:
                counted = _Counted(engine.dump(archive, filename))
                diskcopy.write_disks(sink, counted)
                total += counted.bytes
            finally:
                shutil.rmtree(sink, ignore_errors=True)
        return total

    def forget(self, repo: BackupTarget, archives: list[str]) -> None:
        """Open the repository (made if it is new; an unreachable one, or one the password
        does not open, is refused), then remove the archives."""
        engine = self._engine(repo)
        try:
            engine.init()
        except OSError as e:  # a local path this host cannot even look at (too long, say)
            raise PrereqError(f"backup repository {engine.repo}: {os.strerror(e.errno or 0)}",
                              hint="give a directory this host can make") from None
        if archives:
            engine.remove(archives)

    def _engine(self, repo: BackupTarget) -> Restic:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return Restic(Repository(repo.url, repo.password, repo.env), self.scratch / "cache")


class _Counted:
    """The chunks of a stream, counted as they pass."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.bytes += len(chunk)
            yield chunk


def _file(stack: str, instance: str) -> str:
    return f"{stack}.{instance}{SUFFIX}"


def _key(stack: str, instance: str) -> InstanceKey:
    role, sep, index = instance.rpartition("-")
    if not sep or not index.isdigit():
        raise PrereqError(f"{instance!r} is not an instance name")
    return InstanceKey(stack, role, int(index))


def _instance_id(stack: str, instance: str) -> str:
    return _key(stack, instance).id
