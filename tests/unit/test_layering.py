"""The dependency rule (docs/ARCHITECTURE.md, "Dependency rule"), checked on the source.

Every module under src/rackfire is parsed, not imported, and every import in it counts: at
the top, inside functions (the CLI's lazy imports), under `if TYPE_CHECKING:` (a type-only
import still ties one layer to another) and in `try:` blocks. Relative imports are resolved
against the module's package; `from pkg import name` counts as importing `pkg.name`, so
`from rackfire import net` is an import of rackfire.net; `importlib.import_module("x")` and
`__import__("x")` with a constant name count too.

Two kinds of contract, in the tables below:

- LAYERS: what the modules of a layer may import. `project`: the parts of rackfire it may
  import (its own package always); `external`: the standard library and third-party modules
  it may import, or None for any. With `closure`, `project` bounds everything the layer
  loads, transitively (a package's `__init__` included, since importing `a.b` runs `a`):
  the CLI must not reach the server through the API client.
- GUARDS: who may import a package at all.

"Nothing that does I/O" (model/, plan/, schedule/, errors.py) is an allowlist, not a
denylist: PURE holds modules that touch no file, process, socket, clock or random source
(so no os, io, pathlib, subprocess, socket, http, urllib, httpx, sqlite3, shutil, tempfile,
threading, asyncio, logging, time, datetime, random, secrets, uuid). A module not listed
needs a decision: add it to PURE if it is pure, or keep it out of the pure layers. Beyond
PURE, model/ may use jinja2 (model/templates.py renders a role's templates from strings in
Jinja's sandbox; no loader, so no file is read) and pathlib (model/logs.py names the rotated
log files: path arithmetic on a value type; a Path's own I/O methods are beyond what an
import check can see, and review keeps them out of model/).

spec/ is the stack file parser, shared by the CLI (which checks a file before sending it)
and the server: it reads the file it is given and does no other I/O. Beyond PURE it may use
the parsers it is built on (pydantic, YAML, Jinja for checking templates) and path handling
(pathlib, posixpath, `os.path`: spelled `import os.path`, so the rest of os stays out).

EXCEPTIONS lists each import that breaks a contract on purpose, with its reason. An
exception no import needs any more fails the test, so the table only says what is true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"

# Standard library modules that do no I/O and read neither the clock nor a random source.
PURE = ("__future__", "abc", "bisect", "collections", "contextvars", "copy", "dataclasses",
        "enum", "functools", "hashlib", "heapq", "ipaddress", "itertools", "json", "math",
        "operator", "re", "string", "textwrap", "types", "typing")


@dataclass(frozen=True)
class Layer:
    name: str
    project: tuple[str, ...]
    external: tuple[str, ...] | None = None
    closure: bool = False


@dataclass(frozen=True)
class Guard:
    name: str
    by: tuple[str, ...]  # besides the guarded package itself


# The host side: only these touch the machine's processes, mounts, namespaces and layers.
HOST_SIDE = ("rackfire.agent", "rackfire.runtime", "rackfire.net", "rackfire.images")

LAYERS = (
    # The pure core: data in, data out.
    Layer("rackfire.errors", (), PURE),
    Layer("rackfire.model", ("rackfire.errors",), (*PURE, "jinja2", "pathlib")),
    Layer("rackfire.plan", ("rackfire.model", "rackfire.errors"), PURE),
    Layer("rackfire.schedule", ("rackfire.model", "rackfire.errors"), PURE),
    # The stack file parser: reads the file it is given, nothing else.
    Layer("rackfire.spec", ("rackfire.model", "rackfire.errors"),
          (*PURE, "pathlib", "posixpath", "os.path", "difflib", "urllib.parse", "pydantic",
           "pydantic_core", "yaml", "jinja2")),
    # The CLI is a client of the API: everything it loads is the client's side (api/shapes.py
    # types the answers; api/pack.py packs app sources with fswalk.py's walk; spec/ checks a
    # file before it is sent).
    Layer("rackfire.cli", ("rackfire.api.client", "rackfire.api.shapes", "rackfire.api.pack",
                           "rackfire.fswalk", "rackfire.spec", "rackfire.model",
                           "rackfire.errors"), closure=True),
    # Shared by both sides, so they import neither.
    Layer("rackfire.streaming", ("rackfire.model", "rackfire.errors")),
    Layer("rackfire.fswalk", ()),
)

GUARDS = (
    *(Guard(name, HOST_SIDE) for name in ("rackfire.runtime", "rackfire.net", "rackfire.images")),
    # The controller sees a host only through model/agent.py's Agent protocol; server.py,
    # the composition root, wires the agents in.
    Guard("rackfire.agent", ("rackfire.server", "rackfire.entry")),
    Guard("rackfire.server", ("rackfire.entry",)),  # `rackfire server` runs it
    Guard("rackfire.testbed", ()),  # a test tool: nothing in src/ depends on it
    Guard("rackfire.providers", ("rackfire.control",)),  # hosts from anywhere: control's
    # control/ asks the store only what store/protocol.py's StateStore declares: the SQLite
    # store's own modules are store/'s (another store can come without touching control/).
    *(Guard(f"rackfire.store.{m}", ("rackfire.store",))
      for m in ("db", "placements", "rollouts", "schema")),
)

EXCEPTIONS: Mapping[tuple[str, str], str] = {
    ("rackfire.testbed", "rackfire.net"):
        "the simulated hosts of the tests and `make demo-cluster` are network namespaces it "
        "makes with net/nsenter.py and names with net/names.py; no part of the server "
        "imports it (GUARDS)",
    ("rackfire.testbed", "rackfire.runtime"):
        "`testbed down` finds and removes what a bed left (runc's containers, mounts under "
        "its data dirs) with the runtime's own helpers",
    ("rackfire.testbed", "rackfire.agent"):
        "`testbed down` destroys what a dead bed agent held with the agent's own code (a "
        "LocalAgent in that host's netns), as a destroy would",
}


@dataclass(frozen=True, order=True)
class Import:
    module: str  # the importing module
    name: str  # what it imports, resolved: "rackfire.net", "os.path", "typing.Any"
    line: int


@dataclass(frozen=True, order=True)
class Violation:
    module: str
    name: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.name}: {self.rule}"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def modules(src: Path, package: str = "rackfire") -> dict[str, Path]:
    """Every module of `package` under `src`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                yield Import(module, origin if alias.name == "*" else f"{origin}.{alias.name}",
                             node.lineno)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            yield Import(module, node.args[0].value, node.lineno)


def is_project(name: str) -> bool:
    return within(name, "rackfire")


def check(src: Path, layers: Iterable[Layer] = LAYERS, guards: Iterable[Guard] = GUARDS,
          exceptions: Mapping[tuple[str, str], str] = EXCEPTIONS) -> list[Violation]:
    """Every import under `src` that breaks a contract and is not an exception, and every
    exception that no import needs."""
    mods = modules(src)
    graph = {m: sorted(set(imports(m, p))) for m, p in mods.items()}
    found: set[Violation] = set()
    for layer in layers:
        own = (layer.name, *layer.project)
        for m, imps in graph.items():
            if not within(m, layer.name):
                continue
            for i in imps:
                if is_project(i.name):
                    if not any(within(i.name, p) for p in own):
                        found.add(Violation(m, i.name, i.line,
                                            f"{layer.name} may import only {', '.join(own)}"))
                elif layer.external is not None and not any(
                        within(i.name, p) for p in layer.external):
                    found.add(Violation(m, i.name, i.line,
                                        f"not in {layer.name}'s allowlist"))
        if layer.closure:
            found |= _closure(layer, own, mods, graph)
    for guard in guards:
        allowed = tuple(dict.fromkeys((guard.name, *guard.by)))
        for m, imps in graph.items():
            if any(within(m, p) for p in allowed):
                continue
            for i in imps:
                if within(i.name, guard.name):
                    found.add(Violation(m, i.name, i.line,
                                        f"only {', '.join(allowed)} import {guard.name}"))
    broken: dict[tuple[str, str, int], list[str]] = {}  # an import's every broken contract
    used = set()
    for v in sorted(found):
        key = next((k for k in exceptions if within(v.module, k[0]) and within(v.name, k[1])),
                   None)
        if key is None:
            broken.setdefault((v.module, v.name, v.line), []).append(v.rule)
        else:
            used.add(key)
    return [*(Violation(*k, "; ".join(rules)) for k, rules in broken.items()),
            *(Violation(k[0], k[1], 0, "an exception no import needs: remove it")
              for k in exceptions if k not in used)]


def _closure(layer: Layer, own: tuple[str, ...], mods: Mapping[str, Path],
             graph: Mapping[str, list[Import]]) -> set[Violation]:
    """Where what the layer's modules load, transitively, first leaves `own`: each module
    outside reported once, at the import that first reaches it, with the chain from the
    layer (and not followed further: its own imports are beside the point)."""
    def resolve(name: str) -> list[str]:
        """The module an import loads (the longest known prefix) and the packages above it."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in mods:
                return [".".join(parts[:k]) for k in range(1, n + 1)]
        return []

    chain = {m: [m] for m in mods if within(m, layer.name)}
    todo = list(chain)
    found = set()
    while todo:
        m = todo.pop(0)
        for i in graph[m]:
            loaded = resolve(i.name)
            if not loaded or loaded[-1] in chain:
                continue
            if not any(within(loaded[-1], p) for p in own):
                chain[loaded[-1]] = [*chain[m], loaded[-1]]
                found.add(Violation(m, i.name, i.line,
                                    f"{layer.name} loads only {', '.join(own)}, but "
                                    f"{' -> '.join(chain[loaded[-1]])}"))
                continue
            # The packages above a module run first, so they are followed too.
            for n in loaded:
                if n not in chain:
                    chain[n] = [*chain[m], n]
                    todo.append(n)
    return found


def test_the_dependency_rule_holds() -> None:
    violations = check(SRC)
    assert not violations, "\n".join(map(str, violations))


def test_every_rule_names_a_part_of_the_house() -> None:
    """A table row with a typo would check nothing."""
    names = modules(SRC)
    named = {*(layer.name for layer in LAYERS), *(g.name for g in GUARDS),
             *(p for layer in LAYERS for p in layer.project), *(p for g in GUARDS for p in g.by),
             *(k[0] for k in EXCEPTIONS)}
    for prefix in named:
        assert any(within(m, prefix) for m in names), prefix


def test_control_and_api_reach_no_host_side_package() -> None:
    """The issue's own wording, as its own check (GUARDS already covers it)."""
    mods = modules(SRC)
    for m, path in mods.items():
        if within(m, "rackfire.control") or within(m, "rackfire.api"):
            for i in imports(m, path):
                assert not any(within(i.name, h) for h in HOST_SIDE), i


# --- the checker on a tiny tree, one deliberately bad import at a time ----------------------

def tree(root: Path, files: Mapping[str, str]) -> Path:
    """A package tree under `root`: every dir a package, each file's text as given."""
    for rel, text in {"rackfire/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents[:-1]:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


GOOD = {
    "rackfire/errors.py": "from dataclasses import dataclass\n",
    "rackfire/model/stack.py": "import json\nfrom rackfire.errors import SpecError\n",
    "rackfire/model/logs.py": "from pathlib import Path\n",
    "rackfire/plan/planner.py": "from ..model import stack\nfrom . import actions\n",
    "rackfire/plan/actions.py": "from typing import TYPE_CHECKING\n",
    "rackfire/schedule/search.py": "import heapq\nfrom rackfire.model.stack import Role\n",
    "rackfire/spec/convert.py": "import os.path\nimport yaml\nfrom rackfire.model import stack\n",
    "rackfire/api/client.py": "import httpx\nfrom rackfire.api import pack\n",
    "rackfire/api/pack.py": "import tarfile\nfrom rackfire.fswalk import walk\n",
    "rackfire/api/app.py": "import fastapi\nfrom rackfire.control import controller\n",
    "rackfire/fswalk.py": "import os\n",
    "rackfire/streaming.py": "import asyncio\nfrom rackfire.model import stack\n",
    "rackfire/cli/main.py": "import typer\nfrom rackfire.api.client import Client\n"
                            "def f():\n    from rackfire.spec import convert\n",
    "rackfire/control/controller.py": "from rackfire.model.agent import HostLink\n"
                                      "from rackfire.store import StateStore\nimport threading\n",
    "rackfire/store/db.py": "import sqlite3\n",
    "rackfire/agent/local.py": "from rackfire import net, runtime\n"
                               "from rackfire.images import store\n",
    "rackfire/runtime/container.py": "from rackfire.net import links\n"
                                     "from rackfire.images.store import Layer\n",
    "rackfire/net/links.py": "import pyroute2\n",
    "rackfire/images/store.py": "import shutil\n",
    "rackfire/server.py": "from rackfire.agent.local import LocalAgent\n",
    "rackfire/entry.py": "def f():\n    from rackfire.server import serve\n",
    "rackfire/testbed.py": "",
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    assert check(tree(tmp_path, GOOD), exceptions={}) == []


# Each: the file, the bad lines put at its top, where the import is reported and a part of
# the contract it breaks.
@pytest.mark.parametrize(("module", "text", "where", "rule"), [
    ("rackfire/model/stack.py", "import rackfire.runtime\n",
     "rackfire.model.stack:1 imports rackfire.runtime", "rackfire.model may import only"),
    ("rackfire/model/stack.py", "import importlib\nimportlib.import_module('rackfire.net')\n",
     "rackfire.model.stack:2 imports rackfire.net", "rackfire.model may import only"),
    ("rackfire/plan/planner.py", "def f():\n    import subprocess\n",
     "rackfire.plan.planner:2 imports subprocess", "not in rackfire.plan's allowlist"),
    ("rackfire/plan/planner.py", "from time import monotonic\n",
     "rackfire.plan.planner:1 imports time.monotonic", "not in rackfire.plan's allowlist"),
    ("rackfire/plan/planner.py", "from rackfire import store\n",
     "rackfire.plan.planner:1 imports rackfire.store", "rackfire.plan may import only"),
    ("rackfire/schedule/search.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from ..control.controller import Controller\n",
     "rackfire.schedule.search:3 imports rackfire.control.controller.Controller",
     "rackfire.schedule may import only"),
    ("rackfire/schedule/search.py", "import pathlib\n",
     "rackfire.schedule.search:1 imports pathlib", "not in rackfire.schedule's allowlist"),
    ("rackfire/spec/convert.py", "import os\n",
     "rackfire.spec.convert:1 imports os", "not in rackfire.spec's allowlist"),
    ("rackfire/spec/convert.py", "from os import listdir\n",
     "rackfire.spec.convert:1 imports os.listdir", "not in rackfire.spec's allowlist"),
    ("rackfire/control/controller.py", "from rackfire import images\n",
     "rackfire.control.controller:1 imports rackfire.images",
     "only rackfire.images, rackfire.agent, rackfire.runtime, rackfire.net import"),
    ("rackfire/control/controller.py", "from rackfire.agent.local import LocalAgent\n",
     "rackfire.control.controller:1 imports rackfire.agent.local.LocalAgent",
     "only rackfire.agent, rackfire.server, rackfire.entry import rackfire.agent"),
    ("rackfire/api/app.py", "import rackfire.net.links as links\n",
     "rackfire.api.app:1 imports rackfire.net.links", "import rackfire.net"),
    ("rackfire/cli/main.py", "def server():\n    from rackfire.server import serve\n",
     "rackfire.cli.main:2 imports rackfire.server.serve", "rackfire.cli may import only"),
    ("rackfire/api/client.py", "from rackfire.control import controller\n",
     "rackfire.api.client:1 imports rackfire.control.controller",
     "rackfire.cli loads only rackfire.cli, rackfire.api.client, rackfire.api.shapes, "
     "rackfire.api.pack, rackfire.fswalk, rackfire.spec, rackfire.model, rackfire.errors, but "
     "rackfire.cli.main -> rackfire.api.client -> rackfire.control.controller"),
    ("rackfire/api/__init__.py", "from rackfire.api import app\n",
     "rackfire.api:1 imports rackfire.api.app",
     "but rackfire.cli.main -> rackfire.api -> rackfire.api.app"),
    ("rackfire/streaming.py", "from rackfire.agent import local\n",
     "rackfire.streaming:1 imports rackfire.agent.local", "rackfire.streaming may import only"),
    ("rackfire/store/db.py", "from rackfire.testbed import Bed\n",
     "rackfire.store.db:1 imports rackfire.testbed.Bed",
     "only rackfire.testbed import rackfire.testbed"),
    ("rackfire/control/controller.py", "from rackfire.store.db import Store\n",
     "rackfire.control.controller:1 imports rackfire.store.db.Store",
     "only rackfire.store.db, rackfire.store import rackfire.store.db"),
])
def test_a_bad_import_is_reported(tmp_path: Path, module: str, text: str, where: str,
                                  rule: str) -> None:
    found = check(tree(tmp_path, {**GOOD, module: text + GOOD.get(module, "")}), exceptions={})
    assert any(str(v).startswith(where + ": ") and rule in v.rule for v in found), (
        "\n".join(map(str, found)) or "nothing found")


def test_an_exception_excuses_only_its_import_and_must_be_needed(tmp_path: Path) -> None:
    root = tree(tmp_path, {**GOOD, "rackfire/model/logs.py": "import subprocess\n"})
    assert check(root, exceptions={("rackfire.model.logs", "subprocess"): "why"}) == []
    found = check(root, exceptions={("rackfire.model.logs", "subprocess"): "why",
                                    ("rackfire.model.stack", "socket"): "why"})
    assert [str(v) for v in found] == [
        "rackfire.model.stack:0 imports socket: an exception no import needs: remove it"]
