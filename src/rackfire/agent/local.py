"""LocalAgent: the agent for the machine the server runs on, called in-process.

Layout under the data dir: `images/` (the layer store), `instances/<id>/` (one dir per
instance, any runtime), `volumes/<stack>/<role>-<index>.img` (data disks: they outlive their
instances, until the stack's teardown), `stacks/<stack>/` (the hosts file bound into every
instance, and the stack's HAProxy config and pidfile).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from rackfire import __version__
from rackfire.agent.backups import HostBackups
from rackfire.agent.probe import http_get, probe, probe_exec
from rackfire.agent.proxy import Proxy
from rackfire.agent.replicas import HostReplicas
from rackfire.agent.snapshots import HostSnapshots
from rackfire.agent.vips import Vips
from rackfire.errors import Conflict, NotFound, PrereqError
from rackfire.images.build import check_image, ensure_image
from rackfire.images.safe_tar import import_tarball
from rackfire.images.store import ImageInfo, ImageStore, check_digest
from rackfire.images.transfer import LayerSource, pack_layer, receive_layer
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
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import (
    DEFAULT_STOP_TIMEOUT,
    NAME_PATTERN,
    HealthSpec,
    ImageSpec,
    PortMap,
    RuntimeKind,
)
from rackfire.net import egress, links, mesh, vxlan
from rackfire.runtime import diskcopy, logwriter, registry, stats
from rackfire.runtime.base import DiskMover, ExecHandle, Fencer, Runtime, inputs
from rackfire.runtime.container import RUNC_ROOT, remove_volumes
from rackfire.runtime.layout import (
    InstanceDir,
    instance_dir,
    list_instance_dirs,
    read_meta,
    update_meta,
    volume_path,
)
from rackfire.runtime.oci import RESOLV_CONF, RESOLV_TEXT

HOST_MEMORY_RESERVE = 512 << 20  # at least; or 5 % of the host's memory, if more
# A fetched layer ensured or used this recently is kept by collect_layers even with no
# instance on it: the create it was fetched for may not have written its meta yet.
LAYER_GRACE = 600.0
MAX_TAIL_LINES = 1000  # of a log_tail


class LocalAgent:
    def __init__(self, data_dir: Path, host: str | None = None,
                 runtimes: tuple[RuntimeKind, ...] | None = None,
                 runc_root: Path = RUNC_ROOT, layer_source: LayerSource | None = None,
                 layer_grace: float = LAYER_GRACE) -> None:
        self.host = host or socket.gethostname()
        self.data_dir = data_dir
        self.store = ImageStore(data_dir / "images")
        self._volumes = data_dir / "volumes"
        self._incoming = data_dir / "incoming"  # disks copied here by a cold migration
        # `runtimes`: the kinds it offers, best first (default: runtime/registry.py's).
        self._order = registry.offered(runtimes)
        # Its own runc root per agent: `runc list` there is this host's containers only
        # (several simulated hosts share one machine's /run).
        self._runtimes: dict[RuntimeKind, Runtime] = registry.build(
            self._order, registry.HostDirs(self.host, data_dir / "instances", self._volumes,
                                           self._incoming, runc_root))
        self._image_lock = threading.Lock()
        self._disk_locks: dict[str, threading.Lock] = {}  # by instance id: receive, discard
        self._disk_locks_lock = threading.Lock()
        # Layers from the controller (a joined host; None on the controller's own host).
        self._layer_source = layer_source
        self._layer_grace = layer_grace
        # collect_layers decides and removes under this lock, and every use of a layer is
        # recorded under it first, so a layer is never collected between its ensure_layer
        # and the create that writes it into the instance's meta.
        self._layers_lock = threading.Lock()
        self._layer_used: dict[str, float] = {}  # digest -> when last ensured or used here
        self.vips = Vips(data_dir / "stacks")  # its `address` is set by a joined agent
        self.snapshots = HostSnapshots(data_dir / "snapshots", data_dir / "instances",
                                       self._volumes, self._incoming)
        self.snapshots.thaw_all()
        self.backups = HostBackups(self.snapshots, data_dir / "backups", self.host)
        self.replicas = HostReplicas(data_dir / "replicas", data_dir / "instances",
                                     self._volumes, self._incoming)

    def info(self) -> HostInfo:
        return HostInfo(self.host, self._order)

    # instances --------------------------------------------------------------------------

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        facts: list[InstanceFacts] = []
        for rt in self._runtimes.values():
            facts += rt.observe()
        return [replace(f, log=self.log_path(f.key)) for f in facts
                if stack is None or f.key.stack == stack]

    def fence_targets(self) -> list[dict[str, Any]]:
        """How the watchdog kills each running instance here whose role self-fences
        (meta `fence`), without this agent (agent/watchdog.py)."""
        kinds = {k.value: k for k in self._runtimes}
        out: list[dict[str, Any]] = []
        for key, d in list_instance_dirs(self.data_dir / "instances"):
            meta = read_meta(d) or {}
            kind = kinds.get(str(meta.get("runtime", "")))
            rt = self._runtimes[kind] if kind is not None else None
            if meta.get("fence") and isinstance(rt, Fencer) \
                    and (target := rt.fence_target(key)) is not None:
                out.append(target)
        return out

    def create(self, req: InstanceRequest) -> None:
        if req.adopt_disks:
            self._mover(self._runtime(req.runtime))  # only a runtime that moves disks adopts
        self._carry_out(req, "create")

    def reconfigure(self, req: InstanceRequest) -> None:
        self._carry_out(req, "reconfigure")

    def restart(self, req: InstanceRequest) -> None:
        self._carry_out(req, "restart")

    def _carry_out(self, req: InstanceRequest, verb: str) -> None:
        """Dedupe by action id: a repeated call for an action already carried out is a no-op."""
        meta = self._meta(req.key)
        if req.action_id and meta.get("action_id") == req.action_id \
                and meta.get("phase") == "created":
            return
        if verb == "create" and meta.get("phase") == "created" and not req.adopt_disks:
            # A whole instance is never made over: whoever asks has not seen it (a host it
            # could not reach), and its disk would be lost.
            raise Conflict(f"instance {req.key} exists on host {self.host} already",
                           hint="it is observed again at the next reconcile")
        runtime = self._runtime(req.runtime)
        self._layers_touched(req.image_digest, req.app_digest)
        # The run it is, for what it writes down (a witness log, a leader's fencing token).
        req = replace(req, env=(*req.env, ("RACKFIRE_INCARNATION", str(req.incarnation))))
        # The runtime says whether it can take a release layer (and that it is the one).
        app = self.store.by_digest(req.app_digest) if req.app_digest else None
        rootfs, net = inputs(runtime, req, self._image(req), self._hosts(req.key.stack), app)
        getattr(runtime, verb)(req, rootfs, net)
        update_meta(self._dir(req.key), action_id=req.action_id, incarnation=req.incarnation,
                    fence=req.fence)

    def reload(self, req: InstanceRequest) -> None:
        if read_meta(self._dir(req.key)) is None:
            raise NotFound(f"instance {req.key} does not exist on host {self.host}")
        if req.action_id and self._meta(req.key).get("action_id") == req.action_id:
            return  # carried out already (as _carry_out dedupes)
        self._runtime_of(req.key).reload(req)
        update_meta(self._dir(req.key), action_id=req.action_id)

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._runtime_of(key).destroy(key, stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._runtime_of(key).stop(key, stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        if req.action_id and self._meta(req.key).get("action_id") == req.action_id:
            return  # carried out already (as _carry_out dedupes)
        self._runtime_of(req.key).resize(req)
        update_meta(self._dir(req.key), action_id=req.action_id)

    def check_resize(self, req: InstanceRequest) -> None:
        self._runtime_of(req.key).check_resize(req)

    def stats(self, stack: str) -> list[InstanceStats]:
        kinds = {k.value: k for k in self._runtimes}
        keys: dict[RuntimeKind, list[InstanceKey]] = {}
        for key, d in list_instance_dirs(self.data_dir / "instances"):
            kind = kinds.get((read_meta(d) or {}).get("runtime", ""))
            if key.stack == stack and kind is not None:
                keys.setdefault(kind, []).append(key)
        # Each runtime waits once for its CPU window: side by side, the call waits once.
        with ThreadPoolExecutor(max_workers=max(1, len(keys))) as pool:
            found = pool.map(lambda kv: self._runtimes[kv[0]].stats(kv[1]), keys.items())
        # Its console log lives beside its disk, outside the `disk` limit: shown apart.
        return sorted((replace(s, log_bytes=logwriter.size(self._dir(s.key).log))
                       for part in found for s in part), key=lambda s: s.key)

    def facts(self, interval: float = 5.0) -> HostFacts:
        """What a heartbeat reports of this host."""
        fs = os.statvfs(self.data_dir)
        underlay = self.vips.underlay()
        return HostFacts(self.capacity(), self.info().runtimes,
                         stats.memory_total() - stats.memory_available(),
                         (fs.f_blocks - fs.f_bfree) * fs.f_frsize, __version__, interval,
                         tuple((k, self._runtimes[k].caps) for k in self._order
                               if k in self._runtimes),
                         underlay[1] if underlay else "",
                         tuple(sorted(self.vips.held().items())) if underlay else ())

    def capacity(self) -> HostCapacity:
        memory = stats.memory_total()
        fs = os.statvfs(self.data_dir)
        # A hard reservation: the disk images already hold some of their size (they are
        # sparse), and what they hold is theirs, not free for new instances.
        # An instance's data disk counts as its own; one kept after its instance went is
        # nobody's reservation, so it is not free either.
        held = sum(stats.allocated(d.disk_image) + stats.allocated(self._volume(key))
                   for key, d in list_instance_dirs(self.data_dir / "instances"))
        # Disks received for an instance moving here (being received, or not yet adopted)
        # are that instance's already.
        held += sum(stats.allocated(p) for p in self._incoming.glob("*/*.img"))
        return HostCapacity(
            cpus=float(os.cpu_count() or 1),
            memory=max(0, memory - max(HOST_MEMORY_RESERVE, memory // 20)),
            disk=fs.f_bavail * fs.f_frsize + held)

    def log_path(self, key: InstanceKey) -> str:
        return str(self._dir(key).log)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        if health.exec:
            argv = list(health.exec)
            return probe_exec(lambda: self.exec(key, argv, tty=False), health.timeout)
        return probe(self._runtime_of(key).netns(key), health)

    def http_get(self, key: InstanceKey, url: str) -> str:
        _check_key(key)
        return http_get(self._runtime_of(key).netns(key), url)

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        if not argv:
            raise PrereqError("no command given", hint="e.g. `rackfire exec shop/web/0 -- sh`")
        if read_meta(self._dir(key)) is None:
            raise NotFound(f"no instance {key} on host {self.host}",
                           hint="`rackfire ps` lists the instances")
        return self._runtime_of(key).exec(key, argv, tty)

    # cold migration: an instance's disks from host to host ------------------------------

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        """The stopped instance's disks as a stream (runtime/diskcopy.py); refused, before
        any byte, while it runs."""
        _check_key(key)
        return self._mover(self._runtime_of(key)).send_disks(key)

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        """Keep the disks of `key` streamed from another host in <data-dir>/incoming/<id>/,
        verified and whole, for a create with `adopt_disks`."""
        _check_key(key)
        if not any(rt.caps.cold_migrate for rt in self._runtimes.values()):
            raise PrereqError(f"host {self.host} has no runtime that adopts disks",
                              hint="cold migration needs the container runtime")
        with self._disks_lock(key):
            diskcopy.write_disks(self._incoming / key.id, chunks)

    def set_aside(self, key: InstanceKey) -> None:
        """Remove the stopped instance, keeping its disks in <data-dir>/incoming/<id>/ as if
        received (moved, not copied): a migration's way back to this host."""
        _check_key(key)
        with self._disks_lock(key):
            self._mover(self._runtime_of(key)).set_aside(key)

    # snapshots: disks frozen and copied on this host (agent/snapshots.py) ---------------

    def take_snapshot(self, stack: str, name: str,
                      keys: list[InstanceKey]) -> list[SnapshotPart]:
        for key in keys:
            _check_key(key)
            if key.stack != stack:
                raise PrereqError(f"instance {key} is not of stack {stack}")
        with contextlib.ExitStack() as held:  # no disk moves under the copy
            for key in sorted(set(keys), key=lambda k: k.id):
                held.enter_context(self._disks_lock(key))
            return self.snapshots.take(stack, name, keys)

    def remove_snapshot(self, stack: str, name: str) -> None:
        self.snapshots.remove(stack, name)

    def stage_snapshot(self, key: InstanceKey, stack: str, name: str, source: str) -> None:
        _check_key(key)
        with self._disks_lock(key):
            self.snapshots.stage(key, stack, name, source)

    def backup_snapshot(self, stack: str, name: str, repo: BackupTarget,
                        tags: list[str]) -> list[BackedUp]:
        return self.backups.send(stack, name, repo, tags)

    def fetch_backup(self, stack: str, name: str, repo: BackupTarget,
                     parts: list[tuple[str, str]]) -> list[SnapshotPart]:
        return self.backups.fetch(stack, name, repo, parts)

    def verify_backup(self, repo: BackupTarget, archives: list[str]) -> int:
        return self.backups.verify(repo, archives)

    def forget_backups(self, repo: BackupTarget, archives: list[str]) -> None:
        self.backups.forget(repo, archives)

    # replicated data disks (agent/replicas.py) ------------------------------------------

    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        _check_key(key)
        with self._disks_lock(key):  # the snapshot; the stream reads its own copy after
            return self.replicas.send(key, base)

    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        _check_key(key)
        self.replicas.receive(key, chunks)

    def replica_shipped(self, key: InstanceKey, token: str) -> None:
        _check_key(key)
        self.replicas.shipped(key, token)

    def log_tail(self, key: InstanceKey, lines: int) -> str:
        _check_key(key)
        return logwriter.tail_lines(self._dir(key).log, min(lines, MAX_TAIL_LINES))

    def replica_version(self, key: InstanceKey) -> str:
        _check_key(key)
        return self.replicas.version(key)

    def stage_replica(self, key: InstanceKey, disk_size: int) -> str:
        _check_key(key)
        with self._disks_lock(key):
            return self.replicas.stage(key, disk_size)

    def drop_replica(self, key: InstanceKey) -> None:
        _check_key(key)
        self.replicas.drop(key)

    def discard_disks(self, key: InstanceKey) -> None:
        """Remove the instance's data disk and what was received of its disks on this host:
        on the source after a migration, on the target when one is rolled back. Refused
        while the instance exists here (they are its disks)."""
        _check_key(key)
        if self._dir(key).root.exists():
            raise PrereqError(f"instance {key} exists on host {self.host}: its disks are "
                              "discarded only after it is destroyed here")
        with self._disks_lock(key):
            diskcopy.discard(self._incoming / key.id, self._volume(key))

    def _disks_lock(self, key: InstanceKey) -> threading.Lock:
        with self._disk_locks_lock:
            return self._disk_locks.setdefault(key.id, threading.Lock())

    def _mover(self, runtime: Runtime) -> DiskMover:
        """`runtime`, as one that moves its instances' disks; refused if it cannot."""
        if not runtime.caps.cold_migrate or not isinstance(runtime, DiskMover):
            raise PrereqError(f"the {runtime.kind} runtime on host {self.host} cannot move "
                              "an instance's disks", hint="cold migration needs the "
                              "container runtime")
        return runtime

    # the stack's network, names and ports -----------------------------------------------

    def ensure_network(self, net: NetworkConfig) -> None:
        self._stack_dir(net.stack).mkdir(parents=True, exist_ok=True)
        hosts = self._hosts(net.stack)
        if not hosts.exists():
            hosts.write_text(_hosts_text([]))
        resolv = hosts.with_name(RESOLV_CONF)
        if not resolv.exists():
            resolv.write_text(RESOLV_TEXT)
        if self._bridged():
            links.ensure_bridge(net.stack, net.gateway, net.prefix)
            if net.vni and net.local_ip:
                vxlan.ensure_vxlan(net.stack, net.vni, net.local_ip,
                                   vxlan.underlay_device(net.local_ip))
                vxlan.set_vxlan_peers(net.stack, list(net.peers))
            if net.vni and net.local_ip and net.host_ip:
                mesh.ensure_mesh_port(net.stack, net.host_ip, net.subnet)
            else:
                mesh.remove_mesh_port(net.stack)
            egress.ensure_egress(net.stack, net.subnet, net.no_egress)

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        path = self._hosts(stack)
        text = _hosts_text(entries)
        if path.exists() and path.read_text() == text:
            return
        # In place, not rename: running instances see the file through a bind mount of
        # this very inode.
        with open(path, "r+" if path.exists() else "w") as f:
            f.write(text)
            f.truncate()

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        # With a host address (ensure_network), HAProxy connects from it: remote instances
        # answer this host, not their own gateway (net/mesh.py).
        source = mesh.mesh_address(stack) if self._bridged() else ""
        Proxy(self._stack_dir(stack), stack).apply(ports, source)

    def hold_vip(self, stack: str, vip: str) -> None:
        if not re.fullmatch(NAME_PATTERN, stack):  # it names the dir of its record
            raise PrereqError(f"invalid stack name {stack!r}")
        self.vips.hold(stack, vip)

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        """The ports another program (or stack) holds; the stack's own are not busy."""
        mine = Proxy(self._stack_dir(stack), stack).bound()
        return [p for p in ports if (p.host_ip, p.host_port) not in mine
                and not _can_bind(p.host_ip, p.host_port)]

    def teardown_stack(self, stack: str, keep_data: bool = False) -> None:
        """Remove what the stack has beside its instances; its data disks too unless
        `keep_data` (a stack of the same name made later finds them again)."""
        if not re.fullmatch(NAME_PATTERN, stack):  # it names dirs this deletes
            raise PrereqError(f"invalid stack name {stack!r}")
        leftovers = self.observe(stack)
        if leftovers:
            raise PrereqError(f"stack {stack} still has {len(leftovers)} instance(s)")
        self.vips.release(stack)
        Proxy(self._stack_dir(stack), stack).stop()
        if self._bridged():
            egress.remove_egress(stack)
            mesh.remove_mesh_port(stack)
            vxlan.remove_vxlan(stack)
            links.delete_bridge(stack)
        shutil.rmtree(self._stack_dir(stack), ignore_errors=True)
        if not keep_data:
            remove_volumes(self._volumes / stack)
            # Disks received or set aside by a migration that did not finish.
            for copy in self._incoming.glob(f"{stack}.*"):
                shutil.rmtree(copy, ignore_errors=True)
            self.snapshots.remove_stack(stack)  # kept, with the data, by a keep_data one
            self.replicas.drop_stack(stack)

    # images -----------------------------------------------------------------------------

    def ensure_image(self, spec: ImageSpec) -> ImageSummary:
        with self._image_lock:
            return _summary(ensure_image(self.store, spec))

    def check_image(self, spec: ImageSpec) -> None:
        """Refuse, before any change, an image that could not be built here."""
        check_image(self.store, spec, f"on host {self.host}")

    def image(self, name: str) -> ImageSummary | None:
        info = self.store.get(name)
        return _summary(info) if info else None

    def images(self) -> list[ImageSummary]:
        return [_summary(i) for i in self.store.list()]

    def remove_image(self, name: str) -> bool:
        info = self.store.get(name)
        if info is None:
            return False
        users = [str(f.key) for f in self.observe() if self._uses(f.key, info.digest)]
        if users:
            raise Conflict(f"image {name} is used by {', '.join(users)}",
                           hint="destroy or change those stacks first")
        return self.store.remove(name)

    def import_image(self, name: str, tarball: str) -> ImageSummary:
        with self._image_lock:
            return _summary(import_tarball(self.store, name, Path(tarball)))

    def store_source(self, tarball: str) -> str:
        """Keep an app's uploaded source tree; its content digest."""
        from rackfire.images.sources import store_source

        return store_source(self.store, Path(tarball))

    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary:
        """The release layer of a source tree on an image, built unless it exists."""
        from rackfire.images.release import build_release

        # Not under _image_lock: a pip install may take minutes, and the builder keeps two
        # builds of one release apart itself (the store's build lock).
        return _summary(build_release(self.store, source_digest, image_digest))

    # layers from the controller ---------------------------------------------------------

    def ensure_layer(self, digest: str) -> None:
        """The layer is in this host's store: there already, or fetched from the controller
        and verified by its digest (images/transfer.py). NotFound if neither; on the
        controller's own host (no layer source) nothing is fetched."""
        check_digest(digest)
        self._layers_touched(digest)  # before the lookup: collect_layers now keeps it
        if self.store.by_digest(digest) is not None:
            return
        if self._layer_source is None:
            raise NotFound(f"image layer {digest[:12]} is not on host {self.host}",
                           hint="build or import the image on this host")
        # Not under _layers_lock: a fetch may take minutes. receive_layer keeps two fetches
        # of one layer apart itself, and a collection cannot see a layer before it is in
        # the store, which then counts as just used.
        receive_layer(self.store, digest, self._layer_source(digest))
        self._layers_touched(digest)

    def collect_layers(self) -> list[str]:
        """Remove the fetched layers that no instance dir on this host names (as its image or
        release layer, whatever its state) and that were not ensured or used in the last
        `layer_grace` seconds; the digests removed. Layers built or imported here, and any
        layer a name points at, are never removed."""
        removed = []
        with self._layers_lock:
            used: set[str] = set()
            for _key, d in list_instance_dirs(self.data_dir / "instances"):
                meta = read_meta(d) or {}
                used.update(v for v in (meta.get("image"), meta.get("app"))
                            if isinstance(v, str) and v)
            now = time.time()
            for info in self.store.fetched_layers():
                last = max(info.created, self._layer_used.get(info.digest, 0.0))
                if info.digest in used or now - last < self._layer_grace:
                    continue
                if self.store.remove_layer(info.digest):
                    removed.append(info.digest)
                self._layer_used.pop(info.digest, None)
        return removed

    def layer_stream(self, digest: str) -> Iterator[bytes]:
        """A layer of this host's store as a tar stream, for a joined host's ensure_layer
        (the server sends it; not an Agent call). NotFound before any byte if it is not here."""
        return pack_layer(self.store, digest)

    def _layers_touched(self, *digests: str) -> None:
        now = time.time()
        with self._layers_lock:
            for d in digests:
                if d:
                    self._layer_used[d] = now

    # helpers ----------------------------------------------------------------------------

    def runtime(self, kind: RuntimeKind) -> Runtime:
        """The `kind` runtime this agent made (a test reaches its FakeRuntime so)."""
        return self._runtime(kind)

    def _bridged(self) -> bool:
        """A runtime here puts instances on the stack's bridge (they have IPs of their own)."""
        return any(rt.caps.own_ip for rt in self._runtimes.values())

    def _runtime(self, kind: RuntimeKind) -> Runtime:
        try:
            return self._runtimes[kind]
        except KeyError:
            raise PrereqError(f"runtime {kind} is not available on host {self.host}",
                              hint="the container runtime needs root and runc") from None

    def _image(self, req: InstanceRequest) -> ImageInfo:
        info = self.store.by_digest(req.image_digest)
        if info is None:
            raise NotFound(f"image {req.image_digest[:12]} is not on host {self.host}")
        return info

    def _uses(self, key: InstanceKey, image_digest: str) -> bool:
        meta = self._meta(key)
        return image_digest in (meta.get("image"), meta.get("app"))

    def _volume(self, key: InstanceKey) -> Path:
        return volume_path(self._volumes, key)

    def _dir(self, key: InstanceKey) -> InstanceDir:
        return instance_dir(self.data_dir / "instances", key)

    def _meta(self, key: InstanceKey) -> dict[str, Any]:
        return read_meta(self._dir(key)) or {}

    def _runtime_of(self, key: InstanceKey) -> Runtime:
        return self._runtime(RuntimeKind(self._meta(key).get("runtime", self._order[0].value)))

    def _stack_dir(self, stack: str) -> Path:
        return self.data_dir / "stacks" / stack

    def _hosts(self, stack: str) -> Path:
        return self._stack_dir(stack) / "hosts"


def _check_key(key: InstanceKey) -> None:
    """A key names dirs and files these calls write and delete: only real names."""
    if not (re.fullmatch(NAME_PATTERN, key.stack) and re.fullmatch(NAME_PATTERN, key.role)
            and key.index >= 0):
        raise PrereqError(f"invalid instance {key}")


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As HAProxy binds: a closed listener's TIME_WAIT connections do not make it busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _hosts_text(entries: list[tuple[str, list[str]]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in entries]
    return "\n".join(lines) + "\n"


def _summary(i: ImageInfo) -> ImageSummary:
    return ImageSummary(i.name, i.digest, i.source, i.created, i.size_bytes)
