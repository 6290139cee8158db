"""Persistence: the controller's SQLite database (WAL) on disk. What it keeps are the
records of model/records.py."""

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

__all__ = ["ActionRecord", "Event", "InstanceStatus", "Override", "Release", "ReleaseStatus",
           "StackRecord", "Store"]
