"""A host's side of the call table: every transport (agent/rpc.py over HTTP for a joined
host, agent/inprocess.py for the server's own) runs each call through here.

A mutating call carries a `Stamp`: one with an epoch older than the host's is refused
(StaleEpoch) before it touches anything, so a controller's call meant for an incarnation of
this host that was given up on (its lease lapsed, issue 15 moves its instances) cannot act
on it later. A newer epoch is adopted, and kept in `<data-dir>/epoch` so a restarted agent
still refuses the older one. Each call that may change an instance and finished is counted
(`done`): an observation says how many had finished before it looked, so the controller can
tell whether cached facts already reflect its own last call.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rackfire.errors import StaleEpoch
from rackfire.model.agent import CALLS, DiskMover, HostAgent, Observed, Stamp
from rackfire.model.instance import InstanceKey
from rackfire.runtime.base import ExecHandle

log = logging.getLogger("rackfire.agent")
EPOCH_FILE = "epoch"


class Served(HostAgent, DiskMover, Protocol):
    """What a host side serves: the table and the disks (LocalAgent; a test's fake host);
    logs and exec, which the rpc and in-process streams serve beside them."""

    def log_path(self, key: InstanceKey) -> str: ...
    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle: ...


class HostSide:
    def __init__(self, agent: Served, data_dir: Path | None = None) -> None:
        self.agent = agent
        self.boot = secrets.token_hex(8)  # `done` counts from here
        self._path = data_dir / EPOCH_FILE if data_dir is not None else None
        self._lock = threading.Lock()
        self._done = 0
        self._epoch = _read_epoch(self._path)

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def adopt(self, epoch: int) -> None:
        """The controller knows this host by `epoch` now (a heartbeat's answer says so)."""
        with self._lock:
            if epoch <= self._epoch:
                return
            log.info("host epoch %d -> %d", self._epoch, epoch)
            self._epoch = epoch
            if self._path is not None:
                tmp = self._path.with_suffix(".new")
                tmp.write_text(f"{epoch}\n")
                os.replace(tmp, self._path)

    def admit(self, stamp: Stamp) -> None:
        """Refuse a mutating call meant for an earlier incarnation; adopt a later one."""
        with self._lock:
            current = self._epoch
        if stamp.epoch < current:
            raise StaleEpoch(
                f"call for epoch {stamp.epoch} refused: this host is at epoch {current}"
                + (f" (action {stamp.action})" if stamp.action else ""),
                hint="the controller gave this host up and took it back since; its next "
                     "reconcile asks again")
        self.adopt(stamp.epoch)

    def call(self, name: str, kwargs: dict[str, Any], stamp: Stamp) -> tuple[Any, int]:
        """The call's result, and `done` after it (one that changes no instance: before)."""
        spec = CALLS[name]
        if spec.mutating:
            self.admit(stamp)
        if not spec.changes_instances:
            with self._lock:
                done = self._done  # before: what an observe reflects
            return getattr(self.agent, name)(**kwargs), done
        try:
            return getattr(self.agent, name)(**kwargs), self._finished()
        except BaseException:
            self._finished()  # a failed call may have changed something too
            raise

    def _finished(self) -> int:
        with self._lock:
            self._done += 1
            return self._done

    def observed(self, stack: str | None = None) -> Observed:
        with self._lock:
            done = self._done  # read first: what finished before the look is reflected
        return Observed(self.boot, done, tuple(self.agent.observe(stack)), stack)

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        return self.agent.send_disks(key)

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes], stamp: Stamp) -> int:
        self.admit(stamp)
        try:
            self.agent.receive_disks(key, chunks)
        finally:
            done = self._finished()
        return done


def _read_epoch(path: Path | None) -> int:
    try:
        return int(path.read_text()) if path is not None else 0
    except (OSError, ValueError):
        return 0
