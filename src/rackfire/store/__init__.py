"""Persistence: the controller's SQLite database (WAL) on disk."""

from rackfire.store.db import (
    ActionRecord,
    Event,
    InstanceStatus,
    Override,
    Release,
    ReleaseStatus,
    StackRecord,
    Store,
)

__all__ = ["ActionRecord", "Event", "InstanceStatus", "Override", "Release", "ReleaseStatus",
           "StackRecord", "Store"]
