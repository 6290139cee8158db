from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    srv.start()
    yield srv
    # Destroy what the test left, so a failing test does not leak into the next.
    try:
        for st in srv.api("/v1/stacks"):
            srv.cli("destroy", st["name"], "-y", check=False)
    finally:
        srv.stop()
