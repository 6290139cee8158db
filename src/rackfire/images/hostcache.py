"""A host-wide cache of finished builds, shared by every ImageStore (every data dir) on the
host, so that each new server does not run the same minute-long debootstrap again.

Layout under cache_root() (`RACKFIRE_CACHE_DIR`, else /var/cache/rackfire):

    <kind>/<key>/rootfs     the built tree; never written after it is in place
    <kind>/<key>/digest     its tree digest, written last
    <kind>/.<key>.lock      flock held while building or filling <key>
    <kind>/.tmp-<key>-*     an entry being written; renamed to <key> when complete

Invariants: an entry appears complete or not at all (temp dir + one rename), and one
without a valid digest file is ignored. The cache only speeds builds up: if it is unusable
(not writable, not owned by us) builds go on without it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rackfire.images.tree import copy_tree, remove_tree

DEFAULT_CACHE_ROOT = Path("/var/cache/rackfire")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger("rackfire.images")


def cache_root() -> Path:
    return Path(os.environ.get("RACKFIRE_CACHE_DIR") or DEFAULT_CACHE_ROOT)


class HostCache:
    """One kind of build (e.g. "debootstrap") in the host-wide cache."""

    def __init__(self, kind: str) -> None:
        self.dir = _usable_dir(cache_root() / kind)

    def get(self, key: str) -> tuple[Path, str] | None:
        """(rootfs, digest) of a complete entry for key."""
        if self.dir is None or not _HEX64.match(key):
            return None
        entry = self.dir / key
        try:
            digest = (entry / "digest").read_text().strip()
        except OSError:
            return None
        rootfs = entry / "rootfs"
        if not _HEX64.match(digest) or rootfs.is_symlink() or not rootfs.is_dir():
            return None
        return rootfs, digest

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held across a build of key, so a second server waits and then finds the entry
        instead of building the same thing at the same time. A no-op without a cache."""
        if self.dir is None or not _HEX64.match(key):
            yield
            return
        fd = os.open(self.dir / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def put(self, key: str, rootfs: Path, digest: str) -> None:
        """Add rootfs (a committed layer: hard-linked when it can be) as key's entry.
        Call under lock(key). Best effort: a failure is logged, never raised."""
        if self.dir is None or not _HEX64.match(key) or not _HEX64.match(digest):
            return
        if self.get(key) is not None:
            return
        tmp: Path | None = None
        try:
            # We hold the key's lock, so any temp dir of this key is a crashed writer's.
            for stale in self.dir.glob(f".tmp-{key}-*"):
                remove_tree(stale)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.dir))
            copy_tree(rootfs, tmp / "rootfs")
            os.sync()  # the tree is on disk before the digest vouches for it
            with open(tmp / "digest", "w") as f:
                f.write(digest + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o755)  # noqa: S103 - inside a 0700 dir; layers are world-readable
            tmp.rename(self.dir / key)
            tmp = None
        except Exception as e:  # the build itself succeeded; the cache is only a speed-up
            log.warning("could not add %s to the host cache %s: %s", key[:12], self.dir, e)
        finally:
            if tmp is not None:
                remove_tree(tmp)


def _usable_dir(d: Path) -> Path | None:
    """d, created if needed, if only we can write it: an entry is trusted by its digest file
    alone, so anyone else who could write there could plant an image."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        log.warning("host cache %s is not usable: %s", d, e)
        return None
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        log.warning("host cache %s ignored: not a directory that only we can write", d)
        return None
    return d
