"""Runs (a job's slots, one-off tasks, `before` tasks) and each job's clock: the latest slot
it has considered. A slot is claimed by inserting its run, which the unique index lets
happen once, and in the same transaction the clock moves past it: a controller that
restarts goes on from there, never running a slot twice."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from rackfire.model.records import ACTIVE_RUNS, Run, RunKind, RunState
from rackfire.store.db import Store

_COLUMNS = ("stack, number, role, kind, state, created, command, slot, timeout, started, "
            "ended, exit_code, signal, host, reason, log, release, actor")


class Runs:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, run: Run, clock: float | None = None) -> Run | None:
        """Insert `run` with the stack's next number; a job's slot run (`run.slot`) only if
        that slot has none yet (else None). `clock`: the job's clock moves on to it."""
        with self.store.tx() as db:
            if run.slot is not None and db.execute(
                    "SELECT 1 FROM runs WHERE stack=? AND role=? AND slot=?",
                    (run.stack, run.role, run.slot)).fetchone():
                return None
            row = db.execute("SELECT last FROM run_numbers WHERE stack=?",
                             (run.stack,)).fetchone()
            number = (row["last"] if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO run_numbers VALUES (?, ?)", (run.stack, number))
            made = replace(run, number=number)
            db.execute(f"INSERT INTO runs ({_COLUMNS}) VALUES ({', '.join('?' * 18)})",  # noqa: S608
                       _row(made))
            if clock is not None:
                _set_clock(db, run.stack, run.role, clock)
        return made

    def set_clock(self, stack: str, role: str, slot: float) -> None:
        with self.store.tx() as db:
            _set_clock(db, stack, role, slot)

    def clock(self, stack: str, role: str) -> float | None:
        with self.store.tx() as db:
            row = db.execute("SELECT last_slot FROM run_clock WHERE stack=? AND role=?",
                             (stack, role)).fetchone()
        return float(row["last_slot"]) if row else None

    def put(self, run: Run) -> None:
        """Its new state (it exists)."""
        with self.store.tx() as db:
            db.execute(f"REPLACE INTO runs ({_COLUMNS}) VALUES ({', '.join('?' * 18)})",  # noqa: S608
                       _row(run))

    def get(self, stack: str, number: int) -> Run | None:
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM runs WHERE stack=? AND number=?",
                             (stack, number)).fetchone()
        return _run(row) if row else None

    def active(self, stack: str) -> list[Run]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM runs WHERE stack=? AND state IN (?, ?) "
                              "ORDER BY number", (stack, *ACTIVE_RUNS)).fetchall()
        return [_run(r) for r in rows]

    def of_stack(self, stack: str, role: str | None = None, limit: int = 100) -> list[Run]:
        """The newest first."""
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM runs WHERE stack=? AND (? IS NULL OR role=?) "
                              "ORDER BY number DESC LIMIT ?",
                              (stack, role, role, limit)).fetchall()
        return [_run(r) for r in rows]

    def prune(self, stack: str, role: str, keep: int) -> None:
        """Forget the role's ended runs past the newest `keep`."""
        with self.store.tx() as db:
            db.execute(
                "DELETE FROM runs WHERE stack=? AND role=? AND state NOT IN (?, ?) AND number "
                "NOT IN (SELECT number FROM runs WHERE stack=? AND role=? AND state NOT IN "
                "(?, ?) ORDER BY number DESC LIMIT ?)",
                (stack, role, *ACTIVE_RUNS, stack, role, *ACTIVE_RUNS, keep))


def _set_clock(db: sqlite3.Connection, stack: str, role: str, slot: float) -> None:
    db.execute("INSERT INTO run_clock VALUES (?, ?, ?) ON CONFLICT (stack, role) DO UPDATE "
               "SET last_slot=MAX(last_slot, excluded.last_slot)", (stack, role, slot))


def _row(r: Run) -> tuple[object, ...]:
    return (r.stack, r.number, r.role, r.kind.value, r.state.value, r.created,
            json.dumps(list(r.command)), r.slot, r.timeout, r.started, r.ended, r.exit_code,
            r.signal, r.host, r.reason, r.log, r.release, r.actor)


def _run(row: sqlite3.Row) -> Run:
    return Run(row["stack"], row["number"], row["role"], RunKind(row["kind"]),
               RunState(row["state"]), row["created"], tuple(json.loads(row["command"])),
               row["slot"], row["timeout"], row["started"], row["ended"], row["exit_code"],
               row["signal"], row["host"], row["reason"], row["log"], row["release"],
               row["actor"])
