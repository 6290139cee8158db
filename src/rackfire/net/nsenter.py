"""Network namespace syscalls on the calling thread, without subprocesses or forks.

A network namespace belongs to a thread, not to a process, so one thread can step into a
namespace, create a socket there and step back out; the socket stays bound to the namespace it
was created in for its whole life. This is how the agent health-checks `127.0.0.1:8000`
inside an instance and talks netlink inside it.

Invariants:
- Every function returns with the calling thread back in the namespace it started in, or
  raises `NetnsStuck` if that is impossible (only if the process lost CAP_SYS_ADMIN).
- Nothing here forks: pyroute2's own netns helpers fork a child per call, which is slow
  (~10 ms) and unsafe in a long-running multi-threaded server.
- `run_in_netns` must not be handed code that awaits or hands work to other threads: only the
  calling thread moves. Signal handlers run on the main thread, so prefer worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

from rackfire.errors import ExecError, NotFound

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_BIND = 0x1000
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_OWN_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

T = TypeVar("T")


class NetnsStuck(ExecError):
    """The calling thread could not return to its own network namespace."""

    code = "netns_stuck"


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_path(netns: str) -> str:
    """`/run/netns/<name>` for a name; a path is taken as it is."""
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


def is_netns(path: str) -> bool:
    """Whether `path` is a mounted network namespace (not a stale file left by a crash)."""
    try:
        return os.stat(path).st_dev == os.stat(_OWN_NETNS).st_dev  # both live on nsfs
    except FileNotFoundError:
        return False


@contextmanager
def _moved(move: Callable[[], int], what: str) -> Iterator[None]:
    """Run `move` (a setns or unshare syscall), then always bring the thread back.

    If `move` fails the thread never left, so there is nothing to undo.
    """
    own = os.open(_OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(move(), what)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                tid = threading.get_native_id()
                raise NetnsStuck(f"thread {tid} is stuck in another network namespace: "
                                 f"setns back: {os.strerror(err)}")
    finally:
        os.close(own)


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Call `fn` with the calling thread inside `netns` (a name or a path)."""
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NotFound(f"network namespace {path} does not exist") from e
    try:
        with _moved(lambda: int(_libc.setns(target, CLONE_NEWNET)), f"setns {path}"):
            return fn()
    finally:
        os.close(target)


def socket_in_netns(netns: str, family: int = socket.AF_INET,
                    type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A new socket that lives in `netns` (a name or a path); the caller closes it."""
    return run_in_netns(netns, lambda: socket.socket(family, type, proto))


def _share_netns_dir() -> None:
    # As iproute2 does: make the directory a shared mount point, so that a netns mounted or
    # unmounted here also appears in or leaves mount namespaces copied from ours later.
    os.makedirs(NETNS_DIR, exist_ok=True)
    d = NETNS_DIR.encode()
    if _libc.mount(b"none", d, None, _MS_SHARED | _MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        _check(-1, f"make {NETNS_DIR} shared")
    _check(_libc.mount(d, d, b"none", _MS_BIND | _MS_REC, None), f"bind {NETNS_DIR}")
    _check(_libc.mount(b"none", d, None, _MS_SHARED | _MS_REC, None), f"share {NETNS_DIR}")


def create_netns(name: str) -> str:
    """Create the named netns (like `ip netns add`) and return its path; it must not exist."""
    _share_netns_dir()
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    try:
        # unshare moves only this thread into a fresh namespace; the bind mount keeps that
        # namespace alive after the thread has gone back.
        with _moved(lambda: int(_libc.unshare(CLONE_NEWNET)), "unshare(CLONE_NEWNET)"):
            _check(_libc.mount(_OWN_NETNS.encode(), path.encode(), b"none", _MS_BIND, None),
                   f"mount {path}")
    except BaseException:
        remove_netns(name)
        raise
    return path


def remove_netns(name: str) -> None:
    """Unmount and delete the named netns (like `ip netns del`); missing is fine.

    The namespace itself lives on while a process or socket still holds it.
    """
    path = netns_path(name)
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: a stale file, not a mount
            _check(-1, f"umount {path}")
    with suppress(FileNotFoundError):
        os.unlink(path)
