"""Existing servers over SSH (asyncssh): key auth only, the server's host key checked
against the fingerprint the hosts file pins or the known_hosts file it names, and refused
when it differs or is not there (no trust on first use: a changed key is what a man in the
middle looks like). Commands go as argv, each word quoted for the remote shell; files go
over SFTP.

Every failure is an SshError naming the host and the step (connect, host key, login, the
command) with what the server said, so that one host's failure is reported and the others
carry on.
"""

from __future__ import annotations

import hmac
import os
import shlex
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # asyncssh names DSA keys, which cryptography deprecates on import; none is used here.
    warnings.filterwarnings("ignore", "DSA is deprecated", Warning)
    import asyncssh

from rackfire.errors import ExecError
from rackfire.model.hostsfile import SshTarget

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 300.0


class SshError(ExecError):
    """A step on a host failed: `host`, `step` and what the server said."""

    def __init__(self, host: str, step: str, message: str, hint: str = "") -> None:
        self.host, self.step, self.said = host, step, message
        super().__init__(f"{host}: {step}: {message}", hint=hint)


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str


class _Pinned(asyncssh.SSHClient):
    """Trusts exactly one host key, by its SHA256 fingerprint; remembers the one it saw."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint, self.seen = fingerprint, ""

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.seen = str(key.get_fingerprint("sha256"))
        return hmac.compare_digest(self.seen, self.fingerprint)


class Session:
    """One connection to one host."""

    def __init__(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        self.name, self.conn = name, conn

    async def run(self, argv: Sequence[str], *, step: str = "", input: str | None = None,
                  timeout: float = COMMAND_TIMEOUT, check: bool = True) -> Ran:
        """`argv` on the host; an SshError with its stderr if it exits non-zero (`check`)."""
        step = step or argv[0]
        try:
            r = await self.conn.run(shlex.join(argv), input=input, timeout=timeout,
                                    check=False)
        except asyncssh.ProcessError as e:  # not raised with check=False; kept for safety
            raise SshError(self.name, step, str(e)) from None
        except (asyncssh.Error, OSError, TimeoutError) as e:
            raise SshError(self.name, step, _said(e)) from None
        ran = Ran(int(r.exit_status if r.exit_status is not None else 255),
                  _text(r.stdout), _text(r.stderr))
        if check and ran.code != 0:
            tail = (ran.stderr.strip() or ran.stdout.strip())[-2000:]
            raise SshError(self.name, step, f"exited {ran.code}" + (f": {tail}" if tail else ""))
        return ran

    async def put(self, local: Path, remote: str, *, step: str = "copy") -> None:
        """A file to the host over SFTP."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote)
        except (asyncssh.Error, OSError) as e:
            raise SshError(self.name, step, _said(e)) from None


@asynccontextmanager
async def connect(name: str, target: SshTarget,
                  timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[Session]:
    """A session to the host, its host key checked; closed on the way out."""
    options: dict[str, Any] = {
        "host": target.address, "port": target.port, "username": target.user,
        "connect_timeout": timeout, "login_timeout": timeout,
        "preferred_auth": "publickey", "config": None, "agent_path": None,
        "client_keys": [_path(target.key)] if target.key else (),
        "password": None, "kbdint_auth": False,
    }
    pinned = _Pinned(target.host_key) if target.host_key else None
    if pinned is not None:
        options.update(known_hosts=([], [], []), client_factory=lambda: pinned)
    else:
        known = _path(target.known_hosts)
        if not os.path.isfile(known):
            raise SshError(name, "host key", f"no known_hosts file {known}",
                           hint="add the host's key to it (ssh-keyscan), or pin its "
                                "fingerprint in the hosts file: host_key: SHA256:...")
        options["known_hosts"] = known
    try:
        conn = await asyncssh.connect(**options)
    except asyncssh.HostKeyNotVerifiable as e:
        if pinned is not None:
            raise SshError(name, "host key", f"its host key {pinned.seen or '(none)'} is not "
                           f"the pinned {target.host_key}: refused", hint=_changed) from None
        raise SshError(name, "host key", f"its host key is not the one {target.known_hosts} "
                       f"has for it, or it has none there: refused ({_said(e)})",
                       hint=_changed) from None
    except asyncssh.PermissionDenied as e:
        raise SshError(name, "login", f"{target.user}@{target.address} refused the key "
                       f"{target.key or '(the defaults)'}: {_said(e)}",
                       hint="put its public key in the user's authorized_keys") from None
    except (asyncssh.Error, OSError, TimeoutError) as e:
        raise SshError(name, "connect", f"cannot reach {target.address}:{target.port}: "
                       f"{_said(e)}") from None
    try:
        yield Session(name, conn)
    finally:
        conn.close()
        await conn.wait_closed()


_changed = ("if the server was reinstalled, check its new key out of band and update the "
            "hosts file or known_hosts; otherwise someone may be in the middle")


def _path(p: str) -> str:
    return os.path.expanduser(p)


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _said(e: BaseException) -> str:
    reason = getattr(e, "reason", "") or str(e) or type(e).__name__
    return str(reason).strip()
