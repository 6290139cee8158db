"""The CLI imports only what the command that runs needs (issue 14: a CLI that starts fast).

Each case runs the `rackfire` entry point of pyproject.toml in a fresh interpreter and lists
the modules it loaded: a test of what is imported, not of time (bench/cli_start.py times
it). `--help` builds every command and its options, so it shows that no command module
imports a heavy dependency at its top.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from enum import StrEnum
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

# The client's transport, the stack file's parsers, the server's and the host side's: none
# is needed to print help.
HEAVY = ("httpx", "httpcore", "websockets", "pydantic", "pydantic_core", "yaml", "jinja2",
         "fastapi", "starlette", "uvicorn", "pyroute2", "rich.progress", "rich.live",
         "rackfire.api", "rackfire.spec", "rackfire.model.stack", "rackfire.server",
         "rackfire.agent", "rackfire.control", "rackfire.runtime", "rackfire.store")
# What a command that only asks the API must still not load.
NOT_FOR_PS = ("yaml", "jinja2", "fastapi", "starlette", "uvicorn", "websockets", "pyroute2",
              "rackfire.spec", "rackfire.server", "rackfire.agent", "rackfire.control",
              "rackfire.runtime", "rackfire.store")


def loaded_by(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules loaded by `rackfire ARGS` (run as its entry point), and its result."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["rackfire"].partition(":")
    code = (f"import json, sys\nfrom {module} import {func}\nsys.argv = ['rackfire', *{args!r}]"
            f"\ntry:\n    {func}()\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL,
                       env={"PATH": "/usr/bin:/bin", "RACKFIRE_URL": "http://127.0.0.1:9"})
    line = r.stderr.rpartition("\nMODULES ")[2]
    return set(json.loads(line)), r


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("args", [("--help",), ()])
def test_help_imports_no_heavy_module(args: tuple[str, ...]) -> None:
    modules, r = loaded_by(*args)
    assert "Usage: rackfire" in r.stdout, r.stderr
    assert heavy(modules, HEAVY) == []


@pytest.mark.parametrize("args", [("image", "--help"), ("ps", "--help")])
def test_a_commands_help_imports_no_heavy_module_but_typers_own(args: tuple[str, ...]) -> None:
    """Once a command's own options are parsed, typer (0.29) coerces their values with
    pydantic (typer/_adapters.py): that one is typer's, not the command's."""
    modules, r = loaded_by(*args)
    assert "Usage: rackfire" in r.stdout, r.stderr
    assert heavy(modules, tuple(n for n in HEAVY if not n.startswith("pydantic"))) == []


def test_ps_loads_the_client_but_not_the_parser_or_the_server() -> None:
    modules, r = loaded_by("ps")
    assert "no rackfire server answers" in r.stderr  # it did ask (nothing listens there)
    assert "httpx" in modules
    assert heavy(modules, NOT_FOR_PS) == []


def test_what_the_cli_keeps_for_its_start_agrees_with_the_model() -> None:
    """The options' choices and the data dir default the CLI has without importing them."""
    from rackfire.api import client
    from rackfire.cli import common
    from rackfire.cli import main as cli
    from rackfire.model import stack

    def values(e: type[StrEnum]) -> list[str]:
        return [m.value for m in e]

    assert values(cli.ImageSource) == values(stack.ImageSource)
    assert values(cli.RuntimeKind) == [v for v in values(stack.RuntimeKind) if v != "fake"]
    assert common.default_data_dir() == client.default_data_dir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RACKFIRE_DATA_DIR", "/srv/rf")
        assert common.default_data_dir() == client.default_data_dir() == Path("/srv/rf")
