"""Extracting an untrusted archive into a private dir (`safe_tar.py` lists the invariants):
the member checks of `tar_checks.py`, then each member written through directory fds opened
with O_NOFOLLOW from the root, so no symlink is ever followed; directories' modes and mtimes
applied last, deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from pathlib import Path

from rackfire.images.tar_checks import Checker, ImportLimits, Parts, member_parts, refuse
from rackfire.images.tar_stream import HashingReader, MiB

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Extractor(Checker):
    def __init__(self, rootfs: Path, limits: ImportLimits, store_root: Path, *,
                 exact: bool = False) -> None:
        super().__init__(limits, exact=exact)
        self.rootfs = rootfs
        self.store_root = store_root
        self.as_root = os.geteuid() == 0
        self._parent: tuple[Parts, int] | None = None  # last parent dir fd, reused

    def run(self, reader: HashingReader) -> None:
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
                refuse(m, "a directory would replace an earlier non-directory member")
            self.dirs[parts] = self._dir_meta(m)
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                refuse(m, "would replace a directory")
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
            refuse(m, f"not enough free space in {self.store_root}: {free} bytes free, "
                      f"{m.size} needed plus {lim.min_free_bytes} kept free")

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, dfd: int, leaf: str) -> None:
        src = tf.extractfile(m)
        if src is None:
            refuse(m, "member has no data")
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
        tparts = member_parts(m, m.linkname)  # a regular file extracted earlier: checked
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
                    refuse(m, f"its parent {'/'.join(parts[:i + 1])!r} is {what}")
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


def _set_mtime(mtime: float, target: int | str, dir_fd: int | None = None) -> None:
    # An absurd mtime is not worth refusing the image for.
    with contextlib.suppress(OverflowError, ValueError):
        if isinstance(target, int):
            os.utime(target, (mtime, mtime))
        else:
            os.utime(target, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)

