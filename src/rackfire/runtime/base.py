"""The runtime seam: one Protocol, capabilities as data, one contract suite for all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rackfire.images.store import ImageInfo
from rackfire.model.agent import ExecHandle, InstanceStats
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RuntimeKind


@dataclass(frozen=True, slots=True)
class Capabilities:
    isolated: bool  # own namespaces, cgroup limits
    disk_limit: bool  # a real cap on what it can write
    own_ip: bool  # its own network namespace and address on the stack network


class Runtime(Protocol):
    kind: RuntimeKind
    caps: Capabilities

    def create(self, req: InstanceRequest, image: ImageInfo, hosts_file: Path,
               app: ImageInfo | None = None) -> None:
        """Make every part of the instance and start it. Repairs a half-made earlier try.
        `app`: the release layer `req.app_digest` names (None if it names none)."""

    def reconfigure(self, req: InstanceRequest, image: ImageInfo, hosts_file: Path,
                    app: ImageInfo | None = None) -> None:
        """Stop it, swap its config layer for `req.files`, start it; same disk and IP."""

    def restart(self, req: InstanceRequest, image: ImageInfo, hosts_file: Path,
                app: ImageInfo | None = None) -> None:
        """Start a stopped instance again on its own disk."""

    def reload(self, req: InstanceRequest) -> None:
        """Write `req.files`' new contents where the running instance reads them (same
        paths), record `req.config_hash`, and have it re-read them (`req.reload`)."""

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop it gracefully, then remove every part; missing parts are fine."""

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL after `stop_timeout`; keeps its disk, config and IP."""

    def resize(self, req: InstanceRequest) -> None:
        """Apply `req.resources` live (cpu, memory, pids; grow the disk online) and record
        `req`'s spec hash. Raises before any change if the disk would shrink."""

    def check_resize(self, req: InstanceRequest) -> object:
        """Raise PrereqError, before any change, if `resize(req)` could not be done live."""

    def stats(self, keys: list[InstanceKey]) -> list[InstanceStats]:
        """Measured usage of each of `keys` that exists."""

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        """Start `argv` inside the running instance, with its environment."""

    def observe(self) -> list[InstanceFacts]:
        """Every instance of this runtime on this host, as found on disk and in the kernel."""

    def netns(self, key: InstanceKey) -> str | None:
        """The network namespace to health-check in; None for the host's."""

    def log_path(self, key: InstanceKey) -> Path:
        """Where the instance's stdout and stderr go."""
