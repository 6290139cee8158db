"""Uploaded application sources, kept by the agent by content (api/pack.py packs them).

    store_source  an uploaded tarball -> <store.root>/sources/<digest>/ (safe extraction)
    source_dir    digest -> that dir

Invariants: a source dir appears complete or not at all (staging + one rename) and is never
written after; its digest is the tree digest after normalising what a tar or a client's
umask may vary (mtimes, owners: root; modes: 0755 dirs, 0755/0644 files), so the same source
uploaded twice gets the same digest. No symlink in a source leaves it, on the client or in
the store: the host reads these trees (pip reads requirements.txt) and must not be led out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rackfire.errors import NotFound, PrereqError
from rackfire.images.safe_tar import extract_tarball
from rackfire.images.store import ImageStore, check_digest
from rackfire.images.tar_checks import ImportLimits
from rackfire.images.tree import resolve_in_root, tree_digest, walk
from rackfire.model.stack import MAX_SOURCE_BYTES

SOURCE_LIMITS = ImportLimits(max_bytes=MAX_SOURCE_BYTES, max_entries=100_000,
                             max_member_bytes=MAX_SOURCE_BYTES)


def store_source(store: ImageStore, tarball: Path) -> str:
    """Extract an uploaded source tarball safely into <store.root>/sources/<digest>/ and
    return the digest (64 hex). An existing dir with that digest is kept as it is."""
    with store.staging() as stage:
        tree = stage / "src"
        tree.mkdir(mode=0o700)
        extract_tarball(Path(tarball), tree, SOURCE_LIMITS, store.root)
        _normalise(tree)
        digest = tree_digest(tree)
        dest = store.sources / digest
        with store.build_lock(digest):
            if not dest.is_dir():
                os.sync()  # complete on disk before it is visible under sources/
                tree.rename(dest)
    return digest


def _normalise(tree: Path) -> None:
    """Canonical owners and modes (see the module docstring); refuses links out of tree,
    which the extractor lets through when they are absolute or climb out via other links."""
    as_root = os.geteuid() == 0
    for rel, st in walk(tree):
        path = tree / rel if rel else tree
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            target = os.readlink(path)
            if target.startswith("/") or resolve_in_root(tree, rel, jail=False) is None:
                raise PrereqError(f"refused app source: symlink {rel!r} -> {target!r} points "
                                  "outside the source", hint="nothing was stored")
        else:
            os.chmod(path, 0o755 if stat.S_ISDIR(mode) else _file_mode(mode))
        if as_root:
            os.chown(path, 0, 0, follow_symlinks=False)


def source_dir(store: ImageStore, digest: str) -> Path:
    """The stored source tree with this digest."""
    check_digest(digest, "source digest")
    path = store.sources / digest
    if path.is_symlink() or not path.is_dir():
        raise NotFound(f"no uploaded app source {digest[:12]}", hint="push the app again")
    return path


def _file_mode(mode: int) -> int:
    return 0o755 if mode & stat.S_IXUSR else 0o644
