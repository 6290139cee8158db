"""Image layers between hosts: the controller's store packs a layer as a tar stream; a joined
host's store receives it, checks it against the digest it asked for, and keeps it.

The stream is a plain PAX tar, written here member by member (a big file never sits in
memory): `layer.json` first (format, digest, source, host_binds; for a tarball import also
its tree digest), then `rootfs/` and everything under it in `walk` order, hard links as
links to the first path of their inode. Mtimes are sent but are not part of any digest.

Verification. Host, debootstrap and release layers are named by the tree digest of their
rootfs with the extras their builder adds (`bind:<path>` per host bind for `from: host`,
build.py; `release` for release layers, release.py; none for debootstrap), so the receiver
recomputes exactly that and refuses anything else. A tarball import is named by the sha256
of the archive it came from, which is not kept anywhere: its stream carries the tree digest
the controller computed, and the receiver checks the tree against that. That catches
corruption, truncation and a mixed-up layer, but for which archive the tree came from it
trusts the controller, as it does for everything else it is asked to run.

Invariants: extraction is safe_tar's in exact mode (no member lands outside the staging
dir, no symlink is followed, ImportLimits hold, the free space is kept); whatever fails
leaves nothing behind (it all happens in a staging dir); a layer reaches the store only
verified, through `ImageStore.add_fetched`, so it is unnamed and marked `fetched`; two
receives of one digest are serialized by the store's build lock, and the second finds the
first one's layer. Receiving needs root, as the agent is: only root can give the files
their owners back, and owners are part of the digest.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.images.safe_tar import extract_tarball
from rackfire.images.store import ImageInfo, ImageStore, check_digest
from rackfire.images.tar_checks import ImportLimits
from rackfire.images.tar_stream import MiB
from rackfire.images.tree import tree_digest, walk
from rackfire.model.stack import ImageSource

LayerSource = Callable[[str], Iterator[bytes]]
"""digest -> the layer's tar stream (pack_layer's), from wherever this host gets layers."""

FORMAT = 1
HEADER = "layer.json"
_MAX_HEADER = 64 * 1024
_CHUNK = MiB
_SPACE_CHECK = 64 * MiB  # how often (in bytes spooled) the free space is looked at again


@dataclass(frozen=True, slots=True)
class _Header:
    digest: str
    source: ImageSource
    host_binds: tuple[str, ...]
    tree_digest: str  # what the rootfs hashes to without extras: checked for tarball layers


def layer_extras(source: str, host_binds: tuple[str, ...]) -> tuple[str, ...]:
    """The extra items the builder of a layer of this source hashed into its digest."""
    if source == ImageSource.RELEASE and not host_binds:
        return ("release",)
    if source == ImageSource.HOST:
        return tuple(f"bind:{b}" for b in host_binds)
    if source == ImageSource.DEBOOTSTRAP and not host_binds:
        return ()
    raise PrereqError(f"a {source or 'unknown'} layer with host binds {list(host_binds)} has "
                      "no tree digest to check", hint="the controller sent a layer of no kind "
                      "this version builds; nothing was kept")


# -- sending -------------------------------------------------------------------------------

def pack_layer(store: ImageStore, digest: str) -> Iterator[bytes]:
    """The tar stream of layer `digest`, in chunks of about a MiB. Looked up now (NotFound
    before any byte is sent); read as it is consumed. A layer removed meanwhile cuts the
    stream short, which the receiver refuses."""
    check_digest(digest)
    info = store.by_digest(digest)
    if info is None:
        raise NotFound(f"no image layer {digest[:12]} on the controller",
                       hint="it was removed, or never built here")
    return _coalesce(_stream(info))


def _stream(info: ImageInfo) -> Iterator[bytes]:
    header: dict[str, object] = {"format": FORMAT, "digest": info.digest,
                                 "source": info.source, "host_binds": list(info.host_binds)}
    if info.source == ImageSource.TARBALL:  # its digest is not one the receiver can compute
        header["tree_digest"] = tree_digest(info.rootfs)
    blob = json.dumps(header, sort_keys=True).encode()
    ti = _tarinfo(HEADER, 0o644, 0, 0, 0)
    ti.size = len(blob)
    yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    yield blob + _padding(len(blob))
    first: dict[tuple[int, int], str] = {}  # inode -> the path it was sent under
    for rel, st in walk(info.rootfs):
        path = info.rootfs / rel if rel else info.rootfs
        name = f"rootfs/{rel}" if rel else "rootfs"
        ti = _tarinfo(name, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime))
        mode = st.st_mode
        send_data = False
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISREG(mode):
            inode = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and inode in first:
                ti.type, ti.linkname = tarfile.LNKTYPE, first[inode]
            else:
                first[inode] = name
                ti.type, ti.size, send_data = tarfile.REGTYPE, st.st_size, True
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            raise ExecError(f"image layer {info.digest[:12]}: {rel} is a socket, which a tar "
                            "stream cannot carry")
        yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if send_data:
            yield from _file_data(path, st.st_size)
            yield _padding(st.st_size)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # end of archive


def _tarinfo(name: str, mode: int, uid: int, gid: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
    ti.uname = ti.gname = ""  # numbers only: the receiver's names may differ
    return ti


def _file_data(path: Path, size: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        left = size
        while left:
            data = f.read(min(_CHUNK, left))
            if not data:
                raise ExecError(f"{path} shrank while it was being sent: a layer is never "
                                "written after commit")
            left -= len(data)
            yield data


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _coalesce(parts: Iterator[bytes]) -> Iterator[bytes]:
    """Headers are 512 bytes each: send them a MiB at a time, not one by one."""
    buf = bytearray()
    for p in parts:
        buf += p
        if len(buf) >= _CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


# -- receiving -----------------------------------------------------------------------------

def receive_layer(store: ImageStore, digest: str, chunks: Iterable[bytes],
                  limits: ImportLimits | None = None) -> ImageInfo:
    """Keep the layer `digest` that `chunks` (pack_layer's stream) carries, verified; or the
    one already in the store, without reading `chunks`. PrereqError, and nothing kept, if
    the stream is not that layer."""
    check_digest(digest)
    limits = limits or ImportLimits()
    try:
        with store.build_lock(digest):
            found = store.by_digest(digest)
            if found is not None:
                return found
            with store.staging() as stage:
                spool = stage / "stream.tar"
                _spool(chunks, spool, limits, store.root)
                tree = stage / "tree"
                tree.mkdir(mode=0o700)
                extract_tarball(spool, tree, limits, store.root, exact=True)
                spool.unlink()
                header = _read_header(tree, digest)
                rootfs = tree / "rootfs"
                _verify(rootfs, header)
                return store.add_fetched(rootfs, digest, header.source, header.host_binds)
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):  # an unread HTTP stream gives its connection back
            close()


def _spool(chunks: Iterable[bytes], path: Path, limits: ImportLimits, space_root: Path) -> None:
    cap = limits.max_stream_bytes
    total, next_check = 0, 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise PrereqError(f"the layer stream is larger than {cap} bytes",
                                  hint="raise ImportLimits.max_bytes; nothing was kept")
            if total >= next_check:
                vfs = os.statvfs(space_root)
                free = vfs.f_bavail * vfs.f_frsize
                if free < limits.min_free_bytes + _SPACE_CHECK:
                    raise PrereqError(f"not enough free space in {space_root} to receive an "
                                      f"image layer: {free} bytes free",
                                      hint="free some space; nothing was kept")
                next_check = total + _SPACE_CHECK
            out.write(chunk)


def _read_header(tree: Path, digest: str) -> _Header:
    entries = sorted(os.listdir(tree))
    if entries != sorted([HEADER, "rootfs"]):
        raise PrereqError(f"the stream of layer {digest[:12]} holds {entries}, not "
                          f"{HEADER} and rootfs/", hint="nothing was kept")
    if not stat.S_ISDIR(os.lstat(tree / "rootfs").st_mode):
        raise PrereqError(f"the stream of layer {digest[:12]}: rootfs is not a directory")
    fd = os.open(tree / HEADER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PrereqError(f"the stream of layer {digest[:12]}: {HEADER} is not a file")
        raw = f.read(_MAX_HEADER + 1)
    try:
        if len(raw) > _MAX_HEADER:
            raise ValueError("too large")
        d = json.loads(raw)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, this version reads {FORMAT}")
        binds = d.get("host_binds", [])
        if not isinstance(binds, list) or not all(isinstance(b, str) for b in binds):
            raise ValueError("host_binds is not a list of paths")
        header = _Header(str(d.get("digest")), ImageSource(d.get("source")), tuple(binds),
                         str(d.get("tree_digest", "")))
    except (ValueError, TypeError, AttributeError) as e:
        raise PrereqError(f"the stream of layer {digest[:12]} has an unreadable {HEADER}: {e}",
                          hint="is the controller the same version as this agent?") from None
    if header.digest != digest:
        raise PrereqError(f"asked for layer {digest[:12]}, the controller sent "
                          f"{header.digest[:12]}", hint="nothing was kept")
    return header


def _verify(rootfs: Path, header: _Header) -> None:
    extras: tuple[str, ...]
    if header.source == ImageSource.TARBALL:
        check_digest(header.tree_digest, "tree digest")
        expected, extras = header.tree_digest, ()
    else:
        expected, extras = header.digest, layer_extras(header.source, header.host_binds)
    got = tree_digest(rootfs, extras)
    if got != expected:
        raise PrereqError(f"image layer {header.digest[:12]} as received hashes to "
                          f"{got[:12]}, not {expected[:12]}: refused, nothing was kept",
                          hint="fetch it again; if it fails again, the controller's copy "
                               "differs from its digest")
