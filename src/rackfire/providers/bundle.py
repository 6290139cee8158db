"""The bundle a host is installed from: this rackfire and every package its agent runs on,
as this server has them, in one tarball for a host with the same Python (major.minor) and
machine.
No index, no network and no compiler on the host: the bundle carries the compiled
extensions this server itself runs.

    rackfire-<version>-<digest12>/
        lib/          the packages (rackfire's own source, and its requirements' files)
        run.py        `python3 -I -S run.py ARGS` is `rackfire ARGS`, from lib/ only
        BUNDLE.json   {version, python, machine, digest}

Every module is there compiled too (unchecked-hash .pyc: the digest vouches for them), so
an agent starts without compiling. The tarball is reproducible (sorted, owner root, times
zeroed), so its digest names its content: a host already on that digest is up to date, and
a built one is kept and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import platform
import posixpath
import py_compile
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import rackfire

RUN = """\
import os, sys
sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")]
from rackfire.entry import main
main()
"""
_SKIP = re.compile(r"(^|/)(__pycache__|tests?)(/|$)|\\.pyc$")


@dataclass(frozen=True, slots=True)
class Bundle:
    path: Path  # the tarball
    version: str
    python: str  # "3.11"
    machine: str  # "x86_64"
    digest: str  # sha256 of the tarball

    @property
    def name(self) -> str:
        return f"rackfire-{self.version}-{self.digest[:12]}"


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def build(directory: Path) -> Bundle:
    """The bundle of this rackfire, in `directory`: made once per content. Whether it is
    made already is known from the files' names, sizes and times, without making it."""
    directory.mkdir(parents=True, exist_ok=True)
    files = list(_files())
    seen = hashlib.sha256(json.dumps([(rel, (st := path.stat()).st_size, st.st_mtime_ns)
                                      for rel, path in files]).encode()).hexdigest()[:16]
    index = directory / f"made-{seen}.json"
    try:
        made = json.loads(index.read_text())
        known = Bundle(Path(made["path"]), made["version"], made["python"], made["machine"],
                       made["digest"])
        if known.path.exists():
            return known
    except (OSError, ValueError, KeyError, TypeError):
        pass
    data = _tarball(files)
    digest = hashlib.sha256(data).hexdigest()
    bundle = Bundle(directory / f"rackfire-{rackfire.__version__}-{digest[:12]}.tar",
                    rackfire.__version__, python_tag(), platform.machine(), digest)
    if not bundle.path.exists():
        tmp = bundle.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(bundle.path)
    index.write_text(json.dumps({**{k: getattr(bundle, k) for k in Bundle.__slots__},
                                 "path": str(bundle.path)}))
    return bundle


# What only the server uses (the SSH client that installs hosts, and its cryptography: 18
# of the bundle's 40 MB): not in a host's bundle, which runs the agent.
SERVER_ONLY = frozenset({"asyncssh"})


def requirements(name: str = "rackfire",
                 leave_out: frozenset[str] = SERVER_ONLY) -> list[metadata.Distribution]:
    """The distributions `name` runs on, transitively, for this Python (no extras), but
    `leave_out` and what only they need."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = _key(dist.metadata["Name"])
        if key in seen or key in leave_out:
            continue
        seen[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [d for k, d in sorted(seen.items()) if k != _key(name)]


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _files() -> Iterator[tuple[str, Path]]:
    """(path in lib/, file here) for rackfire's own package and every requirement's files."""
    own = Path(rackfire.__file__).resolve().parent
    for f in sorted(own.rglob("*")):
        rel = f.relative_to(own.parent).as_posix()
        if f.is_file() and not _SKIP.search(rel):
            yield rel, f
    for dist in requirements():
        for rel in sorted(str(p) for p in dist.files or ()):
            path = Path(str(dist.locate_file(rel)))
            if rel.startswith("..") or _SKIP.search(rel) or not path.is_file():
                continue  # scripts outside site-packages, caches
            yield rel, path


def _tarball(files: list[tuple[str, Path]]) -> bytes:
    top = f"rackfire-{rackfire.__version__}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar, \
            tempfile.TemporaryDirectory() as tmp:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        for rel, path in files:
            add(f"lib/{rel}", path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644)
            if rel.endswith(".py"):
                pyc = _compiled(path, rel, Path(tmp))
                if pyc is not None:
                    add(f"lib/{posixpath.dirname(rel)}/__pycache__/{pyc[0]}", pyc[1])
        add("run.py", RUN.encode())
        add("BUNDLE.json", json.dumps({"version": rackfire.__version__,
                                       "python": python_tag(),
                                       "machine": platform.machine()}).encode())
    return buf.getvalue()


def _compiled(path: Path, rel: str, tmp: Path) -> tuple[str, bytes] | None:
    """The module compiled for this Python, checked by nothing (the bundle's digest vouches
    for it): a host's agent starts without compiling its thousand modules first (3 s of CPU
    each, which 20 bed hosts on 2 cores pay in turn). None if it does not compile."""
    name = Path(importlib.util.cache_from_source(rel)).name
    out = tmp / "module.pyc"
    try:
        py_compile.compile(str(path), cfile=str(out), dfile=rel, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return name, out.read_bytes()
