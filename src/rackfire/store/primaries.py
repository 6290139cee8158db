"""Which instance of each primary role (`ha: {primary: true}`) is its primary, and the term
it is in: the term rises at every promotion, so an instance can tell it was demoted."""

from __future__ import annotations

from rackfire.model.records import Primary
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
