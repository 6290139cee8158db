"""CLI start time: the wall time of a `rackfire` process, from fork to exit, for `--help`
(no server needed) and `ps` against a running server with no instances (one API call: the
rest is what the CLI imports and builds). The CPU time (user + system) of the same processes
is kept beside it: on a shared machine it moves less with the load than the wall time.

Each run times every command once, one after the other (so the load of the shared machine
falls on all of them alike), after a first invocation of each that is not counted (it writes
the tree's bytecode caches). A tree is run as its `[project.scripts]` entry point, as the
installed `rackfire` script runs it: `python -c "from MODULE import FUNC; FUNC()"` with
`PYTHONPATH=<tree>/src`, so another tree can be measured beside this one:

    .venv/bin/python -m bench cli_start --runs 30
    BENCH_CLI_BEFORE=/path/to/other/checkout .venv/bin/python -m bench cli_start --runs 30

The server is this tree's, on port 7593 with its own data dir under /tmp/clibench, stopped
by pid at the end; both trees' CLIs call it. `kubectl --help` is timed beside `--help` when
kubectl is installed (`ps` has no counterpart without a cluster).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import ROOT, SELF, Result, Target
from bench.rfserver import BenchServer

DATA = Path("/tmp/clibench/server")
PORT = 7593
POOL = "10.97.0.0/16"  # no stack is applied: the server takes no network from it
TARGET = 0.15  # seconds of wall time, `rackfire --help` (issue 14)
BEFORE = "BENCH_CLI_BEFORE"  # the root of another checkout, measured beside this one
# The floor under any typer CLI: the framework, rich's help and the interpreter.
TYPER_ALONE = """\
import typer
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
@app.command()
def a() -> None:
    '''A.'''
@app.command()
def b() -> None:
    '''B.'''
app(prog_name="rackfire")
"""


@dataclass
class Case:
    case: str  # "--help", "ps"
    subject: str  # "rackfire", "rackfire at 52aca54", "kubectl"
    argv: list[str]
    env: dict[str, str]
    expect: str  # what its output must say
    note: str = ""
    floor: bool = False  # what rackfire's figure stands on, not a peer
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def time(self) -> tuple[float, float]:
        """Wall and CPU seconds of one run; its output must say `expect` (a run that
        failed fast would flatter the figure)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # this child, now reaped
        if p.returncode != 0 or self.expect not in p.stdout:
            raise RuntimeError(f"{self.subject} {self.case} exited {p.returncode}: "
                               f"{(p.stdout + p.stderr)[-500:]}")
        return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def entry_point(tree: Path) -> list[str]:
    """The command the tree's `rackfire` script runs: its [project.scripts] entry."""
    scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["rackfire"].partition(":")
    return [sys.executable, "-c",
            f"import sys; from {module} import {func}; sys.argv[0] = 'rackfire'; "
            f"sys.exit({func}())"]


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def cases(server: BenchServer, result: Result) -> list[Case]:
    trees = [(SELF, ROOT, "")]
    if other := os.environ.get(BEFORE):
        tree = Path(other).resolve()
        trees.append((f"rackfire at {commit(tree)}", tree, f"the tree at {tree}"))
    out = []
    for subject, tree, note in trees:
        env = {**server.env(), "COLUMNS": "100", "PYTHONPATH": str(tree / "src")}
        out.append(Case("--help", subject, [*entry_point(tree), "--help"], env, "Usage", note))
        out.append(Case("ps", subject, [*entry_point(tree), "ps"], env, "no instances", note))
    env = {**os.environ, "COLUMNS": "100"}
    out.append(Case("--help", "floor: typer alone", [sys.executable, "-c", TYPER_ALONE, "--help"],
                    env, "Usage", "a typer app of two commands, rich help", floor=True))
    out.append(Case("--help", "floor: python alone", [sys.executable, "-c", "print('Usage')"],
                    env, "Usage", "the interpreter's start", floor=True))
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        result.notes.append("kubectl is not installed here: no side-by-side figure (the "
                            "issue quotes about 0.1 s for it).")
        return out
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True,
                             text=True, check=False).stdout.splitlines()
    out.append(Case("--help", "kubectl", [kubectl, "--help"], dict(os.environ), "kubectl",
                    version[0] if version else "unknown version"))
    result.notes.append(f"kubectl is {os.path.realpath(kubectl)}: `kubectl --help` is timed "
                        "beside `rackfire --help`; `ps` has no kubectl counterpart here (no "
                        "cluster to ask).")
    return out


def run(runs: int) -> Result:
    result = Result(
        "cli_start", "CLI start time",
        f"Wall time of one `rackfire` process, median of {runs} runs: `rackfire --help` "
        "(the whole command tree is built to print it), and `rackfire ps` against a running "
        "server with no instances (one API call); then the CPU time (user + system) of the "
        "same processes, which moves less with the machine's load. Each tree runs as its "
        "installed entry point does; see bench/cli_start.py.")
    server = BenchServer(DATA, POOL, PORT, args=("--no-local-host",))
    todo = cases(server, result)
    result.notes.append("`rackfire --version` does not exist (a usage error): not measured.")
    with socket.socket() as s:  # else the health check could be answered by another server
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            raise RuntimeError(f"port {PORT} is taken: stop what listens there")
    server.start()
    try:
        for c in todo:  # not counted: it writes the bytecode caches
            c.time()
        for _ in range(runs):
            for c in todo:
                wall, cpu = c.time()
                c.wall.append(wall)
                c.cpu.append(cpu)
    finally:
        server.stop()
    for c in todo:
        result.add(c.case, c.subject, c.wall, "s", note=c.note, part=c.floor)
    for c in todo:
        result.add(f"{c.case}, CPU", c.subject, c.cpu, "s", note=c.note, part=c.floor)
    ours = statistics.median(next(c.wall for c in todo if (c.case, c.subject) == ("--help", SELF)))
    result.targets.append(Target(f"`rackfire --help` <= {TARGET} s (wall)", ours <= TARGET,
                                 f"{ours:.3f} s"))
    return result
