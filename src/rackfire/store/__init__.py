"""Persistence: the controller's SQLite database (WAL) on disk. What it keeps are the
records of model/records.py; what control/ may ask of it is `StateStore` (store/protocol.py),
of which the SQLite `Store` is one."""

from rackfire.model.records import (
    ActionRecord,
    Event,
    InstanceStatus,
    Override,
    Release,
    ReleaseStatus,
    StackRecord,
)
from rackfire.store.db import Store
from rackfire.store.protocol import StateStore

__all__ = ["ActionRecord", "Event", "InstanceStatus", "Override", "Release", "ReleaseStatus",
           "StackRecord", "StateStore", "Store"]
