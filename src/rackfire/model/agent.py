"""The one declared table of calls from the controller to a host's agent (CALLS, HostAgent),
the server's image service, and the streams (disks, logs, exec) a host serves beside it.

Every call either returns its result, raises a RackfireError subclass for a failed call, or
raises AgentOffline when the host could not be asked at all: offline is not failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
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


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    name: str  # disk.img (the root disk) or data.img (its data disk)
    size: int  # bytes, as the instance sees its disk image
    used: int  # bytes the copy holds (shared extents counted, so not what it adds)


@dataclass(frozen=True, slots=True)
class SnapshotPart:
    """One instance's share of a snapshot, on the host that took it."""

    key: InstanceKey
    disks: tuple[SnapshotDisk, ...]  # none for a runtime without disks of its own
    method: str  # reflink | copy (runtime/freeze.py)
    frozen_ms: float  # how long its filesystems were frozen for the copy
    taken: float  # when they were frozen (the host's clock)


@dataclass(frozen=True, slots=True, repr=False)
class BackupTarget:
    """A backup repository as a host's backup engine needs it: its address, the password
    that encrypts it, and what its backend needs besides (bucket keys). Secret: its repr
    shows the address only, and nothing of it goes to a log, an event or an answer."""

    url: str
    password: str
    env: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"BackupTarget({self.url.split('@')[-1]!r})"


@dataclass(frozen=True, slots=True)
class BackedUp:
    """One instance's disks, sent from a snapshot on this host to a repository."""

    instance: str  # its name in the stack: `db-0`
    archive: str  # the repository's id of what holds them (a restic snapshot)
    size: int  # bytes sent: the data its disks hold, with the stream's framing


@dataclass(frozen=True, slots=True)
class Call:
    """One call of the table: how long a caller waits for it, and what it changes."""

    timeout: float  # seconds, the answer included
    # It changes the host: it carries the host's epoch (an agent refuses a stale one) and the
    # action id it is part of.
    mutating: bool = False
    # It may change what `observe` reports (an instance made, stopped, gone...): counted in
    # `Observed.done`, so cached facts from before it are not taken for the truth after it.
    # (A network, names or ports set again change no instance's facts.)
    changes_instances: bool = False
    waits: str = ""  # an argument of seconds the call may spend on top (a stop timeout)


def _sets(timeout: float) -> Call:
    """A call that changes the host but no instance's facts."""
    return Call(timeout, mutating=True)


def _changes(timeout: float, waits: str = "") -> Call:
    """A call that may change an instance."""
    return Call(timeout, mutating=True, changes_instances=True, waits=waits)

# Every call a host's agent serves, whatever the transport (agent/rpc.py over HTTP for a
# joined host, agent/inprocess.py for the server's own). tests/unit/test_host_seam.py
# checks that it names exactly the methods of HostAgent.
CALLS: dict[str, Call] = {
    "info": Call(10),
    "observe": Call(30),
    "create": _changes(600),  # may unpack an image and make its disks
    "reconfigure": _changes(300),
    "restart": _changes(300),
    "destroy": _changes(60, waits="stop_timeout"),
    "stop": _changes(60, waits="stop_timeout"),
    "resize": _changes(300),  # may grow a disk
    "check_resize": Call(30),
    "reload": _changes(60),
    "stats": Call(30),
    "capacity": Call(30),
    "facts": Call(30),
    "ensure_network": _sets(60),
    "set_hosts": _sets(30),
    "publish": _sets(60),
    "hold_vip": _sets(30),
    "busy_ports": Call(30),
    "teardown_stack": _changes(300),
    "discard_disks": _sets(120),
    "probe": Call(60),  # a check's own timeout is at most 60 s (spec/schema.py)
    "log_tail": Call(30),
    "http_get": Call(10),
    "ensure_layer": _sets(900),  # may fetch a layer of some GB
    "collect_layers": _sets(120),
    "set_aside": _changes(60),
    # Disk copies: reflinks, or sparse copies on a filesystem without them.
    "take_snapshot": _sets(600),
    "remove_snapshot": _sets(120),
    "stage_snapshot": _sets(600),
    # Backups: a snapshot's disks to a repository and back (restic), of some GB.
    "backup_snapshot": _sets(6 * 3600),
    "fetch_backup": _sets(6 * 3600),
    "verify_backup": Call(6 * 3600),
    "forget_backups": _sets(600),
    # Replicated data disks (the streams beside: send_replica, receive_replica).
    "replica_shipped": _sets(30),
    "replica_version": Call(30),
    "stage_replica": _sets(300),
    "drop_replica": _sets(60),
}


# The journal's action a mutating call is part of ("" outside one): set by the executor
# around each action, read by the transport when it stamps the call.
ACTION: ContextVar[str] = ContextVar("rackfire_action", default="")


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a mutating call carries: the epoch the caller knows the host by and the action
    (of the journal) it carries out. Epochs rise when a host comes back after its lease
    lapsed: a call meant for its earlier incarnation is refused there."""

    epoch: int
    action: str = ""


@dataclass(frozen=True, slots=True)
class Observed:
    """A host's instances as it saw them: `done` calls that change instances had finished on
    it (since its agent started, `boot`) before it looked, so these facts reflect them."""

    boot: str
    done: int
    facts: tuple[InstanceFacts, ...]
    stack: str | None = None  # None: every stack on the host


class HostAgent(Protocol):
    """The declared table of calls (CALLS) a host's agent serves."""

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
    def ensure_network(self, net: NetworkConfig) -> None: ...
    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None: ...
    def publish(self, stack: str, ports: list[PublishedPort]) -> None: ...
    # Hold the stack's floating address on this host's underlay ("": release it here).
    def hold_vip(self, stack: str, vip: str) -> None: ...
    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]: ...
    def teardown_stack(self, stack: str, keep_data: bool = False) -> None: ...
    def reload(self, req: InstanceRequest) -> None: ...
    # Remove the instance's data disk and any disks of it received here (the source's copy
    # after a migration, or the target's when one is rolled back); refused while the
    # instance exists on this host.
    def discard_disks(self, key: InstanceKey) -> None: ...
    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]: ...
    # The last lines of an instance's console log, without their stamps (a run's, kept in
    # its history when it ends); "" if it has none here.
    def log_tail(self, key: InstanceKey, lines: int) -> str: ...
    # A GET from inside the instance's network (an appliance's stats on its loopback).
    def http_get(self, key: InstanceKey, url: str) -> str: ...
    # The layer is on this host: present, or fetched from the controller and verified by
    # its digest; NotFound if neither.
    def ensure_layer(self, digest: str) -> None: ...
    # Remove fetched layers that no instance on this host uses; the digests removed.
    def collect_layers(self) -> list[str]: ...
    # Remove the stopped instance, keeping its disks as if received (for adopt_disks).
    def set_aside(self, key: InstanceKey) -> None: ...
    # Freeze the instances' filesystems here, all at once, copy their disks into snapshot
    # `name` of the stack, thaw them. Whole or not at all: a failed one leaves nothing.
    def take_snapshot(self, stack: str, name: str,
                      keys: list[InstanceKey]) -> list[SnapshotPart]: ...
    def remove_snapshot(self, stack: str, name: str) -> None: ...
    # The disks instance `source` had in the snapshot, copied into <incoming>/<key id>/ as
    # if received, for a create of `key` with `adopt_disks`.
    def stage_snapshot(self, key: InstanceKey, stack: str, name: str, source: str) -> None: ...
    # Send the disks of snapshot `name` on this host to the repository, tagged.
    def backup_snapshot(self, stack: str, name: str, repo: BackupTarget,
                        tags: list[str]) -> list[BackedUp]: ...
    # Make snapshot `name` of the stack on this host from the archives (instance, archive).
    def fetch_backup(self, stack: str, name: str, repo: BackupTarget,
                     parts: list[tuple[str, str]]) -> list[SnapshotPart]: ...
    # Check the repository's data and read every archive back, verifying each disk's
    # digest: the bytes read back.
    def verify_backup(self, repo: BackupTarget, archives: list[str]) -> int: ...
    def forget_backups(self, repo: BackupTarget, archives: list[str]) -> None: ...
    # The standby has version `token` of the instance's data disk: the primary's next base.
    def replica_shipped(self, key: InstanceKey, token: str) -> None: ...
    # The version of the instance's data disk the standby copy here holds ("": none).
    def replica_version(self, key: InstanceKey) -> str: ...
    # The standby copy here as the instance's data disk (with a new root disk of
    # `disk_size`), staged for a create with `adopt_disks`: the version it holds.
    def stage_replica(self, key: InstanceKey, disk_size: int) -> str: ...
    def drop_replica(self, key: InstanceKey) -> None: ...


class ImageService(Protocol):
    """Images, app sources and release builds: the server's own host's store, which joined
    hosts fetch layers from (`ensure_layer`)."""

    def store_source(self, tarball: str) -> str: ...
    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary: ...
    def ensure_image(self, spec: ImageSpec) -> ImageSummary: ...
    def check_image(self, spec: ImageSpec) -> None: ...
    def image(self, name: str) -> ImageSummary | None: ...
    def images(self) -> list[ImageSummary]: ...
    def remove_image(self, name: str) -> bool: ...
    def import_image(self, name: str, tarball: str) -> ImageSummary: ...
    # A layer of the store as a tar stream; NotFound, before any byte, if it is not there.
    def layer_stream(self, digest: str) -> Iterator[bytes]: ...


class DiskMover(Protocol):
    """An instance's disks as a byte stream, from a host and into another (a cold migration:
    the controller relays one into the other). Streams, so not in the JSON table of calls.
    The format is `runtime/diskcopy.py`'s; the receiver verifies every disk's size and hash
    and keeps a copy only when whole."""

    # The stopped instance's root disk and data disk; refused while it runs.
    def send_disks(self, key: InstanceKey) -> Iterator[bytes]: ...
    # Kept as <data-dir>/incoming/<id>/ for a create with `adopt_disks`; replaces an earlier one.
    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None: ...
    # A replicated data disk: what changed since version `base` (all of it if the standby
    # has none), from a snapshot taken now on the primary's host (agent/replicas.py).
    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]: ...
    # ... applied to the standby copy on this host, a whole version before and after.
    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class LogStream:
    """An instance's console log as its host streams it: its last lines first (`history`
    bytes of them), then, when following, what it writes next, until it is gone there.
    `close` must be awaited once it is no longer read (it ends the transfer)."""

    history: int
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


class ExecStream(Protocol):
    """A command in an instance on its host, as the frames of the exec websocket
    (streaming.py's protocol), to be relayed as they are."""

    # A connection the host already closed takes nothing more: receive() says it ended.
    async def send(self, frame: str | bytes) -> None: ...
    # The next frame; None once the host closed the connection.
    async def receive(self) -> str | bytes | None: ...
    # Ends the connection; a command still running there is killed.
    async def close(self) -> None: ...


class StreamSource(Protocol):
    """A host's logs and exec, streamed to the API, which relays them: the same for the
    server's own host as for a joined one (a log path or a process handle would mean
    nothing on another machine)."""

    # Refusals (no such instance there, host unreachable) are raised here, before any byte.
    async def log_stream(self, key: InstanceKey, tail: int, follow: bool) -> LogStream: ...
    # Connected, before the first frame (`{"argv": ...}`) is sent.
    async def exec_stream(self, key: InstanceKey) -> ExecStream: ...


class HostLink(HostAgent, DiskMover, StreamSource, Protocol):
    """A host as the controller holds it, whatever the transport: every call, disks, logs
    and exec; its mutating calls stamped (the transport asks its `Stamp` source)."""

    # observe, with what the host had done when it looked (the observed cache keeps these).
    def observed(self, stack: str | None = None) -> Observed: ...
    # (boot, done) as the host's last answer to a mutating call said: an observation that
    # reflects them is one with the same boot and at least this `done`.
    def done(self) -> tuple[str, int]: ...
