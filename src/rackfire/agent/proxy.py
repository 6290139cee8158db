"""Published ports: one HAProxy per stack, TCP mode, round robin over healthy instances.

HAProxy runs detached, so published ports keep working while the server is stopped, and a
restarted agent re-adopts it by its pidfile. A change rewrites the config and reloads with
`-sf` (the old process finishes its connections, the new one takes the port).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rackfire.errors import ExecError
from rackfire.model.agent import PublishedPort


def render_config(stack: str, ports: list[PublishedPort], source: str = "") -> str:
    """`source`: connect to backends from this address (the host's own one in the stack's
    subnet, for the routing mesh), so a remote instance's reply comes back to this host and
    not to the anycast gateway of its own. "" connects from the gateway, as on one host."""
    via = f" source {source}" if source else ""
    lines = [
        f"# rackfire: published ports of stack {stack}. Generated; do not edit.",
        "global",
        "    daemon",
        # HAProxy binds with SO_REUSEPORT, which is what makes `-sf` reloads seamless (with
        # `noreuseport` the port is closed for a moment). The price: a port some other
        # SO_REUSEPORT program holds would be shared, not refused; the agent checks for a
        # busy port before any change (LocalAgent.busy_ports).
        "    maxconn 4096",
        # After a reload, the old process finishes its connections, but not forever.
        "    hard-stop-after 30s",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 5m",
        # An instance destroyed mid-request sends no reset: give up on it within a minute.
        "    timeout server 1m",
        # A dead backend (its host gone, not yet known) costs one connect timeout: each
        # retry goes to another server.
        "    retries 2",
        "    option redispatch 1",
        # A backend that stops answering (its host died, before the controller knows) is
        # out of the rotation within about a second, without waiting for a new config.
        "    default-server inter 500ms fall 2 rise 2",
    ]
    for p in ports:
        m = p.port
        lines += [
            f"frontend rf_{m.host_port}",
            f"    bind {m.host_ip}:{m.host_port}",
            f"    default_backend rf_{m.host_port}",
            f"backend rf_{m.host_port}",
            "    balance roundrobin",
        ]
        lines += [f"    server s{i} {b}{via} check" for i, b in enumerate(p.backends)]
    return "\n".join(lines) + "\n"


class Proxy:
    def __init__(self, stack_dir: Path, stack: str) -> None:
        self.stack = stack
        self.cfg = stack_dir / "haproxy.cfg"
        self.pidfile = stack_dir / "haproxy.pid"
        self.log = stack_dir / "haproxy.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"haproxy" in cmdline and str(self.cfg).encode() in cmdline else None

    def bound(self) -> set[tuple[str, int]]:
        """(address, port) this stack publishes. From the config, not the process: during a
        reload the pidfile may name neither the old process nor the new one."""
        if not self.cfg.exists():
            return set()
        out = set()
        for line in self.cfg.read_text().splitlines():
            if line.strip().startswith("bind "):
                host, _, port = line.split()[1].rpartition(":")
                out.add((host.strip("[]"), int(port)))
        return out

    def apply(self, ports: list[PublishedPort], source: str = "") -> None:
        if not ports:
            self.stop()
            return
        if shutil.which("haproxy") is None:
            raise ExecError("published ports need HAProxy, which is not installed here",
                            hint="apt-get install haproxy (make demo and make test do)")
        text = render_config(self.stack, ports, source)
        old = self.pid()
        previous = self.cfg.read_text() if self.cfg.exists() else None
        if old is not None and previous == text:
            return
        self.cfg.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cfg.with_suffix(".new")
        tmp.write_text(text)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(tmp)],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ExecError(f"haproxy rejected the config: {check.stderr.strip()}")
        os.replace(tmp, self.cfg)
        args = ["haproxy", "-f", str(self.cfg), "-p", str(self.pidfile)]
        if old is not None:
            args += ["-sf", str(old)]
        # stdio to a file, never a pipe: the daemon may keep it open after the parent exits.
        with open(self.log, "wb") as log:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  check=False)
        if proc.returncode != 0:
            # Keep the config saying what really runs, so the next try does not skip the reload.
            if previous is None:
                self.cfg.unlink(missing_ok=True)
            else:
                self.cfg.write_text(previous)
            raise ExecError(
                f"cannot publish ports of {self.stack}: {self.log.read_text().strip()}",
                hint="is another program using the port?")

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                if _zombie(pid):
                    break
                time.sleep(0.02)
        for f in (self.cfg, self.pidfile, self.log):
            f.unlink(missing_ok=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
