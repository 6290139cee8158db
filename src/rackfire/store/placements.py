"""Where each instance runs (the scheduler's decision, kept), each stack's VNI, and the
cold migrations under way.

A placement is written before the instance is created on its host, so a crash between the
two leaves an instance the next reconcile creates where it was meant to be. Each placement
on a host (the first, and each one after its host was lost) issues the instance a new
*incarnation*, from one counter that only rises: the run a host is asked to create carries
it, and a host refuses to create or restart an older one than it was told of
(agent/hostside.py), so a copy a lost host still runs is known for a replaced one. A migration
row is the whole state of a move: the reconcile that finds one completes it or rolls it
back (control/migrate.py)."""

from __future__ import annotations

import sqlite3
import time

from rackfire.errors import Conflict
from rackfire.model.instance import InstanceKey
from rackfire.model.records import Migration
from rackfire.store.db import Store

FIRST_VNI = 4096  # below: left to whatever else the underlay runs
VNI_MAX = (1 << 24) - 1  # VXLAN network ids are 24 bits


class Placements:
    def __init__(self, store: Store) -> None:
        self.store = store

    def of_stack(self, stack: str) -> dict[InstanceKey, str]:
        with self.store.tx() as db:
            rows = db.execute("SELECT role, idx, host FROM placements WHERE stack=?",
                              (stack,)).fetchall()
        return {InstanceKey(stack, r["role"], r["idx"]): r["host"] for r in rows}

    def all(self) -> dict[InstanceKey, str]:
        with self.store.tx() as db:
            rows = db.execute("SELECT stack, role, idx, host FROM placements").fetchall()
        return {InstanceKey(r["stack"], r["role"], r["idx"]): r["host"] for r in rows}

    def host_of(self, key: InstanceKey) -> str | None:
        with self.store.tx() as db:
            row = db.execute("SELECT host FROM placements WHERE stack=? AND role=? AND idx=?",
                             (key.stack, key.role, key.index)).fetchone()
        return None if row is None else str(row["host"])

    def incarnations(self, stack: str | None = None) -> dict[InstanceKey, int]:
        """The run each placed instance is (of `stack`)."""
        with self.store.tx() as db:
            rows = db.execute("SELECT stack, role, idx, incarnation FROM placements WHERE "
                              "? IS NULL OR stack=?", (stack, stack)).fetchall()
        return {InstanceKey(r["stack"], r["role"], r["idx"]): r["incarnation"] for r in rows}

    def incarnation(self, key: InstanceKey) -> int:
        with self.store.tx() as db:
            row = db.execute("SELECT incarnation FROM placements WHERE stack=? AND role=? AND "
                             "idx=?", (key.stack, key.role, key.index)).fetchone()
        return 0 if row is None else int(row["incarnation"])

    def put(self, assignments: dict[InstanceKey, str]) -> dict[InstanceKey, int]:
        """Place each instance on its host; one placed anew, or on another host than it
        was, gets the next incarnation (returned). One placed where it is keeps its own."""
        issued: dict[InstanceKey, int] = {}
        with self.store.tx() as db:
            for k, h in assignments.items():
                row = db.execute("SELECT host FROM placements WHERE stack=? AND role=? AND "
                                 "idx=?", (k.stack, k.role, k.index)).fetchone()
                if row is not None and row["host"] == h:
                    continue
                issued[k] = _next(db, "incarnation")
                db.execute("INSERT INTO placements VALUES (?, ?, ?, ?, ?) ON CONFLICT (stack, "
                           "role, idx) DO UPDATE SET host=excluded.host, "
                           "incarnation=excluded.incarnation",
                           (k.stack, k.role, k.index, h, issued[k]))
        return issued

    def move(self, key: InstanceKey, host: str) -> None:
        """Place the instance on `host` as the run it is (a cold move: stopped on its
        source before it starts on the target): it keeps its incarnation."""
        with self.store.tx() as db:
            _move(db, key, host)

    def drop(self, key: InstanceKey) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM placements WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))

    def vni(self, stack: str) -> int:
        """The stack's VXLAN network id: handed out once, the lowest one free."""
        with self.store.tx() as db:
            row = db.execute("SELECT vni FROM vnis WHERE stack=?", (stack,)).fetchone()
            if row is not None:
                return int(row["vni"])
            used = {int(r["vni"]) for r in db.execute("SELECT vni FROM vnis")}
            vni = next(v for v in range(FIRST_VNI, VNI_MAX) if v not in used)
            db.execute("INSERT INTO vnis VALUES (?, ?)", (stack, vni))
            return vni

    # migrations ---------------------------------------------------------------------------

    def migrations(self, stack: str | None = None) -> list[Migration]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM migrations WHERE ? IS NULL OR stack=? ORDER BY "
                              "started", (stack, stack)).fetchall()
        return [Migration(InstanceKey(r["stack"], r["role"], r["idx"]), r["source"],
                          r["target"], r["step"], r["started"], r["actor"]) for r in rows]

    def start_migration(self, key: InstanceKey, source: str, target: str, actor: str) -> None:
        with self.store.tx() as db:
            try:
                db.execute("INSERT INTO migrations VALUES (?, ?, ?, ?, ?, 'stopping', ?, ?)",
                           (key.stack, key.role, key.index, source, target, time.time(),
                            actor))
            except sqlite3.IntegrityError:
                raise Conflict(f"{key} is being migrated already") from None

    def set_step(self, key: InstanceKey, step: str) -> None:
        with self.store.tx() as db:
            db.execute("UPDATE migrations SET step=? WHERE stack=? AND role=? AND idx=?",
                       (step, key.stack, key.role, key.index))

    def end_migration(self, key: InstanceKey, host: str) -> None:
        """The move is over, one way or the other: the instance is placed on `host`. It
        keeps its incarnation: a cold move stops it on its source before it starts on the
        target, one run that moved."""
        with self.store.tx() as db:
            db.execute("DELETE FROM migrations WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))
            _move(db, key, host)


def _next(db: sqlite3.Connection, counter: str) -> int:
    """The counter's next value: it only rises, whatever rows come and go."""
    db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET "
               "value=value+1", (counter,))
    return int(db.execute("SELECT value FROM counters WHERE name=?",
                          (counter,)).fetchone()["value"])


def _move(db: sqlite3.Connection, key: InstanceKey, host: str) -> None:
    db.execute("INSERT INTO placements (stack, role, idx, host) VALUES (?, ?, ?, ?) ON CONFLICT "
               "(stack, role, idx) DO UPDATE SET host=excluded.host",
               (key.stack, key.role, key.index, host))
