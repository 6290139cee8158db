"""The container runtime: runc, an overlay root on the instance's own ext4 disk, its own
network namespace on the stack's bridge, cgroup limits.

Every part is named from the instance id (`shop.web.3`): the instance dir, the runc
container, the cgroup `/rackfire/<id>`, the netns `rf-<id>`, the veth. A restarted agent
finds all of them again; `destroy` removes each one whether or not the others exist.

A data disk is named from the key too, `<volumes>/<stack>/<role>-<index>.img`, outside the
instance dir: `destroy` leaves it (a replace or a later create of the key reuses it), and only
`remove_volumes` (the stack's teardown) deletes it.

Cold migration: `send_disks` streams a stopped instance's root disk and data disk
(`diskcopy`); the target host keeps them in `<incoming>/<id>/`, and `create` with
`req.adopt_disks` starts from them instead of a new disk.

Its inputs are neutral (runtime/base.py): the root's read-only layers as a `RootFs`, and a
`VethAttachment` that net/attach.py wires (made sure of at each start, removed by
`destroy`); this module only says when.

The parts: runc.py runs runc (state, start, stop, live limits, exec); growdisks.py checks a
resize and grows the disks, and mounts the data disk; diskmoves.py moves a cold migration's
disks; the disks themselves are disks.py's, their mounts mounts.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
)
from rackfire.model.runtime import Capabilities, NetworkMode
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RuntimeKind
from rackfire.net import attach, names
from rackfire.net.attach import Attachment, VethAttachment, expect_veth
from rackfire.runtime import (
    diskcopy,
    diskmoves,
    disks,
    growdisks,
    logwriter,
    mounts,
    runcstate,
    stats,
)
from rackfire.runtime.base import ExecHandle, RootFs
from rackfire.runtime.growdisks import Grows
from rackfire.runtime.layout import (
    InstanceDir,
    instance_dir,
    list_instance_dirs,
    read_meta,
    remove_instance_dir,
    rendered_paths,
    resources_of,
    run_of,
    swap_config,
    update_meta,
    volume_path,
    write_config_layer,
    write_meta,
)
from rackfire.runtime.oci import oci_config
from rackfire.runtime.reload import (
    begin as begin_reload,
)
from rackfire.runtime.reload import (
    changed_files,
    mode_of,
    trigger,
    unlink_beneath,
    write_beneath,
)
from rackfire.runtime.runc import Runc

RUNC_ROOT = Path("/run/rackfire/runc")
# Mount points runc (or the image) owns: a data disk over one would hide it.
_SYSTEM_PATHS = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf")


class ContainerRuntime:
    kind = RuntimeKind.CONTAINER
    caps = Capabilities(isolated=True, disk_limit=True, network=NetworkMode.VETH, disks=True,
                        app_layers=True, reload=True, exec=True, live_resize=True,
                        cold_migrate=True)

    def __init__(self, base: Path, host: str, runc_root: Path = RUNC_ROOT,
                 volumes: Path | None = None, incoming: Path | None = None) -> None:
        self.base = base
        self.host = host
        self.runc_root = runc_root
        self.runc = Runc(runc_root)
        # Data disks: beside the instance dirs (`<data-dir>/volumes`), not inside them.
        self.volumes = volumes if volumes is not None else base.parent / "volumes"
        # Disks copied here from another host, to be adopted (`<data-dir>/incoming`).
        self.incoming = incoming if incoming is not None else base.parent / "incoming"
        self._cpu = stats.CpuSampler()
        # destroy vs check_resize (API threads): a disk mounted to be measured between
        # destroy's unmount and its rmtree would be emptied by it.
        self._disk_locks: dict[str, threading.RLock] = {}
        self._locks_lock = threading.Lock()
        base.mkdir(parents=True, exist_ok=True)

    def _disk_lock(self, key: InstanceKey) -> threading.RLock:
        with self._locks_lock:
            return self._disk_locks.setdefault(key.id, threading.RLock())

    # the Runtime protocol ---------------------------------------------------------------

    def create(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        d = instance_dir(self.base, req.key)
        # Before any part exists: a refusal changes nothing.
        check_paths(req.files, rootfs)
        check_data_path(req, rootfs)
        _app_layer(req, rootfs, self.host)
        veth = expect_veth(net, self.kind)
        if req.adopt_disks:
            self._adopt_disks(d, req)
        else:
            if d.root.exists():
                self.destroy(req.key)  # a half-made earlier try: start clean
            write_meta(d, req, phase="creating")  # intent first: a crash from here is PARTIAL
            disks.make_disk(d.disk_image, req.resources.disk)
        write_config_layer(d.config, req.files, req.key.name)
        self._start(d, req, rootfs, veth, phase="created")

    def reconfigure(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        check_paths(req.files, rootfs)
        check_data_path(req, rootfs)
        _app_layer(req, rootfs, self.host)
        veth = expect_veth(net, self.kind)
        d = instance_dir(self.base, req.key)
        self.runc.stop(req.key.id, req.stop_timeout)
        mounts.unmount(d.rootfs)  # the lower layer may not change under a mounted overlay
        mounts.mount_disk(d.disk_image, d.disk)
        old = (read_meta(d) or {}).get("files", ())
        for path in {*old, *rendered_paths(req)}:
            # A copy in the upper dir (a reload wrote through the overlay, or the instance
            # changed the file) would hide the config layer's new one.
            unlink_beneath(d.disk / "upper", path)
        swap_config(d, d.config, req, replace_all=True)  # the layer holds nothing else
        self._start(d, req, rootfs, veth)

    def restart(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        _app_layer(req, rootfs, self.host)
        veth = expect_veth(net, self.kind)
        d = instance_dir(self.base, req.key)
        if not req.warm and self._start_warm(d, req, veth):
            return
        self.runc.stop(req.key.id, req.stop_timeout)
        self._start(d, req, rootfs, veth)

    def _start_warm(self, d: InstanceDir, req: InstanceRequest, net: VethAttachment) -> bool:
        """A warm instance's container, made by `runc create` for this very spec, config and
        release and waiting: `runc start` is all its start takes. False if there is none
        such (the start then goes the whole way, removing it first)."""
        meta = read_meta(d) or {}
        made_for = (meta.get("spec_hash"), meta.get("config_hash"), meta.get("app", ""))
        if not meta.get("warm") or not meta.get("warm_pid") or made_for != (
                req.spec_hash, req.config_hash, req.app_digest) \
                or self.runc.state(req.key.id) != "created":
            return False
        if self.runc.call("start", req.key.id, check=False).returncode != 0:
            return False
        update_meta(d, warm=False, started_at=time.time(), pid=meta["warm_pid"])
        attach.announce(net)
        return True

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        d = instance_dir(self.base, key)
        self.runc.stop(key.id, timeout=stop_timeout)
        with self._disk_lock(key):
            mounts.unmount(d.rootfs)
            mounts.unmount(d.disk)
            # The data disk stays (in `volumes`); unmounted first, or rmtree would empty it.
            mounts.unmount(d.data)
            attach.remove(self.caps.network, key.id)
            remove_instance_dir(d)

    def reload(self, req: InstanceRequest) -> None:
        """New contents for the same rendered files while it runs: written through the
        mounted overlay (atomically: the instance reads the old or the new file; the copy in
        the upper dir hides the config layer's, which must not change under a mounted
        overlay and which a reconfigure rewrites, deleting those copies first). With no
        overlay mounted, into the config layer. Then its `reload`."""
        d = instance_dir(self.base, req.key)
        meta, sig = begin_reload(read_meta(d), req, self.host)
        overlay = mounts.mounted(d.rootfs)
        if not overlay:
            mounts.mount_disk(d.disk_image, d.disk)
        # Through the overlay every file is written: the config layer may be older than
        # what an earlier reload left in the upper dir, so comparing with it could skip one.
        todo = ([(p, c.encode()) for p, c in req.files] if overlay
                else changed_files(d.config, req))
        for path, content in todo:
            mode = mode_of(d.config / path.lstrip("/"))
            if overlay:
                # Lands in the upper dir (copied up), where it hides the lower copy.
                write_beneath(d.rootfs, path, content, mode)
            else:
                # No overlay to write through: an older upper copy would hide the new file.
                unlink_beneath(d.disk / "upper", path)
                write_beneath(d.config, path, content, mode)
        update_meta(d, config_hash=req.config_hash, files_layout=req.files_layout)
        if self.runc.state(req.key.id) != "running":
            return  # it reads the new files when it starts
        trigger(d, meta, req, sig, lambda s: self.runc.call("kill", req.key.id, str(int(s))),
                lambda argv: self.exec(req.key, argv, tty=False))

    def volume(self, key: InstanceKey) -> Path:
        return volume_path(self.volumes, key)

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        """The stream of the stopped instance's root disk and data disk (`diskcopy`). Its
        overlay and disks are unmounted first, which writes back what the kernel still holds
        of them: then the image files are the whole disks (its next start mounts them again).
        Refused while it runs."""
        d = instance_dir(self.base, key)
        meta = read_meta(d)
        if meta is None or meta.get("runtime") != self.kind.value or not d.disk_image.exists():
            raise NotFound(f"instance {key} has no disks on host {self.host}")
        with self._disk_lock(key):
            diskmoves.release(self.runc, key, d, self.host, "copied")
            return diskcopy.read_disks(d, self.volume(key))

    def set_aside(self, key: InstanceKey) -> None:
        """Remove the stopped instance but keep its disks in `<incoming>/<id>/`, as if
        received, for a later create with `adopt_disks` (a migration's way back). Moved, not
        copied; repeatable after a crash at any point (a disk already moved into the staging
        dir stays there)."""
        d = instance_dir(self.base, key)
        with self._disk_lock(key):
            diskmoves.release(self.runc, key, d, self.host, "set aside")
            diskmoves.set_aside(d, key, self.volume(key), self.incoming / key.id)
        self.destroy(key)

    def _adopt_disks(self, d: InstanceDir, req: InstanceRequest) -> None:
        """Make the disks received for `req.key` (`<incoming>/<id>/`) the instance's, in
        place of new ones: the root disk moves into its dir, the data disk to its volume path.
        Repeatable after a crash at any point: meta.json records the adoption (by action id)
        before anything moves, and the received dir moves into the instance dir in one
        rename, so a retried create of the same action carries on with what it moved already
        rather than starting clean, which would delete it."""
        arrived = self.incoming / req.key.id
        meta = read_meta(d)
        if meta is not None and meta.get("adopted") == req.action_id:
            # The same create again: its disks stay; what it had started goes.
            self.runc.stop(req.key.id, req.stop_timeout)
            for path in (d.rootfs, d.disk, d.data):
                mounts.unmount(path)
        else:
            if not (arrived / diskcopy.ROOT_DISK).is_file():
                raise NotFound(f"the disks of {req.key} have not arrived on host {self.host}",
                               hint="copy them from the host it ran on first")
            if d.root.exists():
                self.destroy(req.key)  # an earlier instance or try: these disks replace it
            write_meta(d, req, phase="creating", adopted=req.action_id)
        diskmoves.adopt(d, req, arrived, self.volume(req.key), self.host)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        # Only the container (and its cgroup) goes: disk, overlay, config layer and netns
        # stay, so restart() starts it again on the same data and IP.
        self.runc.stop(key.id, timeout=stop_timeout)

    def check_resize(self, req: InstanceRequest) -> Grows:
        with self._disk_lock(req.key):
            return growdisks.check_resize(instance_dir(self.base, req.key), req,
                                          self.volume(req.key), self.host, self.runc)

    def resize(self, req: InstanceRequest) -> None:
        grows = self.check_resize(req)
        d = instance_dir(self.base, req.key)
        new, old = req.resources, resources_of(read_meta(d) or {})
        live = self.runc.state(req.key.id) not in (None, "stopped")
        if live:  # a stopped one gets the new limits from config.json when it starts
            self.runc.update_limits(req.key, new, old)
        if grows.root is not disks.Grow.NONE:
            growdisks.grow_disk(d.disk_image, d.disk, new.disk, grows.root, holders=(d.rootfs,))
        changes: dict[str, Any] = {}
        if req.data is not None and grows.data is not disks.Grow.NONE:
            growdisks.grow_disk(self.volume(req.key), d.data, req.data.size, grows.data)
            changes["data"] = asdict(req.data)
        logwriter.write_limits(d.log, req.logs)  # its writer takes them within a second
        update_meta(d, resources=asdict(new), spec_hash=req.spec_hash,
                    spec_fields=[list(p) for p in req.spec_fields], **changes)

    def stats(self, keys: list[InstanceKey]) -> list[InstanceStats]:
        found = []
        for key in keys:
            d = instance_dir(self.base, key)
            meta = read_meta(d)
            if meta is not None and meta.get("runtime") == self.kind.value:
                # One run of the instance: a restart starts a new cgroup, counting from 0.
                found.append((key, d, f"{key.id}@{meta.get('started_at')}"))
        cpu = self._cpu.percents({token: partial(stats.cgroup_cpu_ns, key.id)
                                  for key, _, token in found if stats.cgroup_exists(key.id)})
        return [_stats_of(key, d, cpu.get(token)) for key, d, token in found]

    def observe(self) -> list[InstanceFacts]:
        containers = runcstate.containers(self.runc_root)
        facts = []
        for key, d in list_instance_dirs(self.base):
            meta = read_meta(d)
            if meta is None or meta.get("runtime") != self.kind.value:
                if meta is None:
                    facts.append(InstanceFacts(key, InstanceState.PARTIAL, self.kind, self.host))
                continue
            c = containers.get(key.id)
            running = c is not None and c.status == "running"
            if meta.get("phase") != "created":
                state = InstanceState.PARTIAL
            else:
                state = InstanceState.RUNNING if running else InstanceState.STOPPED
            facts.append(InstanceFacts(
                key=key, state=state, runtime=self.kind, host=self.host, ip=meta.get("ip"),
                spec_hash=meta.get("spec_hash", ""),
                spec_fields=tuple((a, b) for a, b in meta.get("spec_fields", ())),
                config_hash=meta.get("config_hash", ""),
                files_layout=meta.get("files_layout", ""),
                started_at=meta.get("started_at"), resources=resources_of(meta),
                pid=c.pid if running and c else None,
                **_ended(key, d, meta, state), **run_of(meta),
            ))
        return facts

    def fence_target(self, key: InstanceKey) -> dict[str, Any] | None:
        """For the watchdog: `runc kill` of the container by id, whichever run it is."""
        if self.runc.state(key.id) in (None, "stopped"):
            return None
        return {"kind": "runc", "root": str(self.runc_root), "id": key.id}

    def netns(self, key: InstanceKey) -> str | None:
        return names.netns_name(key.id)

    def log_path(self, key: InstanceKey) -> Path:
        return instance_dir(self.base, key).log

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        """A command in the running instance (runc.py: `Runc.exec`)."""
        if read_meta(instance_dir(self.base, key)) is None:
            raise NotFound(f"no instance {key}", hint="`rackfire ps` lists the instances")
        if self.runc.state(key.id) != "running":
            raise PrereqError(f"instance {key} is not running",
                              hint=f"`rackfire ps {key.stack}` shows its state")
        return self.runc.exec(key.id, argv, tty)

    # parts ------------------------------------------------------------------------------

    def _start(self, d: InstanceDir, req: InstanceRequest, rootfs: RootFs,
               net: VethAttachment, **done: Any) -> None:
        """Start the instance (or make it warm); `done` goes into meta.json with its pid."""
        # Every part it runs on, made sure of each start: after a host reboot /run (its
        # netns) is empty and its disks unmounted. Each step keeps what is already intact.
        _app_layer(req, rootfs, self.host)
        mounts.mount_disk(d.disk_image, d.disk)
        data = growdisks.mount_data(d, req, self.volume(req.key))
        attach.ensure(net)
        upper, work = d.disk / "upper", d.disk / "work"
        if (read_meta(d) or {}).get("app", "") != req.app_digest:
            mounts.unmount(d.rootfs)  # mounted on another release's layer
        # The config layer on top, then the read-only ones: release layer, image.
        lower = [d.config, *(layer.path for layer in rootfs.layers)]
        mounts.mount_overlay(d.rootfs, lower, upper, work)
        update_meta(d, app=req.app_digest, data=asdict(req.data) if req.data else None,
                    warm=req.warm, warm_pid=None)
        config = oci_config(req, rootfs.host_binds, rootfs.hosts_file, net.netns_path,
                            d.data if data else None)
        (d.bundle / "config.json").write_text(json.dumps(config))
        if self.runc.has(req.key.id):  # a stopped leftover
            self.runc.call("delete", "--force", req.key.id, check=False)
        # The log writer starts runc, whose stdio the container inherits: pipes to the
        # writer, which stamps and rotates the console log, reaps the container's init (its
        # exit code) and outlives this server (runtime/logwriter.py). runc's own errors go
        # to the log too. A warm instance's container is made (`runc create`: its init waits
        # in its namespaces and cgroup, its writer with it) and started when it is wanted.
        pid_file = d.root / "init.pid"
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        banner = (f"--- rackfire: made {req.key} warm at {time.ctime()}" if req.warm
                  else f"--- rackfire: starting {req.key} at {time.ctime()}")
        writer = logwriter.launch(d.log, req.logs, banner, logwriter.Launch(
            self.runc.run_detached(req.key.id, d.bundle, pid_file, create=req.warm), env,
            pid_file=pid_file))
        if writer.main is None:
            writer.wait(2.0)  # no container holds the pipes: it ends soon
            why = writer.error or logwriter.tail_text(d.log)
            raise ExecError(f"runc could not start {req.key}: {why}", hint=f"see {d.log}")
        if req.warm:
            update_meta(d, warm_pid=writer.main, **done)
            return
        update_meta(d, started_at=time.time(), pid=writer.main, **done)
        attach.announce(net)


def check_paths(files: tuple[tuple[str, str], ...], rootfs: RootFs) -> None:
    """Refuse rendered files that would land on a symlink of the image (a real dir in the
    config layer hides `/bin -> usr/bin`, and `/bin/sh` with it) or under a host bind."""
    image = rootfs.image
    for path, _ in files:
        for bind in rootfs.host_binds:
            if path == bind or path.startswith(bind.rstrip("/") + "/"):
                raise PrereqError(f"files: {path} is under {bind}, which this image takes "
                                  "read-only from the host", hint="put it elsewhere, e.g. /etc")
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts)):
            parent = image.path.joinpath(*parts[:i])
            if parent.is_symlink():
                target = os.readlink(parent)
                raise PrereqError(f"files: {path}: /{'/'.join(parts[:i])} is a symlink to "
                                  f"{target} in image {image.name or image.digest[:12]}",
                                  hint="write the file at its real path")


def check_data_path(req: InstanceRequest, rootfs: RootFs) -> None:
    """Refuse a data disk mount point that would hide what runc or the image mounts."""
    if req.data is None:
        return
    path = req.data.path
    if not path.startswith("/") or os.path.normpath(path) != path or path == "/":
        raise PrereqError(f"data.path: {path!r} is not a normalized absolute path below /")
    for taken in (*_SYSTEM_PATHS, *rootfs.host_binds):
        if path == taken or path.startswith(taken.rstrip("/") + "/") \
                or taken.startswith(path + "/"):
            raise PrereqError(f"data.path: {path} would cover {taken}, which the container "
                              "needs as it is", hint="mount it elsewhere, e.g. /var/lib/app")


def remove_volumes(directory: Path) -> None:
    """Delete a stack's data disks: unmounted and their loop devices freed first (raises
    if one is still in use, keeping every disk)."""
    if not directory.exists():
        return
    mounts.release_under(directory)
    shutil.rmtree(directory)


def _app_layer(req: InstanceRequest, rootfs: RootFs, host: str) -> None:
    """Refuse a request whose release layer `rootfs` does not have."""
    if req.app_digest and rootfs.layer(req.app_digest) is None:
        raise NotFound(f"release layer {req.app_digest[:12]} is not on host {host}",
                       hint="the release is built before its instances are created")


def _stats_of(key: InstanceKey, d: InstanceDir, cpu: float | None) -> InstanceStats:
    disk_used, disk_limit = (stats.fs_usage(d.disk) if mounts.mounted(d.disk)
                             else (None, None))
    rx, tx = stats.veth_traffic(names.veth_name(key.id))
    if not stats.cgroup_exists(key.id):  # stopped: `runc delete` removed the cgroup
        return InstanceStats(key, 0.0, 0, None, disk_used, disk_limit, rx, tx, 0)
    used, limit = stats.cgroup_memory(key.id)
    return InstanceStats(key, cpu, used, limit, disk_used, disk_limit, rx, tx,
                         stats.cgroup_pids(key.id))


def _ended(key: InstanceKey, d: InstanceDir, meta: dict[str, Any],
           state: InstanceState) -> dict[str, Any]:
    """How a stopped container's last run ended: its writer's record, and the cgroup's OOM
    count while runc still has it."""
    if state is not InstanceState.STOPPED:
        return {}
    ended = logwriter.read_exit(d.log, meta.get("pid"))
    return {"exit_code": ended.code if ended else None,
            "exit_signal": ended.signal if ended else None, "oom_killed": _oom_killed(key)}


def _oom_killed(key: InstanceKey) -> bool:
    """cgroup v1 counts OOM kills; the cgroup lives until the container is deleted."""
    path = stats.cgroup_dir("memory", key.id) / "memory.oom_control"
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value) > 0
    except (OSError, ValueError):
        pass
    return False


def ensure_dirs() -> None:
    RUNC_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(RUNC_ROOT, 0o700)
