"""Packing an app's source dir for upload (`push`, and `apply` of a role with `app:`):
a deterministic gzip tar, checked before anything is written. Unpacked by the agent
(images/sources.py), which checks everything again."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from rackfire.errors import PrereqError
from rackfire.fswalk import resolve_in_root, walk
from rackfire.model.stack import MAX_SOURCE_BYTES

_SKIP_NAMES = frozenset({".git", "__pycache__", ".venv"})


def pack_source(src_dir: Path, out: BinaryIO) -> None:
    """Write a gzip tar of src_dir to out: the same bytes for the same tree, whoever packs
    it and whenever. Everything is checked before anything is written."""
    src_dir = Path(src_dir)
    if src_dir.is_symlink() or not src_dir.is_dir():
        raise PrereqError(f"app source {src_dir} is not a directory")
    entries = _checked_entries(src_dir)
    # mtime=0 and no file name in the gzip header; owners and times zeroed in the tar.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel, st in entries:
            ti = tarfile.TarInfo(rel)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
            if stat.S_ISDIR(st.st_mode):
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif stat.S_ISLNK(st.st_mode):
                ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, os.readlink(src_dir / rel)
                tf.addfile(ti)
            else:
                ti.type, ti.mode, ti.size = tarfile.REGTYPE, _file_mode(st.st_mode), st.st_size
                fd = os.open(src_dir / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    tf.addfile(ti, f)


def _checked_entries(src_dir: Path) -> list[tuple[str, os.stat_result]]:
    def skip(rel: str, st: os.stat_result) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return name in _SKIP_NAMES or (name.endswith(".pyc") and not stat.S_ISDIR(st.st_mode))

    entries = []
    total = 0
    try:
        for rel, st in walk(src_dir, skip=skip):
            if not rel:
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                _check_link(src_dir, rel, os.readlink(src_dir / rel))
            elif stat.S_ISREG(mode):
                if not os.access(src_dir / rel, os.R_OK):
                    raise PermissionError(13, "permission denied", str(src_dir / rel))
                total += st.st_size
            elif not stat.S_ISDIR(mode):
                raise PrereqError(f"app source {src_dir}: {rel} is a device, FIFO or socket",
                                  hint="an app source holds files, directories and symlinks "
                                       "only: move it out of the directory")
            entries.append((rel, st))
    except PermissionError as e:
        raise PrereqError(f"app source {src_dir}: cannot read {e.filename}: {e.strerror}",
                          hint="make the whole directory readable") from None
    if total > MAX_SOURCE_BYTES:
        raise PrereqError(f"app source {src_dir} holds {total >> 20} MiB of files, more than "
                          f"{MAX_SOURCE_BYTES >> 20} MiB",
                          hint="keep data and build outputs out of the app directory "
                               "(.git, .venv, __pycache__ and *.pyc are left out already)")
    return sorted(entries, key=lambda e: e[0])  # a directory sorts before what it holds


def _check_link(root: Path, rel: str, target: str) -> None:
    # Absolute links are refused too: the tree is unpacked elsewhere, where they would point
    # at another machine's paths.
    if target.startswith("/") or resolve_in_root(root, rel, jail=False) is None:
        raise PrereqError(f"app source {root}: symlink {rel} -> {target} points outside it",
                          hint="use relative symlinks to files inside the app directory, "
                               "or copy the file in")


def _file_mode(mode: int) -> int:
    return 0o755 if mode & stat.S_IXUSR else 0o644
