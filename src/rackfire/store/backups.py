"""Backup repositories (with their secrets: the store is the server's, 0600) and the
backups sent to them. A stack's backups outlive it: a destroy leaves them, so that a
restore can make it again."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rackfire.errors import Conflict
from rackfire.model.records import Backup, BackupPart, BackupState, Repository
from rackfire.store.db import Store
from rackfire.store.snapshots import snapshot_json, snapshot_of


class Repositories:
    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, repo: Repository) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO repositories VALUES (?, ?, ?, ?, ?, ?)",
                       (repo.name, repo.url, repo.password, json.dumps(repo.env),
                        repo.created, repo.actor))

    def get(self, name: str) -> Repository | None:
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM repositories WHERE name=?", (name,)).fetchone()
        return _repository(row) if row else None

    def all(self) -> list[Repository]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM repositories ORDER BY name").fetchall()
        return [_repository(r) for r in rows]

    def drop(self, name: str) -> None:
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM backups WHERE repository=? LIMIT 1",
                          (name,)).fetchone():
                raise Conflict(f"repository {name} holds backups",
                               hint="`rackfire backup rm` them first")
            db.execute("DELETE FROM repositories WHERE name=?", (name,))


class Backups:
    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self, backup: Backup) -> None:
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM backups WHERE stack=? AND name=?",
                          (backup.stack, backup.name)).fetchone():
                raise Conflict(f"backup {backup.ref} already exists",
                               hint="choose another --name")
            db.execute("INSERT INTO backups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (backup.stack, backup.name, backup.repository, backup.created,
                        backup.actor, backup.state.value,
                        json.dumps(snapshot_json(backup.snapshot)),
                        json.dumps([asdict(p) for p in backup.parts]), backup.error))

    def finish(self, stack: str, name: str, state: BackupState,
               parts: tuple[BackupPart, ...], error: str = "") -> None:
        with self.store.tx() as db:
            db.execute("UPDATE backups SET state=?, parts=?, error=? WHERE stack=? AND name=?",
                       (state.value, json.dumps([asdict(p) for p in parts]), error, stack,
                        name))

    def get(self, stack: str, name: str) -> Backup | None:
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM backups WHERE stack=? AND name=?",
                             (stack, name)).fetchone()
        return _backup(row) if row else None

    def of_stack(self, stack: str | None = None) -> list[Backup]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM backups WHERE ? IS NULL OR stack=? "
                              "ORDER BY stack, created", (stack, stack)).fetchall()
        return [_backup(r) for r in rows]

    def drop(self, stack: str, name: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM backups WHERE stack=? AND name=?", (stack, name))


def _repository(r: Any) -> Repository:
    return Repository(r["name"], r["url"], r["password"],
                      tuple(tuple(e) for e in json.loads(r["env"])), r["created"], r["actor"])


def _backup(r: Any) -> Backup:
    return Backup(
        stack=r["stack"], name=r["name"], repository=r["repository"], created=r["created"],
        actor=r["actor"], state=BackupState(r["state"]),
        snapshot=snapshot_of(json.loads(r["snapshot"])),
        parts=tuple(BackupPart(**p) for p in json.loads(r["parts"])), error=r["error"])
