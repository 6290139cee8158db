"""Where an instance's parts live on a host, and its metadata file.

`<root>/<instance id>/` holds meta.json (written *before* anything else is made, so an
interrupted create is found again as PARTIAL), console.log, the config layer, the disk image
and the OCI bundle. The directory name is the instance id, so a listing is an inventory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.model.stack import Resources

_META_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class InstanceDir:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def log(self) -> Path:
        return self.root / "console.log"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def disk_image(self) -> Path:
        return self.root / "disk.img"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.root / "bundle" / "rootfs"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    @property
    def data(self) -> Path:
        """Where the instance's data disk (kept outside this dir) is mounted."""
        return self.root / "data"


def instance_dir(base: Path, key: InstanceKey) -> InstanceDir:
    return InstanceDir(base / key.id)


def write_meta(d: InstanceDir, req: InstanceRequest, phase: str, **extra: Any) -> None:
    data = {
        "key": asdict(req.key), "runtime": req.runtime.value, "ip": req.ip,
        "spec_hash": req.spec_hash, "config_hash": req.config_hash,
        "spec_fields": [list(p) for p in req.spec_fields], "image": req.image_digest,
        "phase": phase, "updated": time.time(), "files": rendered_paths(req),
        "resources": asdict(req.resources), "files_layout": req.files_layout,
        "app": req.app_digest, "data": asdict(req.data) if req.data else None,
        "incarnation": req.incarnation, "fence": req.fence, **extra,
    }
    d.root.mkdir(parents=True, exist_ok=True)
    _write_atomic(d.meta, data)


def update_meta(d: InstanceDir, **changes: Any) -> None:
    with _META_LOCK:  # read-modify-write from the API, health and reconcile threads
        data = read_meta(d) or {}
        data.update(changes, updated=time.time())
        _write_atomic(d.meta, data)


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    """A crash or a concurrent writer leaves the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".meta.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def resources_of(meta: dict[str, Any]) -> Resources | None:
    r = meta.get("resources")
    return Resources(**r) if isinstance(r, dict) else None


def run_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The run an instance is, from its meta, for its InstanceFacts."""
    return {"incarnation": int(meta.get("incarnation") or 0),
            "fence": bool(meta.get("fence", False)), "warm": bool(meta.get("warm", False))}


def read_meta(d: InstanceDir) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(d.meta.read_text())
        return data
    except (OSError, ValueError):
        return None


def write_config_layer(target: Path, files: tuple[tuple[str, str], ...], hostname: str,
                       *, replace_all: bool = True, old: tuple[str, ...] = ()) -> None:
    """Render the instance's config files and /etc/hostname under `target`.

    `replace_all` (a container's config layer, which holds nothing else) starts from an empty
    dir; otherwise (a process' working dir, which holds its data too) only the files of the
    previous config, `old`, are removed first."""
    if replace_all and target.exists():
        shutil.rmtree(target)
    for path in old:
        (target / path.lstrip("/")).unlink(missing_ok=True)
    (target / "etc").mkdir(parents=True, exist_ok=True)
    (target / "etc" / "hostname").write_text(hostname + "\n", encoding="utf-8")
    for path, content in files:
        dest = target / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content, encoding="utf-8")  # as a reload compares and writes them


def rendered_paths(req: InstanceRequest) -> list[str]:
    return [path for path, _ in req.files]


def swap_config(d: InstanceDir, target: Path, req: InstanceRequest, *,
                replace_all: bool) -> set[str]:
    """Write `req`'s config under `target` in place of the previous one, and record it in
    the instance's meta. Returns every path the old or the new config renders."""
    old = tuple((read_meta(d) or {}).get("files", ()))
    write_config_layer(target, req.files, req.key.name, replace_all=replace_all, old=old)
    update_meta(d, config_hash=req.config_hash, files=rendered_paths(req),
                files_layout=req.files_layout)
    return {*old, *rendered_paths(req)}


def list_instance_dirs(base: Path) -> list[tuple[InstanceKey, InstanceDir]]:
    out: list[tuple[InstanceKey, InstanceDir]] = []
    if not base.is_dir():
        return out
    for entry in sorted(base.iterdir()):
        try:
            key = InstanceKey.parse_id(entry.name)
        except ValueError:
            continue
        out.append((key, InstanceDir(entry)))
    return out


def remove_instance_dir(d: InstanceDir) -> None:
    """Remove an instance's dir for good (its data disk unmounted first). Renamed away
    before the rmtree: its log writer may still be draining the pipes, and one rotating in
    the middle of an rmtree would make files again in the half-removed dir (found by a
    listing as a PARTIAL instance with no meta); under the dir's old path it cannot make
    anything any more. The name (a dot, more than three parts) is no instance id."""
    for stale in d.root.parent.glob(f".{d.root.name}.removing-*"):  # a crash mid-rmtree
        shutil.rmtree(stale, ignore_errors=True)
    doomed = d.root.with_name(f".{d.root.name}.removing-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(d.root, doomed)
    except FileNotFoundError:
        return
    except OSError:  # cannot be renamed (its own mount point, say): removed where it is
        doomed = d.root
    shutil.rmtree(doomed, ignore_errors=True)


def volume_path(volumes: Path, key: InstanceKey) -> Path:
    """An instance's data disk: beside the instance dirs, so that it outlives its instance."""
    return volumes / key.stack / f"{key.name}.img"
