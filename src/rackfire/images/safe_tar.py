"""Import an untrusted rootfs tarball as an image layer (`extract_tarball` is the same
extraction into any private dir: uploaded app sources use it).

Extraction is our own loop over the members, never `extractall`. Invariants:

- every write happens through directory fds opened with O_NOFOLLOW from the staging root,
  so no symlink (from the archive or otherwise) is ever followed: a member whose parent chain
  holds a symlink or a non-directory is refused;
- refused: absolute names, `..` components, relative symlinks that climb out of the root
  (resolved through the archive's other symlinks, so `a/l1 -> ..` then `a/l2 -> l1/..` is
  caught; checked as each link is made and again for every link once all are there, since a
  later member can change where an earlier link leads), hard links to anything but a regular
  file extracted earlier, device nodes, FIFOs, setuid/setgid files, replacing a directory,
  and exceeding the ImportLimits or the free space, all checked before the member is written;
- refused too: an archive that is truncated or corrupt, which tarfile alone would end
  silently at a short or broken header: the member list must end with an end-of-archive
  block and a compressed stream with its trailer (`check_tarball` checks just that, and the
  members, without writing anything);
- absolute symlink targets are kept: inside the container they resolve against the image
  root. On the host they point at host paths, which is why nothing may follow symlinks in a
  layer from the host side;
- a refusal raises PrereqError naming the member and leaves nothing behind;
- ownership is kept as uid/gid numbers only (and only when we are root); setuid/setgid bits are
  stripped from directories; modes and mtimes are kept;
- the digest is the sha256 of the whole decompressed tar stream.

`exact=True` is for image layers sent by the controller (images/transfer.py), which the
receiver verifies by their tree digest before keeping them: those must come out exactly as
they were, so device nodes, FIFOs, setuid/setgid bits and relative symlinks that climb out
of the root (no worse than the absolute ones kept anyway) are kept instead of refused. Paths
are checked and symlinks never followed just the same.

The parts: `tar_stream.py` reads the archive (by its content, hashed, bounded, strict about
its end), `tar_checks.py` holds the limits and checks each member, `tar_extract.py` writes
them; this module holds the entry points.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from rackfire.errors import PrereqError
from rackfire.images.store import ImageInfo, ImageStore, check_name
from rackfire.images.tar_checks import Checker, ImportLimits
from rackfire.images.tar_extract import Extractor
from rackfire.images.tar_stream import HashingReader, MiB, open_decompressed, read_errors
from rackfire.model.stack import ImageSource

_DEFAULT_LIMITS = ImportLimits()


def tarball_key(tar_path: Path) -> str:
    """Build key of a tarball import: which file, and which version of it."""
    st = os.stat(tar_path)
    blob = json.dumps(["tarball", os.path.abspath(tar_path), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(blob.encode()).hexdigest()


def check_tarball(tar_path: Path, limits: ImportLimits = _DEFAULT_LIMITS) -> None:
    """Refuse, before any change, a tarball that import_tarball would refuse as a whole or
    by its members' names, types, sizes and links: reads (and decompresses) the archive once,
    writes nothing. What needs the tree on disk (free space; a member replacing a directory
    that only a deeper member's path implied) is left to the import. A tarball already
    checked, unchanged since, is not read again: plan and then apply check the same file."""
    tar_path = Path(tar_path)
    _check_file(tar_path)
    key = tarball_key(tar_path)
    if key in _CHECKED:
        return
    with open_decompressed(tar_path) as raw:
        reader = HashingReader(raw, limits.max_stream_bytes, tar_path)
        with read_errors(tar_path):
            Checker(limits).run(reader)
            while reader.read(MiB):  # to the end: a compressed stream's trailer is checked
                pass
    _CHECKED[key] = None
    while len(_CHECKED) > 256:
        del _CHECKED[next(iter(_CHECKED))]


_CHECKED: dict[str, None] = {}  # tarball keys check_tarball passed, oldest first


def _check_file(tar_path: Path) -> None:
    try:
        st = os.stat(tar_path)
    except FileNotFoundError:
        raise PrereqError(f"tarball {tar_path} does not exist") from None
    except OSError as e:
        raise PrereqError(f"tarball {tar_path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PrereqError(f"tarball {tar_path} is not a regular file")
    if not os.access(tar_path, os.R_OK):
        raise PrereqError(f"tarball {tar_path} cannot be read: permission denied")


def import_tarball(store: ImageStore, name: str, tar_path: Path,
                   limits: ImportLimits = _DEFAULT_LIMITS) -> ImageInfo:
    """Extract tar_path safely into a staging dir and commit it as image `name`."""
    check_name(name)
    tar_path = Path(tar_path)
    _check_file(tar_path)
    key = tarball_key(tar_path)
    with store.staging() as stage:
        rootfs = stage / "rootfs"
        rootfs.mkdir(mode=0o700)
        digest = extract_tarball(tar_path, rootfs, limits, store.root)
        return store.commit(name, rootfs, digest, ImageSource.TARBALL, build_key=key)


def extract_tarball(tar_path: Path, dest: Path, limits: ImportLimits, space_root: Path, *,
                    exact: bool = False) -> str:
    """Extract tar_path safely into dest, an empty private directory that the caller removes
    on failure; space_root is where min_free_bytes is checked. Returns the sha256 of the
    whole decompressed stream. `exact`: keep what only a verified layer may have (above)."""
    tar_path = Path(tar_path)
    _check_file(tar_path)
    with open_decompressed(tar_path) as raw:
        reader = HashingReader(raw, limits.max_stream_bytes, tar_path)
        with read_errors(tar_path):
            Extractor(dest, limits, space_root, exact=exact).run(reader)
            while reader.read(MiB):  # the digest covers the stream to its very end
                pass
    return reader.hexdigest()

