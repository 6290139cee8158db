"""Instances: their keys, what the agent observes, and what the controller asks for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rackfire.model.stack import Resources, RuntimeKind


@dataclass(frozen=True, slots=True, order=True)
class InstanceKey:
    stack: str
    role: str
    index: int

    @property
    def name(self) -> str:
        """The instance's hostname inside its stack: `web-3`."""
        return f"{self.role}-{self.index}"

    @property
    def id(self) -> str:
        """Globally unique and filesystem-safe: `shop.web.3` (names cannot contain dots)."""
        return f"{self.stack}.{self.role}.{self.index}"

    def __str__(self) -> str:
        return f"{self.stack}/{self.role}/{self.index}"

    @staticmethod
    def parse_id(text: str) -> InstanceKey:
        stack, role, index = text.split(".")
        return InstanceKey(stack, role, int(index))


class InstanceState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # the command exited; exit_code says how
    PARTIAL = "partial"  # some of its parts exist but it never started (an interrupted create)


class Health(StrEnum):
    UNKNOWN = "unknown"  # no check yet, or no check defined and not running
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    NONE = "-"  # the role has no health check


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What the agent sees on its host for one instance. Written by the agent only."""

    key: InstanceKey
    state: InstanceState
    runtime: RuntimeKind
    host: str
    ip: str | None = None
    spec_hash: str = ""
    spec_fields: tuple[tuple[str, str], ...] = ()  # field -> digest, to say what changed
    config_hash: str = ""
    started_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A stack's private network as one host sees it."""

    stack: str
    subnet: str  # e.g. 10.88.3.0/24
    gateway: str  # the bridge's address on the host
    prefix: int


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    """Everything an agent needs to make one instance exist, exactly as planned."""

    key: InstanceKey
    action_id: str
    runtime: RuntimeKind
    image_digest: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    resources: Resources
    files: tuple[tuple[str, str], ...]  # rendered: absolute path -> content
    ip: str
    network: NetworkConfig
    spec_hash: str
    spec_fields: tuple[tuple[str, str], ...]
    config_hash: str
