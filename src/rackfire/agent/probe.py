"""Health probes, run from the agent into the instance's own network namespace, so that
`http://127.0.0.1:8000/` means the instance's loopback, as the user wrote it."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable
from urllib.parse import urlsplit

from rackfire.errors import ExecError, RackfireError
from rackfire.model.stack import HealthSpec
from rackfire.net.nsenter import socket_in_netns
from rackfire.runtime.base import ExecHandle


def probe(netns: str | None, health: HealthSpec) -> tuple[bool, str]:
    """(passed, what was seen). Never raises: a probe that cannot run has failed."""
    try:
        return _probe(netns, health)
    except (OSError, ValueError, RackfireError) as e:
        return False, f"probe failed: {e}"


def _probe(netns: str | None, health: HealthSpec) -> tuple[bool, str]:
    if health.http:
        url = urlsplit(health.http)
        host, port = url.hostname or "127.0.0.1", url.port or 80
    else:
        host, port = "127.0.0.1", health.tcp or 0
    try:
        sock = (socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) if netns
                else socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    except OSError as e:
        return False, f"cannot enter its network namespace: {e}"
    with sock:
        sock.settimeout(health.timeout)
        try:
            sock.connect((host, port))
            if not health.http:
                return True, f"tcp {port} accepts"
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                         "User-Agent: rackfire-health\r\n\r\n".encode())
            status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as e:
            return False, f"{host}:{port}: {e.strerror or e}"
    parts = status.split()
    if len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400:
        return True, status
    return False, f"answered {status!r}"


MAX_BODY = 1 << 20


def http_get(netns: str | None, url: str, timeout: float = 2.0) -> str:
    """The body of a GET of `url` from inside `netns` (an appliance's stats page on its
    loopback), at most MAX_BODY bytes. Raises ExecError when it cannot."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        sock = (socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) if netns
                else socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        with sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                         "User-Agent: rackfire-metrics\r\n\r\n".encode())
            data = b""
            while len(data) <= MAX_BODY and (chunk := sock.recv(65536)):
                data += chunk
    except OSError as e:
        raise ExecError(f"{url}: {e.strerror or e}") from None
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if len(status.split()) < 2 or status.split()[1] != "200":
        raise ExecError(f"{url} answered {status!r}")
    if b"transfer-encoding: chunked" in head.lower():  # HAProxy's stats page, to HTTP/1.0
        body = _dechunk(body)
    return body[:MAX_BODY].decode(errors="replace")


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise ExecError("a chunked answer that does not parse") from None
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def probe_exec(start: Callable[[], ExecHandle], timeout: float) -> tuple[bool, str]:
    """An `exec` check: `start` runs the command inside the instance (no tty); exit 0 within
    `timeout` is healthy. The message is the exit code and the last line it printed (of
    stderr when it failed and said something there). Never raises."""
    try:
        proc = start().proc
    except (OSError, ValueError, RackfireError) as e:
        return False, f"cannot run the check: {e}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return False, f"timed out after {timeout:g}s"
    except (OSError, ValueError) as e:
        _stop(proc)
        return False, f"check failed: {e}"
    code = proc.returncode
    if code < 0:
        code = 128 - code  # killed by a signal, as a shell reports it
    line = _last_line(err if code and err.strip() else out) or _last_line(err)
    return code == 0, f"exit {code}" + (f": {line}" if line else "")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # the command's whole process group (see runtime/execproc.py)
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        # Something it started still holds the pipes: stop the starter and let go of them.
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _last_line(data: bytes | None) -> str:
    lines = (data or b"").decode(errors="replace").strip().splitlines()
    return lines[-1].strip()[:200] if lines else ""
