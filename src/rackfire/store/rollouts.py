"""The instances a rollout waits on: made by a rolling action, not yet seen passing their
check. A reconcile never waits inside: the executor writes a row when it has made one,
and every later reconcile of the stack looks whether it passed, failed or ran out of time
(control/rollouts.py), so a slow check holds no worker and a crash of the server loses
no wait."""

from __future__ import annotations

from rackfire.model.instance import InstanceKey
from rackfire.model.records import RolloutWait
from rackfire.store.db import Store


class RolloutWaits:
    def __init__(self, store: Store) -> None:
        self.store = store

    def of_stack(self, stack: str) -> list[RolloutWait]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM rollout_waits WHERE stack=? ORDER BY role, idx",
                              (stack,)).fetchall()
        return [RolloutWait(InstanceKey(stack, r["role"], r["idx"]), r["kind"],
                            r["action_id"], r["since"], r["timeout"]) for r in rows]

    def put(self, wait: RolloutWait) -> None:
        k = wait.key
        with self.store.tx() as db:
            db.execute("INSERT INTO rollout_waits VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                       "(stack, role, idx) DO UPDATE SET kind=excluded.kind, action_id="
                       "excluded.action_id, since=excluded.since, timeout=excluded.timeout",
                       (k.stack, k.role, k.index, wait.kind, wait.action_id, wait.since,
                        wait.timeout))

    def drop(self, key: InstanceKey) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM rollout_waits WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))
