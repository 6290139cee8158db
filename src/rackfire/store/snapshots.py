"""Snapshots (what each one holds and on which hosts) and the seeds a restore plants: the
instances to be made from a snapshot's disks by their next create."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rackfire.errors import Conflict
from rackfire.model.instance import InstanceKey
from rackfire.model.records import (
    Override,
    Release,
    ReleaseStatus,
    Seed,
    Snapshot,
    SnapshotCopy,
    SnapshotState,
)
from rackfire.model.stack import StackSpec
from rackfire.store.db import Store


class Snapshots:
    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self, snap: Snapshot) -> None:
        """Record a snapshot being taken; refused if the stack has one of that name."""
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM snapshots WHERE stack=? AND name=?",
                          (snap.stack, snap.name)).fetchone():
                raise Conflict(f"snapshot {snap.ref} already exists",
                               hint="choose another --name, or `rackfire snapshot rm` it")
            row = snapshot_json(snap)
            db.execute(f"INSERT INTO snapshots ({', '.join(row)}) VALUES "  # noqa: S608
                       f"({', '.join('?' for _ in row)})", tuple(row.values()))

    def finish(self, stack: str, name: str, state: SnapshotState,
               copies: tuple[SnapshotCopy, ...], error: str = "") -> None:
        with self.store.tx() as db:
            db.execute("UPDATE snapshots SET state=?, copies=?, error=? WHERE stack=? AND "
                       "name=?", (state.value, json.dumps([asdict(c) for c in copies]),
                                  error, stack, name))

    def get(self, stack: str, name: str) -> Snapshot | None:
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM snapshots WHERE stack=? AND name=?",
                             (stack, name)).fetchone()
        return snapshot_of(row) if row else None

    def of_stack(self, stack: str | None = None) -> list[Snapshot]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM snapshots WHERE ? IS NULL OR stack=? "
                              "ORDER BY stack, created", (stack, stack)).fetchall()
        return [snapshot_of(r) for r in rows]

    def drop(self, stack: str, name: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM snapshots WHERE stack=? AND name=?", (stack, name))

    def drop_stack(self, stack: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM snapshots WHERE stack=?", (stack,))
            db.execute("DELETE FROM seeds WHERE stack=?", (stack,))

    # seeds ------------------------------------------------------------------------------

    def plant(self, seeds: list[Seed]) -> None:
        with self.store.tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO seeds VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.key.stack, s.key.role, s.key.index, s.snapshot_stack, s.snapshot,
                  s.source, s.host) for s in seeds])

    def seeds(self, stack: str) -> dict[InstanceKey, Seed]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM seeds WHERE stack=?", (stack,)).fetchall()
        out = {}
        for r in rows:
            key = InstanceKey(stack, r["role"], r["idx"])
            out[key] = Seed(key, r["snapshot_stack"], r["snapshot"], r["source"], r["host"])
        return out

    def seeded(self, stack: str, name: str) -> bool:
        """Whether a seed still needs snapshot `name` of `stack`."""
        with self.store.tx() as db:
            return db.execute("SELECT 1 FROM seeds WHERE snapshot_stack=? AND snapshot=? "
                              "LIMIT 1", (stack, name)).fetchone() is not None

    def reap(self, key: InstanceKey) -> None:
        """The seed grew: the instance was made from it, so a later create makes a new one."""
        with self.store.tx() as db:
            db.execute("DELETE FROM seeds WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """A snapshot's record as its table's columns (JSON text for the nested ones)."""
    return {"stack": snap.stack, "name": snap.name, "scope": snap.scope,
            "created": snap.created, "actor": snap.actor, "state": snap.state.value,
            "generation": snap.generation, "spec": json.dumps(snap.spec.to_json()),
            "overrides": json.dumps([asdict(o) for o in snap.overrides]),
            "releases": json.dumps([r.to_json() for r in snap.releases]),
            "copies": json.dumps([asdict(c) for c in snap.copies]), "error": snap.error,
            "temporary": int(snap.temporary)}


def snapshot_of(r: Any) -> Snapshot:
    """A snapshot from its columns (a row, or what snapshot_json made)."""
    return Snapshot(
        stack=r["stack"], name=r["name"], scope=r["scope"], created=r["created"],
        actor=r["actor"], state=SnapshotState(r["state"]), generation=r["generation"],
        spec=StackSpec.from_json(json.loads(r["spec"])),
        overrides=tuple(Override(**o) for o in json.loads(r["overrides"])),
        releases=tuple(Release(**{**x, "status": ReleaseStatus(x["status"])})
                       for x in json.loads(r["releases"])),
        copies=tuple(SnapshotCopy(**{**c, "disks": tuple(tuple(d) for d in c["disks"])})
                     for c in json.loads(r["copies"])),
        error=r["error"], temporary=bool(r["temporary"]))
