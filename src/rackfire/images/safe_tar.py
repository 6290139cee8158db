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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn, Protocol, Self, cast

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


def check_tarball(tar_path: Path, limits: ImportLimits = ImportLimits()) -> None:
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
    with _open_decompressed(tar_path) as raw:
        reader = _HashingReader(raw, limits.max_stream_bytes, tar_path)
        with _read_errors(tar_path):
            _Checker(limits).run(reader)
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
                   limits: ImportLimits = ImportLimits()) -> ImageInfo:
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
    with _open_decompressed(tar_path) as raw:
        reader = _HashingReader(raw, limits.max_stream_bytes, tar_path)
        with _read_errors(tar_path):
            _Extractor(dest, limits, space_root, exact=exact).run(reader)
            while reader.read(MiB):  # the digest covers the stream to its very end
                pass
    return reader.hexdigest()


@contextlib.contextmanager
def _read_errors(tar_path: Path) -> Iterator[None]:
    """What reading a broken archive raises, as a refusal that names the file."""
    try:
        yield
    except _Truncated as e:
        raise PrereqError(f"{tar_path} is truncated or corrupt: {e}",
                          hint="the file is incomplete; copy or download it again "
                               "(nothing was imported)") from None
    except EOFError as e:  # a gzip or xz stream that stops before its end-of-stream marker
        raise PrereqError(f"{tar_path} is truncated: {e}",
                          hint="the file is incomplete; copy or download it again "
                               "(nothing was imported)") from None
    except (tarfile.TarError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as e:
        if str(e) == "unexpected end of data":  # tarfile, inside a member's data
            raise PrereqError(f"{tar_path} is truncated: the archive ends inside a member's "
                              "data", hint="the file is incomplete; copy or download it "
                              "again (nothing was imported)") from None
        raise PrereqError(f"{tar_path} is not a readable tar archive: {e}",
                          hint="use an uncompressed, gzip or xz tar archive") from None
    except OSError as e:
        raise ExecError(f"extracting {tar_path} failed: {e}") from e


class _Truncated(tarfile.ReadError):
    pass


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the member list silently at an empty, short or corrupt header once past
    the first one, so a truncated archive would read as a complete one with fewer members.
    Only an all-zero block (the end-of-archive marker, which tarfile stops at) ends it here;
    anything else raises, and tarfile passes the error on. At the very first header, tarfile
    itself says the file is not a tar archive."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            kind = type(e).__name__  # these subclasses are missing from typeshed
            if tf.offset == 0 or kind == "EOFHeaderError":
                raise
            if kind == "EmptyHeaderError":
                raise _Truncated("the archive ends without its end-of-archive marker") from None
            if kind == "TruncatedHeaderError":
                raise _Truncated("the archive ends inside a member header") from None
            raise _Truncated(f"a member header is corrupt ({e})") from None


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


Parts = tuple[str, ...]
_MAX_HOPS = 40  # symlinks followed in one lookup before the kernel gives up (ELOOP)


class _Checker:
    """The checks of each member that need no tree on disk, in archive order. `check_tarball`
    runs just these; the _Extractor runs them before writing each member."""

    def __init__(self, limits: ImportLimits, *, exact: bool = False) -> None:
        self.exact = exact
        self.mode_mask = 0o7777 if exact else 0o1777
        self.limits = limits
        self.entries = 0
        self.total = 0
        self.files: set[Parts] = set()  # regular files extracted: hard link targets
        self.links: dict[Parts, tuple[str, str]] = {}  # symlinks: member name, target
        self.dirs: dict[Parts, _DirMeta] = {}  # applied last: writes change mtimes

    def run(self, reader: _HashingReader) -> None:
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|",
                          tarinfo=_StrictTarInfo) as tf:
            while (m := tf.next()) is not None:
                # We never look members up by name: drop them to keep memory flat.
                tf.members.clear()  # type: ignore[attr-defined]  # missing from typeshed
                self._member(tf, m)
        if not self.exact:
            # A later member may have changed where an earlier link leads.
            for parts, (name, target) in self.links.items():
                self._check_link(name, parts, target)
        self._done()

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._check(m)
        if not parts:
            self.dirs[()] = self._dir_meta(m)
        elif m.isdir():
            self.dirs[parts] = self._dir_meta(m)
        else:
            self._replaced(parts)
            self._record(m, parts)

    def _check(self, m: tarfile.TarInfo) -> Parts:
        """The member's path, once it passed every check that needs no tree on disk."""
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
            return parts
        # A member is written through its parents, never through a link the archive made.
        for i in range(1, len(parts)):
            if parts[:i] in self.links:
                _refuse(m, f"its parent {'/'.join(parts[:i])!r} is a symlink")
            if parts[:i] in self.files:
                _refuse(m, f"its parent {'/'.join(parts[:i])!r} is not a directory")
        if m.isdir() and (parts in self.files or parts in self.links):
            _refuse(m, "a directory would replace an earlier non-directory member")
        if not m.isdir() and parts in self.dirs:
            _refuse(m, "would replace a directory")
        if m.isreg():
            self._check_size(m)
        elif m.issym():
            if not m.linkname or "\0" in m.linkname:
                _refuse(m, "empty or invalid symlink target")
            if not self.exact:
                self._check_link(m.name, parts, m.linkname)
        elif m.islnk() and _split(m, m.linkname) not in self.files:
            _refuse(m, f"hard link target {m.linkname!r} is not a regular file extracted "
                       "earlier from this archive")
        return parts

    def _check_link(self, name: str, parts: Parts, target: str) -> None:
        """Refuse a relative symlink that leads above the root once the archive's other
        links are followed: `a/l1 -> ..` is the root, so `a/l2 -> l1/..` is above it, which
        no count of `..` in one target shows. An absolute target (kept, see the module
        docstring) ends the walk: what follows it is no worse than the link itself."""
        if target.startswith("/"):
            return
        todo = [c for c in reversed(target.split("/")) if c not in ("", ".")]
        at = list(parts[:-1])  # a link resolves relative to its own directory
        hops = 0
        while todo:
            comp = todo.pop()
            if comp == "..":
                if not at:
                    _refuse_name(name, f"symlink target {target!r} escapes the image root")
                at.pop()
                continue
            at.append(comp)
            link = self.links.get(tuple(at))
            if link is None:
                continue  # a directory, or not there (yet): the walk goes on lexically
            hops += 1
            if hops > _MAX_HOPS:
                return  # the kernel gives up on the lookup (ELOOP) before reaching anything
            if link[1].startswith("/"):
                return
            at.pop()
            todo.extend(c for c in reversed(link[1].split("/")) if c not in ("", "."))

    def _check_size(self, m: tarfile.TarInfo) -> None:
        lim = self.limits
        if m.size > lim.max_member_bytes:
            _refuse(m, f"{m.size} bytes is more than {lim.max_member_bytes} "
                       "(ImportLimits.max_member_bytes)")
        self.total += m.size
        if self.total > lim.max_bytes:
            _refuse(m, f"the archive's files add up to more than {lim.max_bytes} bytes "
                       "(ImportLimits.max_bytes)")

    def _replaced(self, parts: Parts) -> None:
        """An earlier non-directory member of that name is gone."""
        self.files.discard(parts)
        self.links.pop(parts, None)

    def _record(self, m: tarfile.TarInfo, parts: Parts) -> None:
        if m.isreg() or m.islnk():
            self.files.add(parts)
        elif m.issym():
            self.links[parts] = (m.name, m.linkname)

    def _dir_meta(self, m: tarfile.TarInfo) -> _DirMeta:
        return _DirMeta(mode=m.mode & self.mode_mask, uid=m.uid, gid=m.gid, mtime=m.mtime)

    def _done(self) -> None:
        pass


class _Extractor(_Checker):
    def __init__(self, rootfs: Path, limits: ImportLimits, store_root: Path, *,
                 exact: bool = False) -> None:
        super().__init__(limits, exact=exact)
        self.rootfs = rootfs
        self.store_root = store_root
        self.as_root = os.geteuid() == 0
        self._parent: tuple[Parts, int] | None = None  # last parent dir fd, reused

    def run(self, reader: _HashingReader) -> None:
        try:
            super().run(reader)
        finally:
            self._drop_parent()

    def _done(self) -> None:
        self._apply_dir_meta()

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._check(m)
        if not parts:
            self.dirs[()] = self._dir_meta(m)
            return
        if m.isreg():
            self._check_space(m)
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
            self._replaced(parts)
        if m.isreg():
            self._write_file(tf, m, dfd, leaf)
        elif m.issym():
            self._symlink(m, dfd, leaf)
        elif m.islnk():
            self._hardlink(m, dfd, leaf)
        else:
            self._special(m, dfd, leaf)
        self._record(m, parts)

    def _check_space(self, m: tarfile.TarInfo) -> None:
        lim = self.limits
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

    def _symlink(self, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        os.symlink(m.linkname, leaf, dir_fd=dfd)  # its target was checked with the member
        if self.as_root:
            os.chown(leaf, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        _set_mtime(m.mtime, leaf, dfd)

    def _hardlink(self, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        tparts = _split(m, m.linkname)  # a regular file extracted earlier: checked
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
    _refuse_name(m.name, reason)


def _refuse_name(name: str, reason: str) -> NoReturn:
    raise PrereqError(f"refused tarball member {name!r}: {reason}",
                      hint="fix the archive; nothing was imported")
