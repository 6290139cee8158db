"""A host's side of the call table: every transport (agent/rpc.py over HTTP for a joined
host, agent/inprocess.py for the server's own) runs each call through here.

A mutating call carries a `Stamp`: one with an epoch older than the host's is refused
(StaleEpoch) before it touches anything, so a controller's call meant for an incarnation of
this host that was given up on (its lease lapsed, issue 15 moves its instances) cannot act
on it later. A newer epoch is adopted, and kept in `<data-dir>/epoch` so a restarted agent
still refuses the older one. Each call that may change an instance and finished is counted
(`done`): an observation says how many had finished before it looked, so the controller can
tell whether cached facts already reflect its own last call.

Each instance's run has an incarnation (store/placements.py). The host keeps the latest it
was told of per instance (`<data-dir>/incarnations.json`): by a create or restart, or by a
heartbeat's answer naming a copy here as replaced. It refuses to create, restart or
reconfigure an older run (StaleIncarnation), and `sweep` destroys a copy here older than
that, so a host back from a partition removes what was replaced before it serves again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rackfire.errors import StaleEpoch, StaleIncarnation
from rackfire.model.agent import CALLS, DiskMover, HostAgent, Observed, Stamp
from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.runtime.base import ExecHandle

log = logging.getLogger("rackfire.agent")
EPOCH_FILE = "epoch"
RUNS_FILE = "incarnations.json"
RUN_CALLS = ("create", "restart", "reconfigure")  # each starts a run of its instance


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
        self._runs_path = data_dir / RUNS_FILE if data_dir is not None else None
        self._runs: dict[str, int] = _read_runs(self._runs_path)  # instance id -> latest

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
        if name in RUN_CALLS:
            self._admit_run(kwargs["req"])
        if not spec.changes_instances:
            with self._lock:
                done = self._done  # before: what an observe reflects
            return getattr(self.agent, name)(**kwargs), done
        try:
            return getattr(self.agent, name)(**kwargs), self._finished()
        except BaseException:
            self._finished()  # a failed call may have changed something too
            raise

    def _admit_run(self, req: InstanceRequest) -> None:
        """Refuse an older run than the latest this host was told of; note a later one."""
        if not req.incarnation:
            return  # from a controller that issues none (or a test's): nothing to compare
        with self._lock:
            latest = self._runs.get(req.key.id, 0)
        if req.incarnation < latest:
            raise StaleIncarnation(
                f"{req.key} incarnation {req.incarnation} refused: this host was told of "
                f"incarnation {latest}", hint="the instance was placed again since; the "
                "controller's next reconcile asks with its current one")
        self.replaced([(req.key, req.incarnation)])

    def replaced(self, runs: Iterable[tuple[InstanceKey, int]]) -> None:
        """The controller holds these instances at these incarnations (a heartbeat's
        answer names the copies here it replaced): anything older is not to run."""
        with self._lock:
            changed = False
            for key, run in runs:
                if run > self._runs.get(key.id, 0):
                    self._runs[key.id] = run
                    changed = True
            if changed and self._runs_path is not None:
                tmp = self._runs_path.with_suffix(".new")
                tmp.write_text(json.dumps(self._runs))
                os.replace(tmp, self._runs_path)

    def sweep(self) -> list[InstanceKey]:
        """Destroy each copy here of an older run than the latest this host was told of
        (at once: it must not serve); the ones it destroyed."""
        with self._lock:
            runs = dict(self._runs)
        old = [f.key for f in self.agent.observe()
               if f.incarnation and f.incarnation < runs.get(f.key.id, 0)]
        for key in old:
            log.warning("destroying %s: it was replaced by incarnation %d elsewhere", key,
                        runs[key.id])
            self.agent.destroy(key, 0.0)
            self._finished()
        return old

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

    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        return self.agent.send_replica(key, base)

    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes], stamp: Stamp) -> int:
        self.admit(stamp)
        self.agent.receive_replica(key, chunks)
        with self._lock:
            return self._done  # it changes no instance


def _read_runs(path: Path | None) -> dict[str, int]:
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _read_epoch(path: Path | None) -> int:
    try:
        return int(path.read_text()) if path is not None else 0
    except (OSError, ValueError):
        return 0
