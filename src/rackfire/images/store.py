"""Content-addressed image layers and the names that point at them.

Layout under the store's root:

    layers/<digest>/rootfs/      the layer; never written after commit
    layers/<digest>/meta.json    source, created, size_bytes, host_binds; `fetched: true` on a
                                 layer received from the controller (images/transfer.py),
                                 which no name points at until a build here names it
    names/<name>.json            name -> digest, with a copy of the layer's metadata;
                                 `rel-<12 hex>` names are reserved for release layers
    sources/<digest>/            uploaded app sources, by tree digest (images/sources.py)
    cache/<key>.json             build key -> digest (a debootstrap of suite + packages, ...)
    tmp/                         staging dirs: layers are built here, then renamed into place
    locks/                       flock files

Invariants: a layer appears under layers/ complete or not at all (one rename); a name file
is replaced in one rename; a name only ever points at a layer that exists. Names and layers
change only under the store lock, so `remove` cannot delete a layer that a concurrent
`commit` or `tag` is pointing a name at.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rackfire.errors import NotFound, PrereqError
from rackfire.images.tree import remove_tree, tree_size
from rackfire.model.stack import NAME_PATTERN, ImageSource

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
RELEASE_PREFIX = "rel-"  # names of release layers: only commits with source=release use it


@dataclass(frozen=True, slots=True)
class ImageInfo:
    name: str  # "" when found by digest and no name points at the layer
    digest: str  # sha256 hex
    source: str  # an ImageSource value
    created: float  # epoch seconds the layer was committed
    size_bytes: int  # regular-file content, hard links counted once
    host_binds: tuple[str, ...]  # host paths the runtime bind-mounts read-only at the same place
    rootfs: Path
    build_key: str = ""  # what the image was built from; ensure_image rebuilds when it changes
    fetched: bool = False  # received from the controller, not built here


def check_name(name: str) -> None:
    """Image names become file names: refuse anything NAME_PATTERN does not allow."""
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise PrereqError(f"invalid image name {name!r}",
                          hint="use lowercase letters, digits and '-', starting with a letter, "
                               "at most 32 characters")


def check_digest(digest: str, what: str = "digest") -> None:
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise PrereqError(f"invalid {what} {digest!r}", hint="expected 64 lowercase hex digits")


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.layers = self.root / "layers"
        self.names = self.root / "names"
        self.cache = self.root / "cache"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.sources = self.root / "sources"
        for d in (self.layers, self.names, self.cache, self.tmp, self.locks, self.sources):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp, 0o700)  # staging trees are private until committed

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str) -> ImageInfo | None:
        check_name(name)
        rec = _read_json(self.names / f"{name}.json")
        if rec is None or not (self.layers / rec["digest"] / "rootfs").is_dir():
            return None
        return self._info(name, rec)

    def by_digest(self, digest: str) -> ImageInfo | None:
        """The layer with this digest, named after the first name (sorted) that points at it."""
        check_digest(digest)
        meta = _read_json(self.layers / digest / "meta.json")
        if meta is None:
            return None
        for info in self.list():
            if info.digest == digest:
                return info
        return self._info("", {**meta, "digest": digest})

    def fetched_layers(self) -> list[ImageInfo]:
        """The layers received from the controller that no name points at."""
        named = {i.digest for i in self.list()}
        out = []
        for p in sorted(self.layers.iterdir()):
            meta = _read_json(p / "meta.json") if _HEX64.match(p.name) else None
            if meta is not None and meta.get("fetched") and p.name not in named:
                out.append(self._info("", {**meta, "digest": p.name}))
        return out

    def list(self) -> list[ImageInfo]:
        out = []
        for p in sorted(self.names.glob("*.json")):
            rec = _read_json(p)
            if rec is not None and (self.layers / rec["digest"] / "rootfs").is_dir():
                out.append(self._info(p.stem, rec))
        return out

    def cache_get(self, key: str) -> str | None:
        """The digest recorded for a build key, if that layer still exists."""
        check_digest(key, "cache key")
        rec = _read_json(self.cache / f"{key}.json")
        if rec is None or not (self.layers / rec["digest"] / "rootfs").is_dir():
            return None
        return str(rec["digest"])

    # -- changing ----------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh private directory under tmp/ for building a rootfs; removed on exit unless
        commit has moved it into a layer."""
        path = Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp))
        try:
            yield path
        finally:
            remove_tree(path)

    def commit(self, name: str, staging_dir: Path, digest: str, source: str,
               host_binds: tuple[str, ...] = (), *, build_key: str = "") -> ImageInfo:
        """Turn staging_dir (the rootfs, inside tmp/) into layer `digest` and point `name` at
        it. If the layer already exists, staging_dir is discarded and the name reuses it."""
        check_name(name)
        check_digest(digest)
        source = self._check_commit(staging_dir, source, host_binds)
        # A user image under a release's name would repoint it, and `image rm` of a user
        # image must never take a release with it.
        if name.startswith(RELEASE_PREFIX) != (source == ImageSource.RELEASE):
            raise PrereqError(f"image name {name!r}: names starting with {RELEASE_PREFIX!r} "
                              "are reserved for release layers, and only for them",
                              hint="choose another image name")
        size = tree_size(staging_dir)  # before the lock: it reads the whole tree
        with self._lock():
            self._place(Path(staging_dir), digest, source, host_binds, size)
            info = self._point(name, digest, build_key)
        remove_tree(staging_dir)  # only still there if the layer already existed
        return info

    def add_fetched(self, staging_dir: Path, digest: str, source: str,
                    host_binds: tuple[str, ...] = ()) -> ImageInfo:
        """Like commit, for a layer received from the controller and verified by the caller:
        no name points at it (by_digest finds it, list() does not show it) and its meta says
        `fetched`, which is what remove_layer's callers look for."""
        check_digest(digest)
        source = self._check_commit(staging_dir, source, host_binds)
        size = tree_size(staging_dir)
        with self._lock():
            self._place(Path(staging_dir), digest, source, host_binds, size, fetched=True)
        remove_tree(staging_dir)
        info = self.by_digest(digest)
        if info is None:  # a layer is never removed while it is still being placed
            raise NotFound(f"no image layer {digest}")
        return info

    def remove_layer(self, digest: str) -> bool:
        """Remove a layer that no name points at (the caller has checked that no instance
        uses it). False if it is not there or a name points at it."""
        check_digest(digest)
        with self._lock():
            if not (self.layers / digest).is_dir() or any(
                    i.digest == digest for i in self.list()):
                return False
            self._drop_cache(digest)
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.tmp))
            (self.layers / digest).rename(trash / "layer")
        remove_tree(trash)
        return True

    def tag(self, name: str, digest: str, *, build_key: str = "") -> ImageInfo:
        """Point `name` at an existing layer."""
        check_name(name)
        check_digest(digest)
        if name.startswith(RELEASE_PREFIX):
            raise PrereqError(f"image name {name!r}: names starting with {RELEASE_PREFIX!r} "
                              "are reserved for release layers", hint="choose another name")
        with self._lock():
            if not (self.layers / digest / "rootfs").is_dir():
                raise NotFound(f"no image layer {digest}")
            return self._point(name, digest, build_key)

    def cache_put(self, key: str, digest: str) -> None:
        check_digest(key, "cache key")
        check_digest(digest)
        with self._lock():
            _write_json(self.cache / f"{key}.json", {"digest": digest}, self.tmp)

    def remove(self, name: str) -> bool:
        """Remove the name; remove its layer too if no other name points at it.
        The caller has checked that no instance uses the image. False if there was no name."""
        check_name(name)
        path = self.names / f"{name}.json"
        with self._lock():
            rec = _read_json(path)
            if rec is None:
                return False
            path.unlink()
            digest = rec["digest"]
            if any(i.digest == digest for i in self.list()):
                return True
            self._drop_cache(digest)
            # Renamed out of layers/ under the lock, deleted after: the layer vanishes at once.
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.tmp))
            with suppress(FileNotFoundError):
                (self.layers / digest).rename(trash / "layer")
        remove_tree(trash)
        return True

    @contextmanager
    def build_lock(self, key: str) -> Iterator[None]:
        """Serialize builds of the same key, so a second builder finds the first one's layer."""
        check_digest(key, "build key")
        with self._lock(f"build-{key}"):
            yield

    # -- internals ---------------------------------------------------------------------

    def _check_commit(self, staging_dir: Path, source: str,
                      host_binds: tuple[str, ...]) -> str:
        """Refuse what a layer may not be made of; the source, normalized."""
        try:
            source = ImageSource(source).value
        except ValueError:
            raise PrereqError(f"invalid image source {source!r}") from None
        for b in host_binds:
            if not b.startswith("/") or os.path.normpath(b) != b:
                raise PrereqError(f"invalid host bind {b!r}", hint="use a normalized absolute path")
        staging_dir = Path(staging_dir)
        # Same filesystem as layers/, so the move into place is one atomic rename.
        if (staging_dir.is_symlink() or not staging_dir.is_dir()
                or not staging_dir.resolve().is_relative_to(self.tmp.resolve())
                or staging_dir.resolve() == self.tmp.resolve()):
            raise PrereqError(f"staging dir {staging_dir} is not a directory inside {self.tmp}",
                              hint="build the rootfs in a directory from ImageStore.staging()")
        return source

    def _place(self, staging_dir: Path, digest: str, source: str,
               host_binds: tuple[str, ...], size: int, *, fetched: bool = False) -> None:
        """Move staging_dir into layers/<digest> unless that layer exists. Under the lock."""
        layer = self.layers / digest
        if (layer / "rootfs").is_dir():
            return
        # The staging rootfs may be half-written if we crash here, so sync it to disk
        # before it becomes visible under layers/.
        os.sync()
        shell = Path(tempfile.mkdtemp(prefix="layer-", dir=self.tmp))
        staging_dir.rename(shell / "rootfs")
        meta: dict[str, Any] = {"source": source, "created": time.time(), "size_bytes": size,
                                "host_binds": list(host_binds)}
        if fetched:
            meta["fetched"] = True
        _write_json(shell / "meta.json", meta, self.tmp)
        os.chmod(shell, 0o755)  # noqa: S103 - layers are world-readable, like /usr
        shell.rename(layer)

    def _drop_cache(self, digest: str) -> None:
        for p in self.cache.glob("*.json"):
            c = _read_json(p)
            if c is not None and c.get("digest") == digest:
                p.unlink()

    def _point(self, name: str, digest: str, build_key: str) -> ImageInfo:
        meta = _read_json(self.layers / digest / "meta.json") or {}
        rec = {**meta, "digest": digest, "build_key": build_key}
        _write_json(self.names / f"{name}.json", rec, self.tmp)
        return self._info(name, rec)

    def _info(self, name: str, rec: dict[str, Any]) -> ImageInfo:
        digest = str(rec["digest"])
        return ImageInfo(
            name=name, digest=digest, source=str(rec.get("source", "")),
            created=float(rec.get("created", 0.0)), size_bytes=int(rec.get("size_bytes", 0)),
            host_binds=tuple(rec.get("host_binds", ())),
            rootfs=self.layers / digest / "rootfs", build_key=str(rec.get("build_key", "")),
            fetched=bool(rec.get("fetched", False)),
        )

    @contextmanager
    def _lock(self, name: str = "store") -> Iterator[None]:
        fd = os.open(self.locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or not _HEX64.match(str(data.get("digest", "0" * 64))):
        return None  # not ours, or damaged: treat as absent rather than trust its digest
    return data


def _write_json(path: Path, data: dict[str, Any], tmp_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix="json-", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
