"""Which instance of each primary role (`ha: {primary: true}`) is its primary, and the term
it is in (the term rises at every promotion, so an instance can tell it was demoted); where
each replicated data disk's standby copy is."""

from __future__ import annotations

from rackfire.model.instance import InstanceKey
from rackfire.model.records import Primary, Replica
from rackfire.store.db import Store


class Primaries:
    def __init__(self, store: Store) -> None:
        self.store = store

    def of_stack(self, stack: str) -> dict[str, Primary]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM primaries WHERE stack=?", (stack,)).fetchall()
        return {r["role"]: Primary(r["idx"], r["term"], r["since"]) for r in rows}

    def promote(self, stack: str, role: str, index: int, term: int, since: float) -> bool:
        """Make `index` the role's primary in `term`, if the role is still in `term - 1`
        (or has none yet): False if another promotion came first."""
        with self.store.tx() as db:
            row = db.execute("SELECT term FROM primaries WHERE stack=? AND role=?",
                             (stack, role)).fetchone()
            if (row["term"] if row else 1) != term - 1:  # none yet: term 1, index 0
                return False
            db.execute("INSERT OR REPLACE INTO primaries VALUES (?, ?, ?, ?, ?)",
                       (stack, role, index, term, since))
            return True


class Replicas:
    """Where each replicated data disk's standby copy is (control/replicas.py)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def of_stack(self, stack: str) -> dict[InstanceKey, Replica]:
        with self.store.tx() as db:
            rows = db.execute("SELECT * FROM replicas WHERE stack=?", (stack,)).fetchall()
        out = {}
        for r in rows:
            key = InstanceKey(stack, r["role"], r["idx"])
            out[key] = Replica(key, r["standby"], r["token"], r["taken"], r["shipped"])
        return out

    def put(self, replica: Replica) -> None:
        k = replica.key
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (k.stack, k.role, k.index, replica.standby, replica.token,
                        replica.taken, replica.shipped))

    def drop(self, key: InstanceKey) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM replicas WHERE stack=? AND role=? AND idx=?",
                       (key.stack, key.role, key.index))
