"""Walking, hashing, measuring and removing the directory trees that images are made of.

Invariants: nothing here follows a symlink; `remove_tree` never deletes through a mount
point (a builder killed mid-run can leave proc, sys or a bind-mounted /dev inside its
staging dir, and deleting through those would damage the host).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

from rackfire.errors import ExecError
from rackfire.fswalk import resolve_in_root, walk

__all__ = ["copy_tree", "mounts_under", "remove_tree", "resolve_in_root", "tree_digest",
           "tree_size", "walk"]


def tree_digest(root: Path, extra: Iterable[str] = ()) -> str:
    """sha256 of a canonical listing: path, type, mode, owner, then content hash, link target
    or device number. Mtimes are left out so an unchanged tree rebuilt later hashes the same.
    Fields are NUL-separated: file names and link targets can hold anything but NUL."""
    h = hashlib.sha256()
    for rel, st in walk(root):
        mode = st.st_mode
        if stat.S_ISREG(mode):
            detail = _file_sha256(root / rel)
        elif stat.S_ISLNK(mode):
            detail = os.readlink(root / rel)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            detail = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        else:
            detail = ""
        fields = [rel, f"{mode:o}", str(st.st_uid), str(st.st_gid), detail]
        h.update(b"\0".join(os.fsencode(f) for f in fields) + b"\0\0")
    for item in extra:
        h.update(b"extra\0" + os.fsencode(item) + b"\0\0")
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_tree(src: Path, dst: Path, *, link: bool = True) -> None:
    """Copy the tree src to dst (which must not exist) with `cp -a`, never following
    symlinks. With link, files are hard links (`cp -al`) when src and dst are on one
    filesystem: only for trees nobody writes after, such as committed layers, as the files
    are then shared. Falls back to a real copy when linking fails (EXDEV across bind mounts,
    fs.protected_hardlinks)."""
    if link and os.stat(src).st_dev == os.stat(dst.parent).st_dev:
        r = subprocess.run(["cp", "-al", "--", str(src), str(dst)], capture_output=True,
                           text=True, check=False)
        if r.returncode == 0:
            return
        remove_tree(dst)
    r = subprocess.run(["cp", "-a", "--", str(src), str(dst)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        remove_tree(dst)
        raise ExecError(f"copying {src} to {dst} failed: {r.stderr.strip()[-2000:]}",
                        hint="check free space and permissions; nothing was kept")


def tree_size(root: Path) -> int:
    """Bytes of regular-file content under root, each inode counted once (hard links)."""
    seen: set[int] = set()
    total = 0
    for _rel, st in walk(root):
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split(" ")[4])
            if mp == base or mp.startswith(base + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete path and everything under it; first detach any mounts left inside it."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for mp in mounts_under(path):
        subprocess.run(["umount", "--lazy", "--", mp], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left = mounts_under(path)
    if left:
        raise ExecError(f"cannot remove {path}: still mounted inside it: {', '.join(left)}",
                        hint="unmount these by hand, then remove the directory")
    if os.geteuid() != 0:
        _make_dirs_writable(path)
    shutil.rmtree(path)


def _make_dirs_writable(path: Path) -> None:
    # Without root, a read-only directory (an image's proc/ is 0555) cannot be emptied.
    # Top-down, so each directory is opened up before os.walk lists it.
    os.chmod(path, 0o700)
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
