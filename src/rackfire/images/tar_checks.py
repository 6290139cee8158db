"""What an untrusted archive may hold (`safe_tar.py` lists the invariants): `ImportLimits`,
and the checks of each member that need no tree on disk, in archive order: names, types,
modes, sizes, hard links and where relative symlinks lead. `check_tarball` runs just these;
the extraction (`tar_extract.py`) runs them before it writes each member.
"""

from __future__ import annotations

import stat
import tarfile
from dataclasses import dataclass
from typing import IO, NoReturn, cast

from rackfire.errors import PrereqError
from rackfire.images.tar_stream import HashingReader, MiB, StrictTarInfo

GiB = 1024**3


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


@dataclass(slots=True)
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float


Parts = tuple[str, ...]
_MAX_HOPS = 40  # symlinks followed in one lookup before the kernel gives up (ELOOP)


class Checker:
    """The checks of each member that need no tree on disk, in archive order. `check_tarball`
    runs just these; the Extractor runs them before writing each member."""

    def __init__(self, limits: ImportLimits, *, exact: bool = False) -> None:
        self.exact = exact
        self.mode_mask = 0o7777 if exact else 0o1777
        self.limits = limits
        self.entries = 0
        self.total = 0
        self.files: set[Parts] = set()  # regular files extracted: hard link targets
        self.links: dict[Parts, tuple[str, str]] = {}  # symlinks: member name, target
        self.dirs: dict[Parts, _DirMeta] = {}  # applied last: writes change mtimes

    def run(self, reader: HashingReader) -> None:
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|",
                          tarinfo=StrictTarInfo) as tf:
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
            refuse(m, f"more than {self.limits.max_entries} entries (ImportLimits.max_entries)")
        parts = member_parts(m, m.name)
        special = m.ischr() or m.isblk() or m.isfifo()
        if special and not self.exact:
            refuse(m, "FIFOs are not allowed" if m.isfifo() else "device nodes are not allowed")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or special):
            refuse(m, f"unsupported member type {m.type!r}")
        if m.isreg() and m.mode & (stat.S_ISUID | stat.S_ISGID) and not self.exact:
            refuse(m, "setuid/setgid files are not allowed")
        if not parts:  # "./": the root itself
            if not m.isdir():
                refuse(m, "the archive root must be a directory")
            return parts
        # A member is written through its parents, never through a link the archive made.
        for i in range(1, len(parts)):
            if parts[:i] in self.links:
                refuse(m, f"its parent {'/'.join(parts[:i])!r} is a symlink")
            if parts[:i] in self.files:
                refuse(m, f"its parent {'/'.join(parts[:i])!r} is not a directory")
        if m.isdir() and (parts in self.files or parts in self.links):
            refuse(m, "a directory would replace an earlier non-directory member")
        if not m.isdir() and parts in self.dirs:
            refuse(m, "would replace a directory")
        if m.isreg():
            self._check_size(m)
        elif m.issym():
            if not m.linkname or "\0" in m.linkname:
                refuse(m, "empty or invalid symlink target")
            if not self.exact:
                self._check_link(m.name, parts, m.linkname)
        elif m.islnk() and member_parts(m, m.linkname) not in self.files:
            refuse(m, f"hard link target {m.linkname!r} is not a regular file extracted "
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
                    refuse_name(name, f"symlink target {target!r} escapes the image root")
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
            refuse(m, f"{m.size} bytes is more than {lim.max_member_bytes} "
                      "(ImportLimits.max_member_bytes)")
        self.total += m.size
        if self.total > lim.max_bytes:
            refuse(m, f"the archive's files add up to more than {lim.max_bytes} bytes "
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


def member_parts(m: tarfile.TarInfo, path: str) -> tuple[str, ...]:
    """Archive path -> components under the root; refuses absolute paths and `..`."""
    if path.startswith("/"):
        refuse(m, f"absolute path {path!r}")
    parts = tuple(c for c in path.split("/") if c not in ("", "."))
    if ".." in parts:
        refuse(m, f"path {path!r} has a '..' component")
    if any("\0" in c for c in parts):
        refuse(m, "NUL byte in path")
    return parts


def refuse(m: tarfile.TarInfo, reason: str) -> NoReturn:
    refuse_name(m.name, reason)


def refuse_name(name: str, reason: str) -> NoReturn:
    raise PrereqError(f"refused tarball member {name!r}: {reason}",
                      hint="fix the archive; nothing was imported")
