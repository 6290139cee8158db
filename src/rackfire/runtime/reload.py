"""Reloading an instance's rendered files in place: the parts both runtimes share.

Files are written under a root the instance can change (a container's overlay, a process'
working dir), so every path is walked one component at a time, never following a symlink:
an instance that swapped `/etc` for a link to `/` must not get the host's files written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rackfire.errors import ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.instance import InstanceRequest
from rackfire.runtime.base import ExecHandle
from rackfire.runtime.layout import InstanceDir, rendered_paths, update_meta

RELOAD_TIMEOUT = 30.0  # seconds a reload command may take
DEFAULT_MODE = 0o644

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(path: str) -> tuple[str, ...]:
    parts = PurePosixPath(path).parts
    if not path.startswith("/") or len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise PrereqError(f"files: {path} is not a normalized absolute file path")
    return parts[1:]


def _open_parent(root: Path, parts: tuple[str, ...], *, create: bool) -> int | None:
    """An fd of the dir holding the last of `parts` under `root`, walked without following
    symlinks; None if a dir is missing (and not `create`)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise
    return fd


def write_beneath(root: Path, path: str, content: bytes, mode: int) -> None:
    """Replace `root`/`path` atomically (a temp file in its dir, renamed over it), so a
    reader sees the old or the new file, never half of one."""
    parts = _parts(path)
    try:
        fd = _open_parent(root, parts, create=True)
    except OSError as e:  # ELOOP/ENOTDIR: a component is a symlink or a file
        raise ExecError(f"cannot write {path} under {root}: {e.strerror}") from None
    assert fd is not None
    tmp = f".{parts[-1]}.rackfire-{secrets.token_hex(4)}"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      mode, dir_fd=fd)
        try:
            os.fchmod(out, mode)  # not narrowed by the umask
            view = memoryview(content)
            while view:
                view = view[os.write(out, view):]
        finally:
            os.close(out)
        os.rename(tmp, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise ExecError(f"cannot write {path} under {root}: {e.strerror}") from None
    finally:
        os.close(fd)


def unlink_beneath(root: Path, path: str) -> None:
    """Remove `root`/`path` if it is there (a file, link or whiteout; not a dir)."""
    parts = _parts(path)
    try:
        fd = _open_parent(root, parts, create=False)
    except OSError:
        return  # a symlink or a file on the way: nothing of ours is under it
    if fd is None:
        return
    try:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)


def mode_of(path: Path) -> int:
    """The permission bits of a rendered file as its config layer has it."""
    try:
        st = path.lstat()
    except OSError:
        return DEFAULT_MODE
    return st.st_mode & 0o7777 if stat.S_ISREG(st.st_mode) else DEFAULT_MODE


def changed_files(config: Path, req: InstanceRequest) -> list[tuple[str, bytes]]:
    """The rendered files whose content differs from the copy under `config`."""
    out = []
    for path, content in req.files:
        data = content.encode()
        try:
            same = (config / path.lstrip("/")).read_bytes() == data
        except OSError:
            same = False
        if not same:
            out.append((path, data))
    return out


def check_layout(meta: dict[str, Any], req: InstanceRequest) -> None:
    """A reload changes contents only: the same paths as the instance renders now."""
    if sorted(meta.get("files", ())) != sorted(rendered_paths(req)):
        raise PrereqError(f"{req.key}: a reload cannot add or remove files",
                          hint="this change needs a reconfigure")


def begin(meta: dict[str, Any] | None, req: InstanceRequest,
          host: str) -> tuple[dict[str, Any], signal.Signals | None]:
    """Checks before a reload writes anything: the instance's meta, and the signal to send
    if the role reloads on one (else it runs `reload.exec`)."""
    if meta is None:
        raise NotFound(f"instance {req.key} does not exist on host {host}")
    check_layout(meta, req)
    spec = req.reload
    return meta, parse_signal(spec.signal) if spec is not None and spec.signal else None


def parse_signal(name: str) -> signal.Signals:
    """`HUP`, `SIGHUP` or `1`."""
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise PrereqError(f"reload: unknown signal {name!r}", hint="e.g. HUP or USR2") from None


def trigger(d: InstanceDir, meta: dict[str, Any], req: InstanceRequest,
            sig: signal.Signals | None, send: Callable[[signal.Signals], object],
            run: Callable[[list[str]], ExecHandle]) -> None:
    """Make a running instance re-read its new files: `send` it the signal, or `run` the
    reload command and wait for it. If it fails, the old config hash goes back in meta, so
    the next reconcile reloads again."""
    spec = req.reload
    try:
        if sig is not None:
            send(sig)
        elif spec is not None and spec.exec:
            wait_reload(run(list(spec.exec)), spec.exec, str(req.key))
    except RackfireError:
        update_meta(d, config_hash=meta.get("config_hash", ""))
        raise


def wait_reload(handle: ExecHandle, argv: tuple[str, ...], what: str,
                timeout: float = RELOAD_TIMEOUT) -> None:
    """Wait for a reload command; its output in the error if it fails or takes too long."""
    proc = handle.proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # its whole process group (execproc)
        out, err = proc.communicate()
        raise ExecError(f"{what}: reload command {list(argv)} did not finish in "
                        f"{timeout:g} s: {_tail(out + err)}") from None
    if proc.returncode != 0:
        raise ExecError(f"{what}: reload command {list(argv)} exited with "
                        f"{proc.returncode}: {_tail(out + err)}")


def _tail(output: bytes, limit: int = 2000) -> str:
    text = output.decode(errors="replace").strip()
    return text[-limit:] or "(no output)"
