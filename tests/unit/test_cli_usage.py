"""A mistyped command line is a usage message and exit 2, never "internal error"."""

from __future__ import annotations

import subprocess
import sys

import pytest


def rackfire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rackfire", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "RACKFIRE_URL": "http://127.0.0.1:9"})


@pytest.mark.parametrize(("args", "says"), [
    (["nosuch"], "No such command 'nosuch'"),
    (["psx"], "Did you mean 'ps'?"),
    (["ps", "--nosuch"], "No such option: --nosuch"),
    (["ps", "--jsn"], "--json"),
    (["scale"], "Missing argument"),
    (["scale", "shop/app", "many"], "Invalid value for 'count'"),
])
def test_usage_error_is_a_usage_message(args: list[str], says: str) -> None:
    r = rackfire(*args)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr
    assert "Usage: rackfire" in r.stderr
    assert "internal error" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
