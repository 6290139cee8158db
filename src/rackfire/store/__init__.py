"""Persistence: the controller's SQLite database (WAL) on disk."""

from rackfire.store.db import ActionRecord, InstanceStatus, StackRecord, Store

__all__ = ["ActionRecord", "InstanceStatus", "StackRecord", "Store"]
