"""The bundle a host is installed from: this rackfire and every package it runs on, as this
server has them, in one tarball for a host with the same Python (major.minor) and machine.
No index, no network and no compiler on the host: the bundle carries the compiled
extensions this server itself runs.

    rackfire-<version>-<digest12>/
        lib/          the packages (rackfire's own source, and its requirements' files)
        run.py        `python3 -I -S run.py ARGS` is `rackfire ARGS`, from lib/ only
        BUNDLE.json   {version, python, machine, digest}

The tarball is reproducible (sorted, owner root, times zeroed), so its digest names its
content: a host already on that digest is up to date, and a built one is kept and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import sys
import tarfile
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
    """The bundle of this rackfire, in `directory` (made once per content)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = _tarball()
    digest = hashlib.sha256(data).hexdigest()
    bundle = Bundle(directory / f"rackfire-{rackfire.__version__}-{digest[:12]}.tar",
                    rackfire.__version__, python_tag(), platform.machine(), digest)
    if not bundle.path.exists():
        tmp = bundle.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(bundle.path)
    return bundle


def requirements(name: str = "rackfire") -> list[metadata.Distribution]:
    """The distributions `name` runs on, transitively, for this Python (no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = _key(dist.metadata["Name"])
        if key in seen:
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


def _tarball() -> bytes:
    top = f"rackfire-{rackfire.__version__}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        for rel, path in _files():
            add(f"lib/{rel}", path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644)
        add("run.py", RUN.encode())
        add("BUNDLE.json", json.dumps({"version": rackfire.__version__,
                                       "python": python_tag(),
                                       "machine": platform.machine()}).encode())
    return buf.getvalue()
