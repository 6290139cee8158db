"""The one declared table of calls from the controller to a host's agent.

Every call either returns its result, raises a RackfireError subclass for a failed call, or
raises AgentOffline when the host could not be asked at all: offline is not failed.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # model/host.py builds on HostCapacity from here
    from rackfire.model.host import HostFacts
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import (
    DEFAULT_STOP_TIMEOUT,
    HealthSpec,
    ImageSpec,
    PortMap,
    RuntimeKind,
)


@dataclass(frozen=True, slots=True)
class ImageSummary:
    name: str
    digest: str
    source: str
    created: float
    size_bytes: int


@dataclass(frozen=True, slots=True)
class PublishedPort:
    port: PortMap
    backends: tuple[str, ...]  # ip:port of the role's healthy instances


@dataclass(frozen=True, slots=True)
class HostInfo:
    name: str
    runtimes: tuple[RuntimeKind, ...]  # best first


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What a host can hard-reserve for instances: never more, no overcommit."""

    cpus: float  # cores
    memory: int  # bytes, after what the host keeps for itself
    disk: int  # bytes the instance disks may fill: free space plus what they already hold


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """Measured, not estimated: from the instance's cgroups, its disk and its veth. None where
    the runtime cannot tell (the process runtime has no disk or network of its own)."""

    key: InstanceKey
    cpu_percent: float | None  # 100 = one core, over the last sample window
    memory_used: int | None  # bytes, without reclaimable page cache
    memory_limit: int | None
    disk_used: int | None
    disk_limit: int | None
    net_rx: int | None  # bytes received by the instance
    net_tx: int | None
    pids: int | None
    log_bytes: int | None = None  # its console log on the host, rotated files included


@dataclass(slots=True)
class ExecHandle:
    """A command running inside an instance. With a tty, `master` is the pty's master fd
    (stdin and output both go through it); without, `proc` has stdin/stdout/stderr pipes."""

    proc: subprocess.Popen[bytes]
    master: int | None = None


class Agent(Protocol):
    def info(self) -> HostInfo: ...
    def observe(self, stack: str | None = None) -> list[InstanceFacts]: ...
    def create(self, req: InstanceRequest) -> None: ...
    def reconfigure(self, req: InstanceRequest) -> None: ...
    def restart(self, req: InstanceRequest) -> None: ...
    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None: ...
    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None: ...
    def resize(self, req: InstanceRequest) -> None: ...
    def check_resize(self, req: InstanceRequest) -> None: ...
    def stats(self, stack: str) -> list[InstanceStats]: ...
    def capacity(self) -> HostCapacity: ...
    def facts(self, interval: float = 5.0) -> HostFacts: ...
    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle: ...
    def ensure_network(self, net: NetworkConfig) -> None: ...
    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None: ...
    def publish(self, stack: str, ports: list[PublishedPort]) -> None: ...
    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]: ...
    def teardown_stack(self, stack: str, keep_data: bool = False) -> None: ...
    def reload(self, req: InstanceRequest) -> None: ...
    # Remove the instance's data disk and any disks of it received here (the source's copy
    # after a migration, or the target's when one is rolled back); refused while the
    # instance exists on this host.
    def discard_disks(self, key: InstanceKey) -> None: ...
    def store_source(self, tarball: str) -> str: ...
    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary: ...
    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]: ...
    def log_path(self, key: InstanceKey) -> str: ...
    def ensure_image(self, spec: ImageSpec) -> ImageSummary: ...
    def check_image(self, spec: ImageSpec) -> None: ...
    def image(self, name: str) -> ImageSummary | None: ...
    def images(self) -> list[ImageSummary]: ...
    def remove_image(self, name: str) -> bool: ...
    def import_image(self, name: str, tarball: str) -> ImageSummary: ...
    # The layer is on this host: present, or fetched from the controller and verified by
    # its digest; NotFound if neither.
    def ensure_layer(self, digest: str) -> None: ...
    # Remove fetched layers that no instance on this host uses; the digests removed.
    def collect_layers(self) -> list[str]: ...
    # Remove the stopped instance, keeping its disks as if received (for adopt_disks).
    def set_aside(self, key: InstanceKey) -> None: ...


class DiskMover(Protocol):
    """An instance's disks as a byte stream, from a host and into another (a cold migration:
    the controller relays one into the other). Streams, so not in the JSON table of calls.
    The format is `runtime/diskcopy.py`'s; the receiver verifies every disk's size and hash
    and keeps a copy only when whole."""

    # The stopped instance's root disk and data disk; refused while it runs.
    def send_disks(self, key: InstanceKey) -> Iterator[bytes]: ...
    # Kept as <data-dir>/incoming/<id>/ for a create with `adopt_disks`; replaces an earlier one.
    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None: ...


class HostAgent(Agent, DiskMover, Protocol):
    """A whole host's agent, the server's own or a joined one's: every call, and disks."""


@dataclass(frozen=True, slots=True)
class LogStream:
    """An instance's console log as its host streams it: its last lines first (`history`
    bytes of them), then, when following, what it writes next, until it is gone there.
    `close` must be awaited once it is no longer read (it ends the transfer)."""

    history: int
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


class ExecStream(Protocol):
    """A command in an instance on another host, as the frames of the exec websocket
    (streaming.py's protocol), to be relayed as they are."""

    # A connection the host already closed takes nothing more: receive() says it ended.
    async def send(self, frame: str | bytes) -> None: ...
    # The next frame; None once the host closed the connection.
    async def receive(self) -> str | bytes | None: ...
    # Ends the connection; a command still running there is killed.
    async def close(self) -> None: ...


class StreamSource(Protocol):
    """A joined host's logs and exec, streamed to the controller: a log path or a local
    process handle would mean nothing on the controller's machine."""

    # Refusals (no such instance there, host unreachable) are raised here, before any byte.
    async def log_stream(self, key: InstanceKey, tail: int, follow: bool) -> LogStream: ...
    # Connected, before the first frame (`{"argv": ...}`) is sent.
    async def exec_stream(self, key: InstanceKey) -> ExecStream: ...


class ServerHostAgent(HostAgent, Protocol):
    """The server's own host's agent: its image store is where joined hosts fetch layers."""

    # A layer of the store as a tar stream; NotFound, before any byte, if it is not there.
    def layer_stream(self, digest: str) -> Iterator[bytes]: ...


class JoinedHostAgent(HostAgent, StreamSource, Protocol):
    """A joined host's agent, seen from the server: every call, disks, logs and exec."""
