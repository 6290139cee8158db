"""A local S3 endpoint for the tests: moto's server (`python -m moto.server`) on a loopback
port of PORTS, started once per session (`moto_s3`); each test that asks for `s3_bucket`
gets a bucket of its own in it. moto takes any credentials: the fixture makes random ones,
so a test can look for them where they must not appear.

The server is stopped by its pid when the session ends (SIGTERM, SIGKILL if it lingers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

PORTS = range(9600, 9651)  # this suite's share of the machine's ports
START_TIMEOUT = 30.0


class S3Bucket(NamedTuple):
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    key_id: str
    secret: str


class MotoServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The port may be taken between the look and moto's bind: then the next one.
        for port in PORTS:
            if not _free(port):
                continue
            self.port = port
            log = open(self.workdir / f"moto-{port}.log", "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            if self._wait():
                return
            self.stop()
        raise AssertionError(f"moto's server did not start on a port of {PORTS}: "
                             f"see {self.workdir}/moto-*.log")

    def _wait(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # an answer all the same
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def bucket(self) -> S3Bucket:
        import boto3  # moto's dependency; slow to import, so only here

        b = S3Bucket(self.endpoint, f"rf-{uuid.uuid4().hex[:12]}", f"AKRF{uuid.uuid4().hex[:16]}",
                     uuid.uuid4().hex + uuid.uuid4().hex[:8])
        client = boto3.client("s3", endpoint_url=b.endpoint, aws_access_key_id=b.key_id,
                              aws_secret_access_key=b.secret, region_name="us-east-1")
        client.create_bucket(Bucket=b.bucket)
        return b


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoServer) -> S3Bucket:
    """A new, empty bucket on the session's moto server."""
    return moto_s3.bucket()
