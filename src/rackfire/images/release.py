"""Release layers: an uploaded app source plus its Python dependencies, as one layer that
goes on top of an image.

A release layer's rootfs holds only `app/`: a copy of the source, `app/.release` (the first
12 hex of the source digest, so the app can tell which release it runs) and, if the source
has a requirements.txt, `app/.deps/` installed by `pip install --target`. pip runs on the
host with the server's own interpreter (and so the host's pip configuration and mirrors)
but selects wheels for the image's Python version.

Invariants: a release is committed with source=release under the name `rel-<12 hex of the
layer digest>`, which no user image can take (ImageStore.commit), and its digest is
domain-separated from every other kind of layer, so removing a user image never removes a
release. Builds are cached by (source digest, image Python X.Y): pushing the same source
again reuses the layer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
from pathlib import Path

from rackfire.errors import NotFound, PrereqError
from rackfire.images.build import Progress, run_streaming
from rackfire.images.sources import source_dir
from rackfire.images.store import RELEASE_PREFIX, ImageInfo, ImageStore, check_digest
from rackfire.images.tree import copy_tree, remove_tree, resolve_in_root, tree_digest
from rackfire.model.stack import ImageSource

_PYTHON_RE = re.compile(r"python(3\.\d+)")


def build_release(store: ImageStore, source_digest: str, base_digest: str,
                  progress: Progress | None = None) -> ImageInfo:
    """The release layer of an uploaded source for the image with base_digest: built now,
    or the one an earlier build of the same source for the same Python left."""
    src = source_dir(store, source_digest)
    check_digest(base_digest, "image digest")
    base = store.by_digest(base_digest)
    if base is None:
        raise NotFound(f"no image layer {base_digest[:12]}")
    reqs = src / "requirements.txt"
    has_reqs = os.path.lexists(reqs)
    if has_reqs and (reqs.is_symlink() or not reqs.is_file()):
        raise PrereqError("the app's requirements.txt is not a regular file",
                          hint="make requirements.txt a plain file")
    if has_reqs:
        _check_requirements(reqs)
    version = image_python(base)
    if has_reqs and version is None:
        raise PrereqError(f"the app has a requirements.txt but image "
                          f"{base.name or base_digest[:12]} has no python3 "
                          "(usr/bin/python3 -> python3.X)",
                          hint="build the image with python3 (e.g. packages: [python3])")
    blob = json.dumps(["release", source_digest, version or ""])
    key = hashlib.sha256(blob.encode()).hexdigest()
    with store.build_lock(key):
        cached = store.cache_get(key)
        if cached is not None:
            info = store.by_digest(cached)
            if info is not None:
                return info
        with store.staging() as stage:
            rootfs = stage / "rootfs"
            rootfs.mkdir()
            os.chmod(rootfs, 0o755)  # noqa: S103 - layers are world-readable, whatever the umask
            app = rootfs / "app"
            # A real copy: pip may write into the tree (in-tree builds of local paths) and
            # must not write through hard links into the stored source.
            copy_tree(src, app, link=False)
            for ours in (".deps", ".release"):  # ours to write, whatever the upload had
                remove_tree(app / ours)
            fd = os.open(app / ".release", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o644)
                f.write(source_digest[:12] + "\n")
            if has_reqs and version is not None:
                _pip_install(app, version, progress)
            # The extra item keeps a release's digest apart from any other kind of layer.
            digest = tree_digest(rootfs, ("release",))
            info = store.commit(f"{RELEASE_PREFIX}{digest[:12]}", rootfs, digest,
                                ImageSource.RELEASE, build_key=key)
        store.cache_put(key, info.digest)
        return info


def _pip_install(app: Path, version: str, progress: Progress | None) -> None:
    if importlib.util.find_spec("pip") is None:
        raise PrereqError(f"pip is not installed for the server's Python ({sys.executable})",
                          hint=f"{sys.executable} -m ensurepip")
    # Wheels only: building an sdist would run its setup code on the host, as root (and for
    # the server's Python, not the image's).
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(app / ".deps"),
           "--requirement", "requirements.txt", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-warn-script-location", "--no-input",
           "--root-user-action=ignore"]
    if version != f"{sys.version_info.major}.{sys.version_info.minor}":
        # No .pyc either: they would be compiled for the server's version.
        cmd += ["--python-version", version, "--implementation", "cp", "--no-compile"]
    if progress is not None:
        progress(f"installing the app's requirements for Python {version}")
    # From the app dir, so relative paths in requirements.txt mean what they do for its author.
    run_streaming(cmd, progress, cwd=app, what="pip install -r requirements.txt")


def _check_requirements(reqs: Path) -> None:
    """Package requirements only: no pip options (another index, -r/-e of host paths) and
    no paths or URLs, which pip would read on the host."""
    for n, raw in enumerate(reqs.read_text(errors="replace").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-", ".", "/")) or "://" in line or "@" in line:
            raise PrereqError(f"requirements.txt line {n}: {line!r} is not a package "
                              "requirement", hint="name packages from the index (name==1.2): "
                              "options, paths and URLs are refused")


def image_python(base: ImageInfo) -> str | None:
    """The Python version ("3.11") of an image's python3, or None if it has none. A `from:
    host` layer has no /usr of its own: the runtime binds the host's, so look there."""
    root = Path("/") if "/usr" in base.host_binds else base.rootfs
    rel = resolve_in_root(root, "usr/bin/python3", jail=True)  # as inside the container
    if rel is None:
        return None
    m = _PYTHON_RE.fullmatch(rel.rsplit("/", 1)[-1])
    try:
        is_file = stat.S_ISREG(os.lstat(root / rel).st_mode)
    except OSError:
        return None
    return m[1] if m and is_file else None
