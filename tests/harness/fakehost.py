"""FakeHost: a whole host's agent in memory, for driving the controller without root.

Instances are a FakeRuntime's (runtime/fake.py: runs in memory, meta.json on disk as the
real runtimes write it), called the way LocalAgent calls a runtime, with LocalAgent's
dedupe by action id. Networks, names and ports are only remembered; images are a fixed
summary per name; sources, releases, disks and exec are refused (the harness's stacks have
no `app:` and nothing migrates).

What it reports besides: `journal`, every mutating call in order, and `duplicates`, every
create of an instance that already exists whole here (refused as LocalAgent refuses it:
whoever asked had not seen it). A test asserts there were none.

`probe` passes once the instance has run `ready_after` seconds of the clock (per role in
`ready_after_role`). `crasher` (tests/harness/crash.py) is asked before every mutating call.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from rackfire import __version__
from rackfire.errors import Conflict, ExecError, NotFound, PrereqError
from rackfire.model.agent import (
    BackedUp,
    BackupTarget,
    HostCapacity,
    HostInfo,
    ImageSummary,
    InstanceStats,
    PublishedPort,
    SnapshotPart,
)
from rackfire.model.host import HostFacts
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import (
    DEFAULT_STOP_TIMEOUT,
    HealthSpec,
    ImageSource,
    ImageSpec,
    PortMap,
    RuntimeKind,
)
from rackfire.net.attach import Attachment, attachment
from rackfire.runtime import logwriter
from rackfire.runtime.base import ExecHandle, Layer, RootFs
from rackfire.runtime.fake import FakeRuntime
from rackfire.runtime.layout import instance_dir, read_meta, update_meta

from .crash import Crasher

# Verbs that change an instance (the rest of the journal is networks, names and ports,
# which every pass sets again).
INSTANCE_VERBS = frozenset({"create", "destroy", "stop", "restart", "reconfigure", "resize",
                            "reload"})


@dataclass(frozen=True, slots=True)
class Call:
    verb: str
    target: str  # the instance key, or the stack
    action_id: str = ""


class FakeHost:
    def __init__(self, base: Path, clock: Callable[[], float], *, name: str = "fakehost",
                 images: Iterable[str] = ("base",), ready_after: float = 1.0) -> None:
        self.name = name
        self.clock = clock
        self.runtime = FakeRuntime(base / "instances", name, clock=clock)
        self._base = base
        self.ready_after = ready_after
        self.ready_after_role: dict[str, float] = {}
        self._images = {n: _summary(n) for n in images}
        self.journal: list[Call] = []
        self.duplicates: list[str] = []
        self.networks: dict[str, NetworkConfig] = {}
        self.names: dict[str, list[tuple[str, list[str]]]] = {}
        self.ports: dict[str, list[PublishedPort]] = {}
        self.vips: dict[str, str] = {}  # stack -> the floating address held here
        self.underlay = ""  # the network its floating addresses may be on
        self.snapshots: dict[str, set[str]] = {}  # stack -> the snapshots taken here
        self.stats_pages: dict[InstanceKey, str] = {}  # what http_get answers, per instance
        self.crasher = Crasher()
        self._lock = threading.RLock()

    # what a test reads and sets -----------------------------------------------------------

    def calls(self, verbs: Iterable[str] = INSTANCE_VERBS) -> list[Call]:
        wanted = set(verbs)
        with self._lock:
            return [c for c in self.journal if c.verb in wanted]

    def seed(self, req: InstanceRequest, state: str) -> None:
        """An instance that was there before the test's controller: `running`, `stopped`
        (by a stop), `crashed` (exited 1 by itself), `oom` or `partial` (a create that never
        started). Not journalled: no controller made it."""
        rt = self.runtime
        if state == "partial":
            rt.fail("create", req.key)
            with suppress(ExecError):  # the failure asked for: it leaves it half-made
                rt.create(req, *self._inputs(req))
            return
        rt.create(req, *self._inputs(req))
        update_meta(instance_dir(rt.base, req.key), action_id=req.action_id)
        if state == "stopped":
            rt.stop(req.key)
        elif state in ("crashed", "oom"):
            rt.crash(req.key, code=1 if state == "crashed" else 137, oom=state == "oom")
        elif state != "running":
            raise ValueError(f"unknown seed state {state!r}")

    def instances(self, stack: str | None = None) -> dict[InstanceKey, InstanceFacts]:
        return {f.key: f for f in self.observe(stack)}

    # instances --------------------------------------------------------------------------

    def info(self) -> HostInfo:
        return HostInfo(self.name, (RuntimeKind.FAKE,))

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return [f for f in self.runtime.observe() if stack is None or f.key.stack == stack]

    def create(self, req: InstanceRequest) -> None:
        with self._lock, self._mutating("create", str(req.key), req.action_id):
            meta = self._meta(req.key)
            if req.action_id and meta.get("action_id") == req.action_id \
                    and meta.get("phase") == "created":
                return  # carried out already
            if meta.get("phase") == "created":
                self.duplicates.append(f"create {req.key} (action {req.action_id}): made "
                                       f"already by action {meta.get('action_id')!r}")
                raise Conflict(f"instance {req.key} exists on host {self.name} already")
            self.runtime.create(req, *self._inputs(req))
            update_meta(instance_dir(self.runtime.base, req.key), action_id=req.action_id)

    def reconfigure(self, req: InstanceRequest) -> None:
        self._carry_out(req, "reconfigure")

    def restart(self, req: InstanceRequest) -> None:
        self._carry_out(req, "restart")

    def _carry_out(self, req: InstanceRequest, verb: str) -> None:
        with self._lock, self._mutating(verb, str(req.key), req.action_id):
            meta = self._meta(req.key)
            if req.action_id and meta.get("action_id") == req.action_id \
                    and meta.get("phase") == "created":
                return
            getattr(self.runtime, verb)(req, *self._inputs(req))
            update_meta(instance_dir(self.runtime.base, req.key), action_id=req.action_id)

    def reload(self, req: InstanceRequest) -> None:
        with self._lock, self._mutating("reload", str(req.key), req.action_id):
            meta = read_meta(instance_dir(self.runtime.base, req.key))
            if meta is None:
                raise NotFound(f"instance {req.key} does not exist on host {self.name}")
            if req.action_id and meta.get("action_id") == req.action_id:
                return
            self.runtime.reload(req)
            update_meta(instance_dir(self.runtime.base, req.key), action_id=req.action_id)

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        with self._lock, self._mutating("destroy", str(key)):
            self.runtime.destroy(key, stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        with self._lock, self._mutating("stop", str(key)):
            self.runtime.stop(key, stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        with self._lock, self._mutating("resize", str(req.key), req.action_id):
            if req.action_id and self._meta(req.key).get("action_id") == req.action_id:
                return
            self.runtime.resize(req)
            update_meta(instance_dir(self.runtime.base, req.key), action_id=req.action_id)

    def check_resize(self, req: InstanceRequest) -> None:
        self.runtime.check_resize(req)

    def http_get(self, key: InstanceKey, url: str) -> str:
        if key not in self.stats_pages:
            raise ExecError(f"{url}: connection refused")
        return self.stats_pages[key]

    def log_tail(self, key: InstanceKey, lines: int) -> str:
        return logwriter.tail_lines(self.runtime.log_path(key), lines)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        f = self.instances(key.stack).get(key)
        if f is None or f.state is not InstanceState.RUNNING or f.started_at is None:
            return False, "not running"
        wait = self.ready_after_role.get(key.role, self.ready_after)
        if self.clock() - f.started_at < wait:
            return False, f"ready {wait:g}s after it starts"
        return True, ""

    def stats(self, stack: str) -> list[InstanceStats]:
        return self.runtime.stats(sorted(self.instances(stack)))

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        raise PrereqError("the fake host runs no commands")

    def log_path(self, key: InstanceKey) -> str:
        return str(self.runtime.log_path(key))

    # the host ---------------------------------------------------------------------------

    def capacity(self) -> HostCapacity:
        return HostCapacity(cpus=64.0, memory=1 << 40, disk=1 << 44)

    def facts(self, interval: float = 5.0) -> HostFacts:
        return HostFacts(self.capacity(), self.info().runtimes, 0, 0, __version__, interval,
                         ((RuntimeKind.FAKE, self.runtime.caps),), self.underlay,
                         tuple(sorted(self.vips.items())))

    # the stack's network, names and ports -----------------------------------------------

    def ensure_network(self, net: NetworkConfig) -> None:
        with self._lock, self._mutating("ensure_network", net.stack):
            self.networks[net.stack] = net

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        with self._lock, self._mutating("set_hosts", stack):
            self.names[stack] = entries

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        with self._lock, self._mutating("publish", stack):
            self.ports[stack] = ports

    def hold_vip(self, stack: str, vip: str) -> None:
        with self._lock, self._mutating("hold_vip", stack):
            self.vips.pop(stack, None)
            if vip:
                self.vips[stack] = vip

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        return []

    def teardown_stack(self, stack: str, keep_data: bool = False) -> None:
        with self._lock, self._mutating("teardown_stack", stack):
            leftovers = self.observe(stack)
            if leftovers:
                raise PrereqError(f"stack {stack} still has {len(leftovers)} instance(s)")
            for table in (self.networks, self.names, self.ports, self.vips):
                table.pop(stack, None)

    # images, layers, disks --------------------------------------------------------------

    def ensure_image(self, spec: ImageSpec) -> ImageSummary:
        with self._lock:
            return self._images.setdefault(spec.name, _summary(spec.name))

    def check_image(self, spec: ImageSpec) -> None:
        pass

    def image(self, name: str) -> ImageSummary | None:
        return self._images.get(name)

    def images(self) -> list[ImageSummary]:
        return sorted(self._images.values(), key=lambda i: i.name)

    def remove_image(self, name: str) -> bool:
        with self._lock:
            return self._images.pop(name, None) is not None

    def import_image(self, name: str, tarball: str) -> ImageSummary:
        raise PrereqError("the fake host imports no tarballs")

    def store_source(self, tarball: str) -> str:
        raise PrereqError("the fake host keeps no app sources")

    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary:
        raise PrereqError("the fake host builds no releases")

    def ensure_layer(self, digest: str) -> None:
        with self._lock, self._mutating("ensure_layer", digest[:12]):
            pass  # every layer is here: the fake runtime reads none

    def collect_layers(self) -> list[str]:
        return []

    def layer_stream(self, digest: str) -> Iterator[bytes]:
        raise NotFound(f"layer {digest[:12]} is not on the fake host")

    def discard_disks(self, key: InstanceKey) -> None:
        with self._lock, self._mutating("discard_disks", str(key)):
            if self._meta(key):
                raise PrereqError(f"instance {key} exists on host {self.name}")

    def set_aside(self, key: InstanceKey) -> None:
        raise PrereqError("the fake host moves no disks")

    def take_snapshot(self, stack: str, name: str,
                      keys: list[InstanceKey]) -> list[SnapshotPart]:
        """Fake instances have no disks: a snapshot of them holds their names only."""
        with self._lock, self._mutating("take_snapshot", f"{stack}@{name}"):
            missing = [k for k in keys if not self._meta(k)]
            if missing:
                raise NotFound(f"instance {missing[0]} is not on host {self.name}")
            self.snapshots.setdefault(stack, set()).add(name)
            return [SnapshotPart(k, (), "", 0.0, self.clock()) for k in keys]

    def remove_snapshot(self, stack: str, name: str) -> None:
        with self._lock, self._mutating("remove_snapshot", f"{stack}@{name}"):
            self.snapshots.get(stack, set()).discard(name)

    def stage_snapshot(self, key: InstanceKey, stack: str, name: str, source: str) -> None:
        with self._lock, self._mutating("stage_snapshot", str(key)):
            if name not in self.snapshots.get(stack, set()):
                raise NotFound(f"snapshot {stack}@{name} is not on host {self.name}")

    def backup_snapshot(self, stack: str, name: str, repo: BackupTarget,
                        tags: list[str]) -> list[BackedUp]:
        raise PrereqError("the fake host has no backup engine")

    def fetch_backup(self, stack: str, name: str, repo: BackupTarget,
                     parts: list[tuple[str, str]]) -> list[SnapshotPart]:
        raise PrereqError("the fake host has no backup engine")

    def verify_backup(self, repo: BackupTarget, archives: list[str]) -> int:
        raise PrereqError("the fake host has no backup engine")

    def forget_backups(self, repo: BackupTarget, archives: list[str]) -> None:
        raise PrereqError("the fake host has no backup engine")

    def replica_shipped(self, key: InstanceKey, token: str) -> None:
        raise PrereqError("the fake host replicates no disks")

    def replica_version(self, key: InstanceKey) -> str:
        return ""

    def stage_replica(self, key: InstanceKey, disk_size: int) -> str:
        raise PrereqError("the fake host replicates no disks")

    def drop_replica(self, key: InstanceKey) -> None:
        pass

    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        raise PrereqError("the fake host replicates no disks")

    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        raise PrereqError("the fake host replicates no disks")

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        raise PrereqError("the fake host moves no disks")

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        raise PrereqError("the fake host moves no disks")

    # parts ------------------------------------------------------------------------------

    @contextmanager
    def _mutating(self, verb: str, target: str, action_id: str = "") -> Iterator[None]:
        """A crash point before the call (a dead server makes none) and one after it (its
        effect is there, the server did not hear of it); the journal in between."""
        self.crasher.point(f"host.{verb} {target}")
        self.journal.append(Call(verb, target, action_id))
        yield
        self.crasher.point(f"after host.{verb} {target}")

    def _meta(self, key: InstanceKey) -> dict[str, object]:
        return read_meta(instance_dir(self.runtime.base, key)) or {}

    def _inputs(self, req: InstanceRequest) -> tuple[RootFs, Attachment]:
        """What LocalAgent would resolve from its image store: the fake reads no layer, so
        the paths need not exist."""
        digests = [d for d in (req.app_digest, req.image_digest) if d]
        layers = tuple(Layer(d, self._base / "layers" / d) for d in digests)
        hosts = self._base / "stacks" / req.key.stack / "hosts"
        return RootFs(layers, (), hosts), attachment(self.runtime.caps.network, req)


def _summary(name: str) -> ImageSummary:
    digest = hashlib.sha256(f"fake image {name}".encode()).hexdigest()
    return ImageSummary(name, digest, ImageSource.HOST.value, 0.0, 0)
