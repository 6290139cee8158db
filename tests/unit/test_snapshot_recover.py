"""A server that stopped while it took a snapshot (or sent a backup) fails it when it starts
again, and has the hosts remove what they made of it: nothing stays half-taken."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rackfire.control.backups import BackupCommands
from rackfire.control.snapshots import SnapshotCommands
from rackfire.model.records import Backup, BackupState, Snapshot, SnapshotState
from rackfire.spec import load_stack_text
from rackfire.store import Store

SPEC = """\
stack: s
images: {base: {from: host}}
roles:
  db: {image: base, command: [sleep, "1"]}
"""


def test_a_snapshot_and_a_backup_under_way_at_a_crash_are_failed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    spec = load_stack_text(SPEC, "stack.yaml")
    removed: list[tuple[str, str, str]] = []

    def link(host: str) -> SimpleNamespace:
        return SimpleNamespace(remove_snapshot=lambda stack, name: removed.append(
            (host, stack, name)))

    fleet = SimpleNamespace(holding=lambda stack: {"h1", "h2"}, link=link)
    taking = Snapshot("s", "b1", "s", 1.0, "op", SnapshotState.TAKING, 1, spec, (), ())
    ready = Snapshot("s", "s2", "s", 2.0, "op", SnapshotState.READY, 1, spec, (), ())
    store.snapshots.begin(taking)
    store.snapshots.begin(ready)
    store.backups.begin(Backup("s", "b1", "default", 1.0, "op", BackupState.TAKING, taking))
    snaps = SnapshotCommands(store, fleet, SimpleNamespace())  # type: ignore[arg-type]
    snaps.recover()
    BackupCommands(store, fleet, SimpleNamespace(), snaps).recover()  # type: ignore[arg-type]
    states = {s.name: s.state for s in store.snapshots.of_stack("s")}
    assert states == {"b1": SnapshotState.FAILED, "s2": SnapshotState.READY}
    assert sorted(removed) == [("h1", "s", "b1"), ("h2", "s", "b1")]
    backup = store.backups.get("s", "b1")
    assert backup is not None and backup.state is BackupState.FAILED
    assert "stopped" in backup.error
