"""Building base image layers: from the host's own OS, with debootstrap, or from a tarball.

Invariants: every build happens in a staging dir from `ImageStore.staging()` and reaches the
store only through `ImageStore.commit` (or `tag`, to reuse a layer), so a failed or
interrupted build leaves nothing behind. Builds are keyed (`ImageInfo.build_key`) by what
they were built from; `ensure_image` rebuilds a name when its spec's key changes.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from rackfire.errors import ExecError, PrereqError
from rackfire.images.hostcache import HostCache
from rackfire.images.safe_tar import check_tarball, import_tarball, tarball_key
from rackfire.images.store import ImageInfo, ImageStore, check_name
from rackfire.images.tree import copy_tree, mounts_under, tree_digest, walk
from rackfire.model.stack import ImageSource, ImageSpec

Progress = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"  # what this project's hosts use in apt sources
HOST_BUILD_KEY = hashlib.sha256(b"host").hexdigest()

# Top-level library/binary dirs: copied as symlinks on merged-/usr hosts, else bind-mounted.
_HOST_BIN_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SKELETON_DIRS = (
    ("usr", 0o755), ("tmp", 0o1777), ("var", 0o755), ("var/tmp", 0o1777), ("var/log", 0o755),
    ("var/lib", 0o755), ("var/cache", 0o755), ("srv", 0o755), ("root", 0o700),
    ("home", 0o755), ("run", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
    ("mnt", 0o755), ("opt", 0o755),
)
_ETC_SECRETS = frozenset({"shadow", "gshadow", "machine-id"})
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")  # Debian policy 5.6.1
_SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]{0,39}$")
# No leading "-": debootstrap does not accept "--" before its positional arguments.
_MIRROR_RE = re.compile(r"^(https?|file)://[^\s,'\"\\]+$")


# -- from the host -------------------------------------------------------------------------

def build_host(store: ImageStore, name: str, *, host_root: Path = Path("/")) -> ImageInfo:
    """A tiny base layer for the host's own OS: a skeleton rootfs with a copy of /etc minus
    secrets. The runtime bind-mounts `host_binds` (/usr, and any real /bin, /lib, ... dirs)
    read-only at the same place. Rebuilding an unchanged host reuses the same layer."""
    check_name(name)
    with store.staging() as stage:
        rootfs = stage / "rootfs"
        rootfs.mkdir(mode=0o755)
        binds = ["/usr"]
        for d in _HOST_BIN_DIRS:
            src = host_root / d
            if src.is_symlink():
                os.symlink(os.readlink(src), rootfs / d)
            elif src.is_dir():
                (rootfs / d).mkdir()
                binds.append(f"/{d}")
        for rel, mode in _SKELETON_DIRS:
            (rootfs / rel).mkdir()
            os.chmod(rootfs / rel, mode)
        for rel in ("var/run", "var/lock"):  # /run links, as on the host
            if (host_root / rel).is_symlink():
                os.symlink(os.readlink(host_root / rel), rootfs / rel)
        _copy_etc(host_root / "etc", rootfs / "etc")
        host_binds = tuple(binds)
        digest = tree_digest(rootfs, (f"bind:{b}" for b in host_binds))
        return store.commit(name, rootfs, digest, ImageSource.HOST, host_binds,
                            build_key=HOST_BUILD_KEY)


def _etc_secret(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return (base in _ETC_SECRETS or base.endswith("-")  # passwd-, shadow-: backups
            or rel.startswith(("ssh/ssh_host_", "ssl/private/")))


def _copy_etc(src: Path, dst: Path) -> None:
    """Copy regular files, dirs and symlinks (never followed); skip secrets and anything else.
    Setuid/setgid bits are dropped; directory modes are applied last so that a read-only
    directory can still be filled when we are not root."""
    as_root = os.geteuid() == 0
    copied_dirs: set[str] = set()
    dir_modes: list[tuple[Path, int]] = []
    for rel, st in walk(src, skip_unreadable=True):
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if rel and (parent not in copied_dirs or _etc_secret(rel)):
            continue
        s, d = src / rel if rel else src, dst / rel if rel else dst
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            d.mkdir(mode=0o700)
            copied_dirs.add(rel)
            dir_modes.append((d, mode & 0o1777))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(mode):
            try:
                _copy_file(s, d, mode & 0o1777)
            except PermissionError:
                continue  # unreadable without root: not ours to copy
        else:
            continue  # sockets, FIFOs, devices: not part of an image
        if as_root:
            os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    for d, mode in reversed(dir_modes):
        os.chmod(d, mode)


def _copy_file(src: Path, dst: Path, mode: int) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd_in, "rb") as fin:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        with os.fdopen(fd_out, "wb") as fout:
            shutil.copyfileobj(fin, fout)
            os.fchmod(fd_out, mode)


# -- with debootstrap ----------------------------------------------------------------------

@functools.cache
def host_arch() -> str:
    """The Debian architecture of this host (amd64, arm64, ...)."""
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def debootstrap_key(suite: str, packages: Iterable[str], mirror: str | None) -> str:
    blob = json.dumps(["debootstrap", suite, sorted(set(packages)), mirror or DEFAULT_MIRROR,
                       host_arch()])
    return hashlib.sha256(blob.encode()).hexdigest()


def build_debootstrap(store: ImageStore, name: str, suite: str, packages: Iterable[str],
                      mirror: str | None = None, progress: Progress | None = None) -> ImageInfo:
    """A minbase Debian rootfs with `packages`, cached by (suite, packages, mirror, arch):
    a second build with the same inputs points the name at the first one's layer. Builds
    are also kept in the host-wide cache (hostcache.py), so a store on another data dir
    copies (hard-links) the tree instead of running debootstrap again."""
    check_name(name)
    pkgs = sorted(set(packages))
    mirror = mirror or DEFAULT_MIRROR
    bad = [p for p in pkgs if not isinstance(p, str) or not _PACKAGE_RE.match(p)]
    if bad:
        raise PrereqError(f"invalid Debian package names: {', '.join(map(repr, bad))}",
                          hint="names are lowercase letters, digits and + . -, two or more")
    if not _SUITE_RE.match(suite):
        raise PrereqError(f"invalid Debian suite {suite!r}", hint="e.g. bookworm or stable")
    if not _MIRROR_RE.match(mirror):
        raise PrereqError(f"invalid mirror URL {mirror!r}", hint=f"e.g. {DEFAULT_MIRROR}")
    key = debootstrap_key(suite, pkgs, mirror)
    with store.build_lock(key):
        cached = store.cache_get(key)
        if cached is not None:
            return store.tag(name, cached, build_key=key)
        host_cache = HostCache("debootstrap")
        info = _from_host_cache(store, name, key, host_cache, progress)
        if info is None:
            with host_cache.lock(key):
                # Another server may have built it while we waited for the lock.
                info = _from_host_cache(store, name, key, host_cache, progress)
                if info is None:
                    with store.staging() as stage:
                        target = stage / "rootfs"
                        _debootstrap(target, suite, pkgs, mirror, progress)
                        info = store.commit(name, target, tree_digest(target),
                                            ImageSource.DEBOOTSTRAP, build_key=key)
                    host_cache.put(key, info.rootfs, info.digest)
        store.cache_put(key, info.digest)
        return info


def _debootstrap(target: Path, suite: str, pkgs: list[str], mirror: str,
                 progress: Progress | None) -> None:
    """Run debootstrap into target, a path inside a staging dir (tests replace this)."""
    if shutil.which("debootstrap") is None:
        raise PrereqError("debootstrap is not installed", hint="apt-get install debootstrap")
    if os.geteuid() != 0:
        raise PrereqError("building a debootstrap image needs root")
    cmd = ["debootstrap", "--variant=minbase", f"--arch={host_arch()}"]
    if pkgs:
        cmd.append(f"--include={','.join(pkgs)}")
    run_streaming([*cmd, suite, str(target), mirror], progress)
    if mounts_under(target):
        raise ExecError(f"debootstrap left mounts in {target}")
    _drop_apt_caches(target)


def _from_host_cache(store: ImageStore, name: str, key: str, host_cache: HostCache,
                     progress: Progress | None) -> ImageInfo | None:
    """Commit the host cache's entry for key, if there is one, trusting the digest recorded
    with it (hashing the tree again would cost most of what the cache saves)."""
    hit = host_cache.get(key)
    if hit is None:
        return None
    rootfs, digest = hit
    if progress is not None:
        progress(f"using the host's debootstrap cache: {rootfs}")
    if store.by_digest(digest) is not None:
        return store.tag(name, digest, build_key=key)
    with store.staging() as stage:
        target = stage / "rootfs"
        # Hard links are safe: neither the cache entry nor a layer is written after commit.
        copy_tree(rootfs, target)
        return store.commit(name, target, digest, ImageSource.DEBOOTSTRAP, build_key=key)


def _drop_apt_caches(rootfs: Path) -> None:
    """Downloaded .debs and package lists: ~85 MB that every image would carry and nothing
    running needs (`apt-get update` fetches the lists again). Files only, never followed."""
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = rootfs / rel
        if d.is_symlink() or not d.is_dir():
            continue
        for e in os.scandir(d):
            if e.is_file(follow_symlinks=False) and e.name != "lock":
                os.unlink(e.path)
    for cache in ("pkgcache.bin", "srcpkgcache.bin"):
        p = rootfs / "var/cache/apt" / cache
        if p.is_file() and not p.is_symlink():
            p.unlink()


def run_streaming(cmd: list[str], progress: Progress | None, cwd: Path | None = None,
                  what: str = "") -> None:
    """Run cmd, feeding each output line to progress; ExecError with the last lines if it
    fails (named `what`, else cmd[0]). Its own process group, so an interruption kills dpkg
    and friends too."""
    tail: collections.deque[str] = collections.deque(maxlen=20)
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
                            cwd=cwd, start_new_session=True)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if progress is not None:
                progress(line)
        rc = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if rc != 0:
        raise ExecError(f"{what or cmd[0]} failed with exit code {rc}:\n" + "\n".join(tail),
                        hint="see the lines above; nothing was kept")


# -- by spec -------------------------------------------------------------------------------

def spec_build_key(spec: ImageSpec) -> str | None:
    """What an image built from spec would be keyed by; None if that cannot be known now
    (a tarball that is gone: then an existing image is kept)."""
    if spec.source is ImageSource.HOST:
        return HOST_BUILD_KEY
    if spec.source is ImageSource.DEBOOTSTRAP:
        return debootstrap_key(spec.suite, spec.packages, spec.mirror)
    if spec.path and os.path.isfile(spec.path):
        return tarball_key(Path(spec.path))
    return None


def check_image(store: ImageStore, spec: ImageSpec, where: str = "") -> None:
    """Refuse, before any change, a tarball image that ensure_image would fail to import:
    missing, not a regular file, unreadable, not a tar, truncated, or with a member the
    import refuses (check_tarball reads it once, writes nothing). Nothing to check when the
    image exists and would be kept (same tarball version, or the tarball is gone)."""
    if spec.source is not ImageSource.TARBALL:
        return
    existing = store.get(spec.name)
    key = spec_build_key(spec)
    if existing is not None and (key is None or existing.build_key == key):
        return
    if not spec.path:
        raise PrereqError(f"images.{spec.name}.path: from: tarball needs a path")
    try:
        check_tarball(Path(spec.path))
    except PrereqError as e:
        on = f" ({where})" if where else ""
        raise PrereqError(f"images.{spec.name}.path: image {spec.name!r}: {e.message}{on}",
                          hint=e.hint.replace("nothing was imported", "nothing was changed")
                          or "fix the path or the file; nothing was changed") from None


def ensure_image(store: ImageStore, spec: ImageSpec,
                 progress: Progress | None = None) -> ImageInfo:
    """The image named spec.name, built now if it is missing or was built from a different
    spec (other packages, another tarball version)."""
    existing = store.get(spec.name)
    key = spec_build_key(spec)
    if existing is not None and (key is None or existing.build_key == key):
        return existing
    if spec.source is ImageSource.HOST:
        return build_host(store, spec.name)
    if spec.source is ImageSource.DEBOOTSTRAP:
        return build_debootstrap(store, spec.name, spec.suite, spec.packages, spec.mirror,
                                 progress)
    if spec.source is ImageSource.RELEASE:
        raise PrereqError(f"image {spec.name!r}: release layers are built from a pushed app, "
                          "not declared as images", hint="use from: host, debootstrap or tarball")
    if not spec.path:
        raise PrereqError(f"image {spec.name!r}: source tarball needs a path")
    return import_tarball(store, spec.name, Path(spec.path))
