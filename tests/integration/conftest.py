from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Server


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A reflink-capable filesystem (XFS, reflink=1, on a sparse loop image) for a test's
    files, unmounted after it."""
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(8 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Where the `server` fixture's data dir is made (a module may give another fs)."""
    return tmp_path


@pytest.fixture
def server(data_root: Path) -> Iterator[Server]:
    srv = Server(data_root / "data")
    srv.start()
    yield srv
    # Destroy what the test left, so a failing test does not leak into the next.
    try:
        for st in srv.api("/v1/stacks"):
            srv.cli("destroy", st["name"], "-y", check=False)
    finally:
        srv.stop()


@pytest.fixture(scope="session", autouse=True)
def no_watchdog_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every agent a test starts leaves its self-fencing watchdog running (as it must: it
    outlives its agent); those of this session's data dirs are stopped, by their pid
    files, when the session ends."""
    base = tmp_path_factory.getbasetemp().absolute()
    yield
    from rackfire.agent import watchdog

    for p in Path("/proc").iterdir():
        try:
            argv = [os.fsdecode(a) for a in (p / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if watchdog.MODULE in argv and "--data-dir" in argv[:-1]:
            data_dir = Path(argv[argv.index("--data-dir") + 1])
            if data_dir.is_relative_to(base):
                watchdog.stop(data_dir)
