"""Import an untrusted rootfs tarball as an image layer (`extract_tarball` is the same
extraction into any private dir: uploaded app sources use it).

Extraction is our own loop over the members, never `extractall`. Invariants:

- every write happens through directory fds opened with O_NOFOLLOW from the staging root,
  so no symlink (from the archive or otherwise) is ever followed: a member whose parent chain
  holds a symlink or a non-directory is refused;
- refused: absolute names, `..` components, relative symlinks that climb out of the root,
  hard links to anything but a regular file extracted earlier, device nodes, FIFOs,
  setuid/setgid files, replacing a directory, and exceeding the ImportLimits or the free
  space, all checked before the member is written;
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
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import lzma
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn, Protocol, cast

from rackfire.errors import ExecError, PrereqError
from rackfire.images.store import ImageInfo, ImageStore, check_name
from rackfire.model.stack import ImageSource

GiB = 1024**3
MiB = 1024**2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ImportLimits:
    max_bytes: int = 4 * GiB  # sum of the declared sizes of all regular files
    max_entries: int = 200_000
    max_member_bytes: int = 2 * GiB
    min_free_bytes: int = 64 * MiB  # free space to leave on the store's filesystem

    @property
    def max_stream_bytes(self) -> int:
        """Bound on the decompressed stream: data plus generous room for headers and padding,
        so a decompression bomb hidden in headers or trailing junk is cut off too."""
        return self.max_bytes + (self.max_entries + 2) * 4096 + 16 * MiB


def tarball_key(tar_path: Path) -> str:
    """Build key of a tarball import: which file, and which version of it."""
    st = os.stat(tar_path)
    blob = json.dumps(["tarball", os.path.abspath(tar_path), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(blob.encode()).hexdigest()


def import_tarball(store: ImageStore, name: str, tar_path: Path,
                   limits: ImportLimits = ImportLimits()) -> ImageInfo:
    """Extract tar_path safely into a staging dir and commit it as image `name`."""
    check_name(name)
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise PrereqError(f"tarball {tar_path} does not exist or is not a file")
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
    if not tar_path.is_file():
        raise PrereqError(f"tarball {tar_path} does not exist or is not a file")
    with _open_decompressed(tar_path) as raw:
        reader = _HashingReader(raw, limits.max_stream_bytes, tar_path)
        try:
            _Extractor(dest, limits, space_root, exact=exact).run(reader)
            while reader.read(1024 * 1024):  # the digest covers the stream to its very end
                pass
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as e:
            raise PrereqError(f"{tar_path} is not a readable tar archive: {e}",
                              hint="use an uncompressed, gzip or xz tar archive") from None
        except OSError as e:
            raise ExecError(f"extracting {tar_path} failed: {e}") from e
    return reader.hexdigest()


def _open_decompressed(path: Path) -> IO[bytes]:
    """By content, not by name: an upload is spooled under a name of the server's choosing."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.open(path, "rb"))
    return open(path, "rb")  # plain tar; tarfile says so if it is not one


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _HashingReader:
    """Hashes everything read through it and refuses to read past a size bound."""

    def __init__(self, raw: _Readable, cap: int, path: Path) -> None:
        self.raw, self.cap, self.path = raw, cap, path
        self.count = 0
        self._h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if 0 <= n <= MiB else MiB)
        self.count += len(data)
        if self.count > self.cap:
            raise PrereqError(f"{self.path}: decompressed archive is larger than "
                              f"{self.cap} bytes", hint="raise ImportLimits.max_bytes")
        self._h.update(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(slots=True)
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float


class _Extractor:
    def __init__(self, rootfs: Path, limits: ImportLimits, store_root: Path, *,
                 exact: bool = False) -> None:
        self.rootfs = rootfs
        self.exact = exact
        self.mode_mask = 0o7777 if exact else 0o1777
        self.limits = limits
        self.store_root = store_root
        self.as_root = os.geteuid() == 0
        self.entries = 0
        self.total = 0
        self.files: set[tuple[str, ...]] = set()  # regular files extracted: hard link targets
        self.dirs: dict[tuple[str, ...], _DirMeta] = {}  # applied last: writes change mtimes
        self._parent: tuple[tuple[str, ...], int] | None = None  # last parent dir fd, reused

    def run(self, reader: _HashingReader) -> None:
        try:
            with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tf:
                while (m := tf.next()) is not None:
                    # We never look members up by name: drop them to keep memory flat.
                    tf.members.clear()  # type: ignore[attr-defined]  # missing from typeshed
                    self._member(tf, m)
            self._apply_dir_meta()
        finally:
            self._drop_parent()

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            _refuse(m, f"more than {self.limits.max_entries} entries (ImportLimits.max_entries)")
        parts = _split(m, m.name)
        special = m.ischr() or m.isblk() or m.isfifo()
        if special and not self.exact:
            _refuse(m, "FIFOs are not allowed" if m.isfifo() else "device nodes are not allowed")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or special):
            _refuse(m, f"unsupported member type {m.type!r}")
        if m.isreg() and m.mode & (stat.S_ISUID | stat.S_ISGID) and not self.exact:
            _refuse(m, "setuid/setgid files are not allowed")
        if not parts:  # "./": the root itself
            if not m.isdir():
                _refuse(m, "the archive root must be a directory")
            self.dirs[()] = self._dir_meta(m)
            return
        if m.isreg():
            self._check_size(m)
        dfd = self._open_parent(m, parts[:-1])
        leaf = parts[-1]
        try:
            existing: os.stat_result | None = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if m.isdir():
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=dfd)  # real mode applied at the end
            elif not stat.S_ISDIR(existing.st_mode):
                _refuse(m, "a directory would replace an earlier non-directory member")
            self.dirs[parts] = self._dir_meta(m)
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                _refuse(m, "would replace a directory")
            os.unlink(leaf, dir_fd=dfd)
            self.files.discard(parts)
        if m.isreg():
            self._write_file(tf, m, dfd, leaf)
            self.files.add(parts)
        elif m.issym():
            self._symlink(m, parts, dfd, leaf)
        elif special:
            self._special(m, dfd, leaf)
        else:
            self._hardlink(m, dfd, leaf)
            self.files.add(parts)

    def _check_size(self, m: tarfile.TarInfo) -> None:
        lim = self.limits
        if m.size > lim.max_member_bytes:
            _refuse(m, f"{m.size} bytes is more than {lim.max_member_bytes} "
                       "(ImportLimits.max_member_bytes)")
        self.total += m.size
        if self.total > lim.max_bytes:
            _refuse(m, f"the archive's files add up to more than {lim.max_bytes} bytes "
                       "(ImportLimits.max_bytes)")
        vfs = os.statvfs(self.store_root)
        free = vfs.f_bavail * vfs.f_frsize
        if m.size + lim.min_free_bytes > free:
            _refuse(m, f"not enough free space in {self.store_root}: {free} bytes free, "
                       f"{m.size} needed plus {lim.min_free_bytes} kept free")

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        src = tf.extractfile(m)
        if src is None:
            _refuse(m, "member has no data")
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(MiB):
                out.write(chunk)
            out.flush()
            if self.as_root:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & self.mode_mask)  # after chown, which would clear mode bits
            _set_mtime(m.mtime, fd)

    def _special(self, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        """A device node or FIFO (exact mode only). Created 0600 in our private tree and
        never opened; its real mode comes after the chown, which would clear it."""
        if m.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=dfd)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(leaf, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
        if self.as_root:
            os.chown(leaf, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        os.chmod(leaf, m.mode & self.mode_mask, dir_fd=dfd)  # no symlink: we just made it
        _set_mtime(m.mtime, leaf, dfd)

    def _symlink(self, m: tarfile.TarInfo, parts: tuple[str, ...], dfd: int, leaf: str) -> None:
        target = m.linkname
        if not target or "\0" in target:
            _refuse(m, "empty or invalid symlink target")
        if not target.startswith("/") and not self.exact:
            depth = len(parts) - 1  # the link resolves relative to its own directory
            for c in target.split("/"):
                if c == "..":
                    depth -= 1
                    if depth < 0:
                        _refuse(m, f"symlink target {target!r} escapes the image root")
                elif c not in ("", "."):
                    depth += 1
        os.symlink(target, leaf, dir_fd=dfd)
        if self.as_root:
            os.chown(leaf, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        _set_mtime(m.mtime, leaf, dfd)

    def _hardlink(self, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        tparts = _split(m, m.linkname)
        if tparts not in self.files:
            _refuse(m, f"hard link target {m.linkname!r} is not a regular file extracted "
                       "earlier from this archive")
        sfd = self._open_dir(m, tparts[:-1], create=False)
        try:
            os.link(tparts[-1], leaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(sfd)

    def _open_parent(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> int:
        if self._parent is not None and self._parent[0] == parts:
            return self._parent[1]
        self._drop_parent()
        fd = self._open_dir(m, parts, create=True)
        self._parent = (parts, fd)
        return fd

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _open_dir(self, m: tarfile.TarInfo | None, parts: tuple[str, ...], *,
                  create: bool) -> int:
        """Open rootfs/parts one component at a time, never following a symlink."""
        fd = os.open(self.rootfs, _DIR_FLAGS)
        try:
            for i, comp in enumerate(parts):
                try:
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)  # implied by a deeper member
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR) or m is None:
                        raise
                    # Linux says ENOTDIR for a symlink opened with O_DIRECTORY|O_NOFOLLOW.
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    _refuse(m, f"its parent {'/'.join(parts[:i + 1])!r} is {what}")
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _dir_meta(self, m: tarfile.TarInfo) -> _DirMeta:
        return _DirMeta(mode=m.mode & self.mode_mask, uid=m.uid, gid=m.gid, mtime=m.mtime)

    def _apply_dir_meta(self) -> None:
        # Deepest first, so setting a parent's mtime comes after its children are done.
        for parts, meta in sorted(self.dirs.items(), key=lambda kv: len(kv[0]), reverse=True):
            fd = self._open_dir(None, parts, create=False)
            try:
                if self.as_root:
                    os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode)
                _set_mtime(meta.mtime, fd)
            finally:
                os.close(fd)


def _split(m: tarfile.TarInfo, path: str) -> tuple[str, ...]:
    """Archive path -> components under the root; refuses absolute paths and `..`."""
    if path.startswith("/"):
        _refuse(m, f"absolute path {path!r}")
    parts = tuple(c for c in path.split("/") if c not in ("", "."))
    if ".." in parts:
        _refuse(m, f"path {path!r} has a '..' component")
    if any("\0" in c for c in parts):
        _refuse(m, "NUL byte in path")
    return parts


def _set_mtime(mtime: float, target: int | str, dir_fd: int | None = None) -> None:
    # An absurd mtime is not worth refusing the image for.
    with contextlib.suppress(OverflowError, ValueError):
        if isinstance(target, int):
            os.utime(target, (mtime, mtime))
        else:
            os.utime(target, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)


def _refuse(m: tarfile.TarInfo, reason: str) -> NoReturn:
    raise PrereqError(f"refused tarball member {m.name!r}: {reason}",
                      hint="fix the archive; nothing was imported")
