"""The controller's half of the call table, whatever carries it: each HostAgent call made
through one `_send(name, kwargs, stamp)`, which a transport implements (agent/remote.py over
HTTP, agent/inprocess.py for the server's own host). Mutating calls are stamped with the
host's epoch and the action being carried out (`ACTION`, set by the executor), and what the
host says it has done is tracked, for the observed cache's freshness (control/observed.py).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from rackfire.model.agent import (
    ACTION,
    CALLS,
    BackedUp,
    BackupTarget,
    HostCapacity,
    HostInfo,
    InstanceStats,
    Observed,
    PublishedPort,
    SnapshotPart,
    Stamp,
)
from rackfire.model.host import HostFacts
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, HealthSpec, PortMap

Epoch = Callable[[], int]
"""The epoch the controller knows the host by now."""


class TableClient(ABC):
    """HostAgent, call for call, through `_send`; `done()` and `observed()` for the cache."""

    def __init__(self, epoch: Epoch) -> None:
        self._epoch = epoch
        self._lock = threading.Lock()
        self._boot = ""
        self._floor: int | None = 0  # None: a mutating call failed; the next look says

    @abstractmethod
    def _send(self, call: str, kwargs: dict[str, Any], stamp: Stamp) -> tuple[Any, str, int]:
        """(result, the host's boot, its `done` after a call that changes instances / before
        any other): the transport's one job."""

    def _c(self, call: str, **kwargs: Any) -> Any:
        spec = CALLS[call]
        stamp = Stamp(self._epoch(), ACTION.get()) if spec.mutating else Stamp(0)
        try:
            result, boot, done = self._send(call, kwargs, stamp)
        except Exception:
            if spec.changes_instances:
                self._failed()
            raise
        if spec.changes_instances:
            self._saw(boot, done)
        return result

    def _failed(self) -> None:
        with self._lock:
            self._floor = None  # a mutating call failed, having changed something or not

    def _saw(self, boot: str, done: int) -> None:
        with self._lock:
            if boot != self._boot:  # the agent restarted: its count began again
                self._boot, self._floor = boot, done
            elif self._floor is not None:
                self._floor = max(self._floor, done)

    def done(self) -> tuple[str, int]:
        """What an observation must reflect: its boot and at least this `done` (-1 after a
        failed call that changes instances: none yet does)."""
        with self._lock:
            return (self._boot, -1) if self._floor is None else (self._boot, self._floor)

    def observed(self, stack: str | None = None) -> Observed:
        facts, boot, done = self._send("observe", {"stack": stack}, Stamp(0))
        with self._lock:
            if boot != self._boot or self._floor is None:
                self._boot, self._floor = boot, done  # everything answered has finished
        return Observed(boot, done, tuple(facts), stack)

    def info(self) -> HostInfo:
        return self._c("info")  # type: ignore[no-any-return]

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return list(self.observed(stack).facts)

    def create(self, req: InstanceRequest) -> None:
        self._c("create", req=req)

    def reconfigure(self, req: InstanceRequest) -> None:
        self._c("reconfigure", req=req)

    def restart(self, req: InstanceRequest) -> None:
        self._c("restart", req=req)

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._c("destroy", key=key, stop_timeout=stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._c("stop", key=key, stop_timeout=stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        self._c("resize", req=req)

    def check_resize(self, req: InstanceRequest) -> None:
        self._c("check_resize", req=req)

    def reload(self, req: InstanceRequest) -> None:
        self._c("reload", req=req)

    def discard_disks(self, key: InstanceKey) -> None:
        self._c("discard_disks", key=key)

    def set_aside(self, key: InstanceKey) -> None:
        self._c("set_aside", key=key)

    def take_snapshot(self, stack: str, name: str,
                      keys: list[InstanceKey]) -> list[SnapshotPart]:
        return self._c("take_snapshot", stack=stack, name=name,  # type: ignore[no-any-return]
                       keys=keys)

    def remove_snapshot(self, stack: str, name: str) -> None:
        self._c("remove_snapshot", stack=stack, name=name)

    def stage_snapshot(self, key: InstanceKey, stack: str, name: str, source: str) -> None:
        self._c("stage_snapshot", key=key, stack=stack, name=name, source=source)

    def backup_snapshot(self, stack: str, name: str, repo: BackupTarget,
                        tags: list[str]) -> list[BackedUp]:
        return self._c("backup_snapshot", stack=stack,  # type: ignore[no-any-return]
                       name=name, repo=repo, tags=tags)

    def fetch_backup(self, stack: str, name: str, repo: BackupTarget,
                     parts: list[tuple[str, str]]) -> list[SnapshotPart]:
        return self._c("fetch_backup", stack=stack,  # type: ignore[no-any-return]
                       name=name, repo=repo, parts=parts)

    def verify_backup(self, repo: BackupTarget, archives: list[str]) -> int:
        return self._c("verify_backup", repo=repo,  # type: ignore[no-any-return]
                       archives=archives)

    def forget_backups(self, repo: BackupTarget, archives: list[str]) -> None:
        self._c("forget_backups", repo=repo, archives=archives)

    def replica_shipped(self, key: InstanceKey, token: str) -> None:
        self._c("replica_shipped", key=key, token=token)

    def replica_version(self, key: InstanceKey) -> str:
        return self._c("replica_version", key=key)  # type: ignore[no-any-return]

    def stage_replica(self, key: InstanceKey, disk_size: int) -> str:
        return self._c("stage_replica", key=key,  # type: ignore[no-any-return]
                       disk_size=disk_size)

    def drop_replica(self, key: InstanceKey) -> None:
        self._c("drop_replica", key=key)

    def stats(self, stack: str) -> list[InstanceStats]:
        return self._c("stats", stack=stack)  # type: ignore[no-any-return]

    def capacity(self) -> HostCapacity:
        return self._c("capacity")  # type: ignore[no-any-return]

    def facts(self, interval: float = 5.0) -> HostFacts:
        return self._c("facts", interval=interval)  # type: ignore[no-any-return]

    def ensure_network(self, net: NetworkConfig) -> None:
        self._c("ensure_network", net=net)

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        self._c("set_hosts", stack=stack, entries=entries)

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        self._c("publish", stack=stack, ports=ports)

    def hold_vip(self, stack: str, vip: str) -> None:
        self._c("hold_vip", stack=stack, vip=vip)

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        return self._c("busy_ports", stack=stack, ports=ports)  # type: ignore[no-any-return]

    def teardown_stack(self, stack: str, keep_data: bool = False) -> None:
        self._c("teardown_stack", stack=stack, keep_data=keep_data)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        return self._c("probe", key=key, ip=ip, health=health)  # type: ignore[no-any-return]

    def http_get(self, key: InstanceKey, url: str) -> str:
        return self._c("http_get", key=key, url=url)  # type: ignore[no-any-return]

    def log_tail(self, key: InstanceKey, lines: int) -> str:
        return self._c("log_tail", key=key, lines=lines)  # type: ignore[no-any-return]

    def ensure_layer(self, digest: str) -> None:
        self._c("ensure_layer", digest=digest)

    def collect_layers(self) -> list[str]:
        return self._c("collect_layers")  # type: ignore[no-any-return]
