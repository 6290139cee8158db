"""The environment the suite runs in is the one constraints.txt locks: a fresh clone gets
exactly the versions CI passed with, not whatever is newest upstream that day."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "constraints.txt"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_dependency_is_locked_and_installed_at_its_version() -> None:
    pins = locked()
    for dist in ("pydantic", "fastapi", "typer", "click", "uvicorn", "httpx", "pytest", "mypy"):
        assert dist in pins, f"{dist} is not in constraints.txt"
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                 for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"installed versions differ from constraints.txt (locked, installed): {wrong}"
