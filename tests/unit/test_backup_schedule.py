"""Scheduled backups: a role's backup is taken once its `every` has passed since its last
ready one, and the retention keeps what restic's forget would (the newest `last`, the newest
of each of the newest hours, days, ...), removing the rest."""

from __future__ import annotations

import calendar
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rackfire.control.backups import BackupCommands, retained
from rackfire.model.instance import Target
from rackfire.model.records import Backup, BackupState, Snapshot, SnapshotState
from rackfire.model.stack import Keep
from rackfire.spec import load_stack_text
from rackfire.store import Store

H = 3600.0
T0 = float(calendar.timegm((2026, 12, 7, 0, 0, 0)))

SPEC = """\
stack: s
images: {base: {from: host}}
roles:
  db:
    image: base
    command: [sleep, "1"]
    backup: {every: 1h, keep: {hourly: 2, daily: 2}}
  web:
    image: base
    command: [sleep, "1"]
"""


def test_retention_keeps_the_newest_of_each_hour_and_day() -> None:
    # Every 30 minutes over two days: 96 backups.
    taken = [(f"b{i}", T0 + i * 1800) for i in range(96)]
    kept = retained(taken, Keep(hourly=2, daily=2))
    # The newest two hours' newest (b95, b93) and the two days' newest (b95 again, b47).
    assert kept == {"b95", "b93", "b47"}
    assert retained(taken, Keep(last=3)) == {"b95", "b94", "b93"}
    assert retained(taken, Keep()) == set()


def test_a_role_is_backed_up_once_its_interval_passed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    spec = load_stack_text(SPEC, "stack.yaml")
    store.put_stack(spec, "10.0.0.0/24", None)
    made: list[tuple[Target, str]] = []
    removed: list[str] = []

    def backup(name: str, created: float) -> Backup:
        snap = Snapshot("s", name, "s/db", created, "schedule", SnapshotState.READY, 1, spec,
                        (), ())
        return Backup("s", name, "default", created, "schedule", BackupState.READY, snap)

    cmds = BackupCommands(store, SimpleNamespace(), SimpleNamespace(),  # type: ignore[arg-type]
                          SimpleNamespace())  # type: ignore[arg-type]
    now = [T0]

    def create(target: Target, repo: str, name: str | None, actor: str) -> Backup:
        made.append((target, repo))
        b = backup(f"b{len(made)}", now[0])
        store.backups.begin(b)
        return b

    def remove(stack: str, name: str, actor: str) -> None:
        removed.append(name)
        store.backups.drop(stack, name)

    cmds.create = create  # type: ignore[method-assign]
    cmds.remove = remove  # type: ignore[method-assign]
    assert cmds.due(now[0]) == ["s@b1"]  # none yet: at once, of the role with a policy
    assert made == [(Target("s", "db"), "default")]
    now[0] += 0.5 * H
    assert cmds.due(now[0]) == []  # within the hour
    for _ in range(5):  # an hour apart from then on: the retention keeps 2 hours, 2 days
        now[0] += H
        cmds.due(now[0])
    assert [b.name for b in store.backups.of_stack("s")] == ["b5", "b6"]
    assert removed == ["b1", "b2", "b3", "b4"]
    assert _failed_are_not_counted(cmds, store, backup, now)


def _failed_are_not_counted(cmds: BackupCommands, store: Store, backup: Any,
                            now: list[float]) -> bool:
    """A failed backup is not the last one: the next look takes it again."""
    now[0] += H
    failed = backup("bad", now[0])
    store.backups.begin(failed)
    store.backups.finish("s", "bad", BackupState.FAILED, (), "host h1: gone")
    return bool(cmds.due(now[0] + 1))
