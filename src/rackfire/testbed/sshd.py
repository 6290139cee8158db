"""A real OpenSSH server in a bed host: an existing server to reach over SSH and install
rackfire on. Key auth only; its own host key, config and authorized keys under a dir of the
test's; in the host's netns, and in a mount namespace of its own where root's ~/.bashrc is
empty (Debian's bash reads it for every command over ssh: about 45 ms each here).

`private` dirs (rackfire's own: /opt/rackfire, its data dir, /run/rackfire) get a dir of
the test's bound over them there too, so what is installed over SSH and the agent started
from it see a machine of their own, as a real server is.

`python -m rackfire.testbed.sshd SRC=DST... -- SSHD_ARGV...` is what runs there: it binds
each SRC over DST in that namespace, then becomes sshd.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rackfire.testbed.bed import Bed, Host

SSHD = "/usr/sbin/sshd"
_MS_BIND = 4096


@dataclass
class Sshd:
    host: Host
    dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    made: tuple[str, ...] = ()  # mount points made on the machine for `private`

    @property
    def host_key(self) -> Path:
        return self.dir / "host_key"

    def fingerprint(self) -> str:
        """The host key's SHA256 fingerprint, as `ssh-keygen -l` prints it."""
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub"],
                             capture_output=True, text=True, check=True).stdout
        return out.split()[1]

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        where = self.host.ip if self.port == 22 else f"[{self.host.ip}]:{self.port}"
        return f"{where} {key[0]} {key[1]}\n"

    def new_host_key(self) -> None:
        """A new host key, as a reinstalled server has (or a man in the middle): sshd reads
        it at the next connection."""
        for p in (self.host_key, Path(f"{self.host_key}.pub")):
            p.unlink()
        _keygen(self.host_key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def stop_all(sshds: list[Sshd]) -> None:
    """Stop every sshd, then remove the mount points made for them: only once all are
    stopped (one removed while another's namespace has a dir bound over it would cut that
    namespace off from its own dir)."""
    for s in sshds:
        s.stop()
    for target in sorted({t for s in sshds for t in s.made}, reverse=True):
        with contextlib.suppress(OSError):  # still in use: left, as found
            os.rmdir(target)


def start_sshd(bed: Bed, host: Host, work: Path, authorized: str, port: int = 22,
               private: tuple[str, ...] = ()) -> Sshd:
    """sshd listening on the host's underlay address, letting in the public key
    `authorized`; `bed.destroy` ends it too."""
    work.mkdir(parents=True, exist_ok=True)
    _keygen(work / "host_key")
    keys = work / "authorized_keys"
    keys.write_text(authorized.strip() + "\n")
    keys.chmod(0o600)
    (work / "empty").write_text("")
    binds = [f"{work / 'empty'}=/root/.bashrc"] if os.path.exists("/root/.bashrc") else []
    made = []
    for i, target in enumerate(private):
        (work / "private" / str(i)).mkdir(parents=True, exist_ok=True)
        if not os.path.exists(target):  # a mount point on the machine itself, removed after
            os.makedirs(target)
            made.append(target)
        binds.append(f"{work / 'private' / str(i)}={target}")
    config = work / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {host.ip}", f"HostKey {work / 'host_key'}",
        f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {keys}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "UsePAM no",
        "StrictModes no", "Subsystem sftp internal-sftp", "MaxSessions 50",
        "MaxStartups 100:30:200", ""]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with open(work / "sshd.log", "ab") as log:
        proc = bed.spawn_in(host, [
            "unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
            "rackfire.testbed.sshd", *binds, "--", SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return Sshd(host, work, port, proc, tuple(made))


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rackfire-bed",
                    "-f", str(path)], check=True, capture_output=True)


def _exec(binds: list[str], argv: list[str]) -> None:
    """In the mount namespace `unshare` made: each SRC=DST bound, then sshd."""
    libc = ctypes.CDLL(None, use_errno=True)
    for bind in binds:
        src, _, dst = bind.partition("=")
        if libc.mount(src.encode(), dst.encode(), None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind mount {src} over {dst}")
    os.execv(argv[0], argv)  # noqa: S606 (becomes sshd: the argv start_sshd gave)


if __name__ == "__main__":
    cut = sys.argv.index("--")
    _exec(sys.argv[1:cut], sys.argv[cut + 1:])
