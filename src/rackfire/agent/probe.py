"""Health probes, run from the agent into the instance's own network namespace, so that
`http://127.0.0.1:8000/` means the instance's loopback, as the user wrote it."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from rackfire.errors import RackfireError
from rackfire.model.stack import HealthSpec
from rackfire.net.nsenter import socket_in_netns


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
