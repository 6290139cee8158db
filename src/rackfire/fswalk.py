"""Reading directory trees without following symlinks: shared by the image store and by
the CLI, which packs an app's source dir for upload. Reads only."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path


def walk(root: Path, *, skip_unreadable: bool = False,
         skip: Callable[[str, os.stat_result], bool] | None = None,
         ) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for root ("") and everything under it, in sorted order.
    With skip_unreadable, a directory we may not list is yielded but not descended into;
    an entry for which skip(rel, lstat) is true is neither yielded nor descended into.

    Iterative, because an untrusted tree can be deeper than Python's recursion limit.
    """
    yield "", os.lstat(root)
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        except PermissionError:
            if not skip_unreadable:
                raise
            continue
        subdirs = []
        for name, st in entries:
            child = f"{rel}/{name}" if rel else name
            if skip is not None and skip(child, st):
                continue
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(child)
        # Depth-first in sorted order: push in reverse so the smallest name is popped first.
        pending.extend(reversed(subdirs))


def resolve_in_root(root: Path, rel: str, *, jail: bool) -> str | None:
    """Where rel (a path under root) leads once its symlinks are followed, relative to root
    ("" for root itself); components that do not exist are kept as written. Links are read,
    never followed by the OS, so nothing outside root is touched.

    jail=True resolves as a chroot would: an absolute target starts again at root and `..`
    stops at it. jail=False returns None as soon as the path leaves root (an absolute target,
    or `..` above root), which a lexical check misses when a link points into a directory
    at another depth (`s -> .` then `s/../..`). None also after 40 links, as the kernel."""
    todo = [c for c in reversed(rel.split("/")) if c not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        comp = todo.pop()
        if comp == "..":
            if done:
                done.pop()
            elif not jail:
                return None
            continue
        path = root.joinpath(*done, comp)
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_link = False
        if not is_link:
            done.append(comp)  # a real directory (or missing): safe to look inside
            continue
        hops += 1
        if hops > 40:
            return None
        target = os.readlink(path)
        if target.startswith("/"):
            if not jail:
                return None
            done = []
        todo.extend(c for c in reversed(target.split("/")) if c not in ("", "."))
    return "/".join(done)
