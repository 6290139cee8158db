"""A `rackfire server` subprocess for benchmarks: its own data dir, API port and subnet pool,
stopped by pid. Shared by the bench scripts (run as `python bench/<script>.py`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BenchServer:
    data_dir: Path
    pool: str
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()  # more `rackfire server` options
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rackfire", "server", "--data-dir", str(self.data_dir),
                 "--port", str(self.port), "--subnet-pool", self.pool, *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self.alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: "
                                   + (self.data_dir / "server.log").read_text()[-2000:])
            time.sleep(0.1)

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return httpx.get(self.url + "/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it is not gone within 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def env(self) -> dict[str, str]:
        """The environment a CLI that talks to this server runs in."""
        return {**os.environ, "RACKFIRE_URL": self.url, "COLUMNS": "200",
                "RACKFIRE_DATA_DIR": str(self.data_dir)}

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rackfire", *args], env=self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
