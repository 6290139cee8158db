"""The store: desired stacks (with generations), IP allocations, the action journal, and
the controller's view of each instance's health.

One connection guarded by a lock: SQLite serialises writers anyway, and the controller's
write rate is tiny. WAL lets readers (the API) run while the reconcile loop writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rackfire.errors import Conflict
from rackfire.model.instance import Health, InstanceKey
from rackfire.model.records import (
    ActionRecord,
    ActionState,
    Event,
    InstanceStatus,
    Override,
    Release,
    ReleaseStatus,
    StackRecord,
    StackStatus,
)
from rackfire.model.stack import StackSpec
from rackfire.store.schema import ADDED_COLUMNS, SCHEMA

if TYPE_CHECKING:
    from rackfire.store.protocol import StateStore

EVENTS_KEPT = 100_000  # older events are pruned


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._migrate()
        # Its other tables, each behind its own class (in the modules named); imported here,
        # as they build on this one.
        from rackfire.store.backups import Backups, Repositories
        from rackfire.store.hosts import HostRegistry
        from rackfire.store.placements import Placements
        from rackfire.store.primaries import Primaries, Replicas
        from rackfire.store.rollouts import RolloutWaits
        from rackfire.store.runs import Runs
        from rackfire.store.snapshots import Snapshots

        self.hosts = HostRegistry(self)
        self.placements = Placements(self)
        self.waits = RolloutWaits(self)
        self.snapshots = Snapshots(self)
        self.primaries = Primaries(self)
        self.replicas = Replicas(self)
        self.repositories = Repositories(self)
        self.backups = Backups(self)
        self.runs = Runs(self)

    def _migrate(self) -> None:
        """Columns added after a table was first made, added to existing databases."""
        for table, column, decl in ADDED_COLUMNS:
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # stacks -----------------------------------------------------------------------------

    def put_stack(self, spec: StackSpec, subnet: str, expected_generation: int | None,
                  actor: str = "") -> int:
        """Store a new desired spec; returns its generation. Check-and-set when asked."""
        with self.tx() as db:
            row = db.execute("SELECT generation, deleting FROM stacks WHERE name=?",
                             (spec.name,)).fetchone()
            current = row["generation"] if row else 0
            if row and row["deleting"]:
                raise Conflict(f"stack {spec.name} is being destroyed",
                               hint="wait until `rackfire destroy` finishes, then apply")
            if expected_generation is not None and expected_generation != current:
                raise Conflict(
                    f"stack {spec.name} changed since the plan was made "
                    f"(generation {current}, plan was for {expected_generation})",
                    hint="run plan again and review it",
                )
            gen = current + 1
            db.execute(
                "INSERT INTO stacks (name, spec, generation, subnet, status, updated, actor) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "spec=excluded.spec, generation=excluded.generation, deleting=0, "
                "status='pending', message='', updated=excluded.updated, actor=excluded.actor",
                (spec.name, json.dumps(spec.to_json()), gen, subnet, time.time(), actor),
            )
            # The file is the desired state again: what day-2 commands set is superseded.
            db.execute("DELETE FROM overrides WHERE stack=?", (spec.name,))
            return gen

    def update_spec(self, spec: StackSpec, expected_generation: int,
                    overrides: list[Override]) -> int:
        """A day-2 change (scale, resize) to a stack's desired spec, recorded as overrides
        so that a later plan of the stack file can say where the file disagrees."""
        with self.tx() as db:
            row = db.execute("SELECT generation, deleting FROM stacks WHERE name=?",
                             (spec.name,)).fetchone()
            if row is None or row["deleting"]:
                raise Conflict(f"stack {spec.name} does not exist or is being destroyed")
            if row["generation"] != expected_generation:
                raise Conflict(f"stack {spec.name} changed meanwhile (generation "
                               f"{row['generation']}, expected {expected_generation})",
                               hint="run the command again")
            gen = int(row["generation"]) + 1
            actor = overrides[0].actor if overrides else ""
            db.execute("UPDATE stacks SET spec=?, generation=?, status='pending', message='', "
                       "updated=?, actor=? WHERE name=?",
                       (json.dumps(spec.to_json()), gen, time.time(), actor, spec.name))
            db.executemany(
                "INSERT OR REPLACE INTO overrides (stack, role, field, value, actor, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(spec.name, o.role, o.field, json.dumps(o.value), o.actor, o.time)
                 for o in overrides])
            return gen

    def bump_generation(self, name: str) -> int:
        """A desired-state change outside the spec (an operator's stop, start, restart):
        a new generation, so that waiting for it waits for a reconcile that saw it."""
        with self.tx() as db:
            db.execute("UPDATE stacks SET generation=generation+1, status='pending', "
                       "message='', updated=? WHERE name=?", (time.time(), name))
            row = db.execute("SELECT generation FROM stacks WHERE name=?", (name,)).fetchone()
            return int(row["generation"]) if row else 0

    def overrides(self, stack: str) -> list[Override]:
        return [Override(r["role"], r["field"], json.loads(r["value"]), r["actor"], r["time"])
                for r in self._all("SELECT * FROM overrides WHERE stack=? ORDER BY role, field",
                                   stack)]

    def mark_deleting(self, name: str, keep_data: bool = False) -> int:
        with self.tx() as db:
            db.execute(
                "UPDATE stacks SET deleting=1, generation=generation+1, status='deleting', "
                "keep_data=?, updated=? WHERE name=?", (int(keep_data), time.time(), name))
            row = db.execute("SELECT generation FROM stacks WHERE name=?", (name,)).fetchone()
            return int(row["generation"]) if row else 0

    def forget_stack(self, name: str) -> None:
        """After a destroy: only reached while `deleting` is set, which put_stack refuses."""
        with self.tx() as db:
            row = db.execute("SELECT keep_data FROM stacks WHERE name=?", (name,)).fetchone()
            if not (row and row["keep_data"]):  # snapshots stay with the data disks
                db.execute("DELETE FROM snapshots WHERE stack=?", (name,))
            for table in ("stacks", "ips", "instance_status", "overrides", "releases",
                          "placements", "vnis", "migrations", "rollout_waits", "seeds",
                          "primaries", "replicas", "runs", "run_clock", "run_numbers"):
                col = "name" if table == "stacks" else "stack"
                db.execute(f"DELETE FROM {table} WHERE {col}=?", (name,))  # noqa: S608

    def get_stack(self, name: str) -> StackRecord | None:
        rows = self._all("SELECT * FROM stacks WHERE name=?", name)
        return _stack(rows[0]) if rows else None

    def stacks(self) -> list[StackRecord]:
        return [_stack(r) for r in self._all("SELECT * FROM stacks ORDER BY name")]

    def set_stack_status(self, name: str, generation: int, status: StackStatus, message: str,
                         *, converged: bool = False) -> None:
        """Only for `generation`: a reconcile of an older spec that ends after a newer apply
        must not report on the newer one."""
        with self.tx() as db:
            db.execute(
                "UPDATE stacks SET status=?, message=?, observed_generation=CASE WHEN ? "
                "THEN generation ELSE observed_generation END WHERE name=? AND generation=?",
                (status, message, converged, name, generation))

    # IPs --------------------------------------------------------------------------------

    def ips(self, stack: str) -> dict[InstanceKey, str]:
        return {InstanceKey(stack, r["role"], r["idx"]): r["ip"]
                for r in self._all("SELECT * FROM ips WHERE stack=?", stack)}

    def save_ips(self, allocations: dict[InstanceKey, str]) -> None:
        with self.tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO ips (stack, role, idx, ip) VALUES (?, ?, ?, ?)",
                [(k.stack, k.role, k.index, ip) for k, ip in allocations.items()])

    def release_ip(self, key: InstanceKey) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM ips WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))
            db.execute("DELETE FROM instance_status WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))

    def used_subnets(self) -> set[str]:
        return {r["subnet"] for r in self._all("SELECT subnet FROM stacks")}

    # actions ----------------------------------------------------------------------------

    def record_action(self, rec: ActionRecord) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO actions (id, stack, generation, kind, instance, reason, state, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.stack, rec.generation, rec.kind, rec.instance, rec.reason,
                 rec.state, rec.created))

    def finish_action(self, action_id: str, state: ActionState, error: str = "") -> None:
        with self.tx() as db:
            db.execute("UPDATE actions SET state=?, finished=?, error=? WHERE id=?",
                       (state, time.time(), error, action_id))

    def abandon_unfinished(self) -> int:
        """After a crash: actions recorded but never finished. The next reconcile re-plans
        from what it observes, so these are marked, not replayed."""
        with self.tx() as db:
            cur = db.execute("UPDATE actions SET state='interrupted', finished=? "
                             "WHERE state IN ('pending', 'running')", (time.time(),))
            return cur.rowcount

    def actions(self, stack: str, generation: int | None = None) -> list[ActionRecord]:
        if generation is None:
            rows = self._all("SELECT * FROM actions WHERE stack=? ORDER BY created", stack)
        else:
            rows = self._all("SELECT * FROM actions WHERE stack=? AND generation=? "
                             "ORDER BY created", stack, generation)
        return [ActionRecord(**(dict(r) | {"state": ActionState(r["state"])})) for r in rows]

    # instance status --------------------------------------------------------------------

    def statuses(self, stack: str) -> dict[InstanceKey, InstanceStatus]:
        out = {}
        for r in self._all("SELECT * FROM instance_status WHERE stack=?", stack):
            key = InstanceKey(stack, r["role"], r["idx"])
            out[key] = InstanceStatus(
                key, Health(r["health"]), r["run"], r["fails"], r["checked"], r["restarts"],
                r["last_restart"], r["message"], tuple(json.loads(r["failures"])),
                bool(r["stopped"]), r["failed"], r["restart_requested"])
        return out

    def set_health(self, key: InstanceKey, health: Health, run: float | None, fails: int,
                   message: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO instance_status (stack, role, idx, health, run, fails, checked, "
                "message) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stack, role, idx) DO "
                "UPDATE SET health=excluded.health, run=excluded.run, fails=excluded.fails, "
                "checked=excluded.checked, message=excluded.message",
                (key.stack, key.role, key.index, health.value, run, fails, time.time(),
                 message))

    def note_restart(self, key: InstanceKey, fresh: bool, now: float | None = None,
                     new: bool = False) -> None:
        """A new run starts. After a failure (`fresh` False) it counts towards the restart
        policy; a fresh one (create, replace, reconfigure, an operator's start) clears
        `failed`, and its failures once it has started (`note_started`). A `new` instance
        (made from its spec again: a create or replace) starts its restart count at 0, as a
        new pod does: what an earlier release's runs did is not this one's."""
        now = time.time() if now is None else now
        with self.tx() as db:
            row = self._status_row(db, key)
            failures = json.loads(row["failures"]) if fresh else \
                [*json.loads(row["failures"]), now][-100:]
            db.execute(
                "UPDATE instance_status SET health='starting', run=NULL, fails=0, message='', "
                "restarts=CASE WHEN ? THEN 0 ELSE restarts+? END, last_restart=?, failures=?, "
                "failed=CASE WHEN ? THEN '' ELSE failed END WHERE stack=? AND role=? AND idx=?",
                (new, 0 if fresh else 1, now, json.dumps(failures), fresh, key.stack, key.role,
                 key.index))

    def note_started(self, key: InstanceKey, ok: bool, now: float | None = None) -> None:
        """How a fresh start went: started clears its failures; one that could not even
        start counts as a failure, so the next try backs off (and the policy may fail it)."""
        now = time.time() if now is None else now
        with self.tx() as db:
            row = self._status_row(db, key)
            failures = [] if ok else [*json.loads(row["failures"]), now][-100:]
            db.execute("UPDATE instance_status SET failures=? WHERE stack=? AND role=? "
                       "AND idx=?", (json.dumps(failures), key.stack, key.role, key.index))

    def set_failed(self, key: InstanceKey, reason: str) -> None:
        with self.tx() as db:
            self._status_row(db, key)
            db.execute("UPDATE instance_status SET failed=? WHERE stack=? AND role=? AND idx=?",
                       (reason, key.stack, key.role, key.index))

    def set_operator(self, keys: list[InstanceKey], *, stopped: bool,
                     restart_requested: float | None = None) -> None:
        """`stop` (stopped), `start` (not stopped) or `restart` (not stopped, restart those
        started before `restart_requested`). Each clears failed: an operator acted."""
        with self.tx() as db:
            for key in keys:
                self._status_row(db, key)
                db.execute(
                    "UPDATE instance_status SET stopped=?, failed='', failures='[]', "
                    "restart_requested=COALESCE(?, restart_requested) "
                    "WHERE stack=? AND role=? AND idx=?",
                    (stopped, restart_requested, key.stack, key.role, key.index))

    @staticmethod
    def _status_row(db: sqlite3.Connection, key: InstanceKey) -> sqlite3.Row:
        db.execute("INSERT INTO instance_status (stack, role, idx) VALUES (?, ?, ?) "
                   "ON CONFLICT(stack, role, idx) DO NOTHING", (key.stack, key.role, key.index))
        row: sqlite3.Row = db.execute(
            "SELECT * FROM instance_status WHERE stack=? AND role=? AND idx=?",
            (key.stack, key.role, key.index)).fetchone()
        return row

    # events -----------------------------------------------------------------------------

    # releases ---------------------------------------------------------------------------

    def note_release(self, stack: str, role: str, *, source: str, label: str, layer: str,
                     image: str, image_digest: str, actor: str) -> Release:
        """The release a role's desired spec runs: the version with the same source and
        image if there is one (a rollback deploys it again, under its own number), else a
        new version. Either way it is `deploying` until the role converges on it; a failed
        one stays failed (what fails again is not retried in a loop)."""
        now = time.time()
        with self.tx() as db:
            row = db.execute("SELECT * FROM releases WHERE stack=? AND role=? AND source=? "
                             "AND image_digest=?", (stack, role, source, image_digest)).fetchone()
            if row is not None:
                # A failed one stays failed (no retry loop) until an operator deploys it again.
                status = row["status"] if row["status"] in ("live", "deploying", "failed") \
                    else "deploying"
                if (layer or row["layer"], status) != (row["layer"], row["status"]):
                    # (Every reconcile asks: no write when nothing changed.)
                    db.execute("UPDATE releases SET layer=?, status=?, updated=? WHERE stack=? "
                               "AND role=? AND version=?", (layer or row["layer"], status, now,
                                                            stack, role, row["version"]))
                return self._release(db, stack, role, row["version"])
            top = db.execute("SELECT MAX(version) AS v FROM releases WHERE stack=? AND role=?",
                             (stack, role)).fetchone()
            version = (top["v"] or 0) + 1
            db.execute("INSERT INTO releases (stack, role, version, source, label, layer, image, "
                       "image_digest, actor, created, status, updated) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'deploying', ?)",
                       (stack, role, version, source, label, layer, image, image_digest, actor,
                        now, now))
            return self._release(db, stack, role, version)

    def retry_release(self, stack: str, role: str, source: str) -> None:
        """An operator deploys this source again (push, apply): a failed release of it may
        roll out once more."""
        with self.tx() as db:
            db.execute("UPDATE releases SET status='deploying', reason='', updated=? WHERE "
                       "stack=? AND role=? AND source=? AND status='failed'",
                       (time.time(), stack, role, source))

    @staticmethod
    def _release(db: sqlite3.Connection, stack: str, role: str, version: int) -> Release:
        row = db.execute("SELECT * FROM releases WHERE stack=? AND role=? AND version=?",
                         (stack, role, version)).fetchone()
        return _release(row)

    def releases(self, stack: str, role: str | None = None) -> list[Release]:
        """Newest first."""
        if role is None:
            rows = self._all("SELECT * FROM releases WHERE stack=? ORDER BY role, version DESC",
                             stack)
        else:
            rows = self._all("SELECT * FROM releases WHERE stack=? AND role=? ORDER BY "
                             "version DESC", stack, role)
        return [_release(r) for r in rows]

    def set_release_status(self, stack: str, role: str, version: int, status: ReleaseStatus,
                           reason: str = "") -> None:
        """A release going live retires the one that was."""
        with self.tx() as db:
            if status is ReleaseStatus.LIVE:
                db.execute("UPDATE releases SET status='retired', updated=? WHERE stack=? AND "
                           "role=? AND status='live' AND version<>?",
                           (time.time(), stack, role, version))
            db.execute("UPDATE releases SET status=?, reason=?, updated=? WHERE stack=? AND "
                       "role=? AND version=?",
                       (status.value, reason, time.time(), stack, role, version))

    def add_event(self, actor: str, stack: str, target: str, action: str, result: str,
                  reason: str = "") -> None:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO events (time, actor, stack, target, action, result, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), actor, stack, target, action, result, reason))
            if cur.lastrowid and cur.lastrowid % 1000 == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - EVENTS_KEPT,))

    def events(self, stack: str | None = None, after: int = 0, limit: int = 1000,
               ) -> list[Event]:
        """Events oldest first: with `after` (an event id) the first `limit` after it, to
        page forward; without, the last `limit` (a tail)."""
        where, args = "id > ?", list[Any]([after])
        if stack is not None:
            where += " AND stack = ?"
            args.append(stack)
        order = "ASC" if after else "DESC"
        rows = self._all(f"SELECT * FROM (SELECT * FROM events WHERE {where} "  # noqa: S608
                         f"ORDER BY id {order} LIMIT ?) ORDER BY id", *args, limit)
        return [Event(**dict(r)) for r in rows]


def _release(r: sqlite3.Row) -> Release:
    return Release(**{**dict(r), "status": ReleaseStatus(r["status"])})


def _stack(r: sqlite3.Row) -> StackRecord:
    return StackRecord(
        name=r["name"], spec=StackSpec.from_json(json.loads(r["spec"])),
        generation=r["generation"], observed_generation=r["observed_generation"],
        deleting=bool(r["deleting"]), subnet=r["subnet"], status=StackStatus(r["status"]),
        message=r["message"], updated=r["updated"], actor=r["actor"],
        keep_data=bool(r["keep_data"]))


def _conforms(store: Store) -> StateStore:
    return store  # mypy checks here that the SQLite store is a whole StateStore
