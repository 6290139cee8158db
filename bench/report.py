"""What a measurement returns, where it is kept, and how it becomes the tables of
docs/benchmarks.md: median, min and max of the runs, and rackfire's ratio to each peer."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:begin (written by `python -m bench`; edit bench/report.py, not this) -->"
END = "<!-- bench:end -->"
SELF = "rackfire"


@dataclass
class Row:
    """One subject's samples for one case: `rackfire` or a peer, `50 at once`."""

    case: str
    subject: str
    samples: list[float]
    unit: str  # "s", "ms", "MiB", "placements/s"
    higher_is_better: bool = False
    note: str = ""  # how this subject was run, when it differs from the others
    part: bool = False  # a part of rackfire's own figure (a step), not a peer: no ratio

    def summary(self) -> tuple[float, float, float]:
        return (statistics.median(self.samples), min(self.samples), max(self.samples))


@dataclass
class Target:
    what: str  # "50 at once: >= 2x faster than podman"
    met: bool | None  # None: could not be measured (a peer is missing)
    figure: str  # "2.7x"


@dataclass
class Result:
    measure: str  # the name on the command line: start, bringup, plan, schedule, footprint
    title: str
    what: str  # how it is measured, a paragraph of markdown
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings, peers skipped and why
    command: str = ""
    started: str = ""
    seconds: float = 0.0  # how long the measurement took
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end
    machine: dict[str, str] = field(default_factory=dict)

    def add(self, case: str, subject: str, samples: list[float], unit: str, **kw: Any) -> Row:
        row = Row(case, subject, list(samples), unit, **kw)
        if row.samples:
            self.rows.append(row)
        return row

    def median(self, case: str, subject: str) -> float | None:
        for r in self.rows:
            if r.case == case and r.subject == subject:
                return r.summary()[0]
        return None

    def save(self, directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.measure}.json"
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @staticmethod
    def load_file(path: Path) -> Result:
        d = json.loads(path.read_text())
        d["rows"] = [Row(**r) for r in d["rows"]]
        d["targets"] = [Target(**t) for t in d["targets"]]
        d["load"] = tuple(d["load"])
        return Result(**d)


def ratio_target(result: Result, case: str, peer: str, at_least: float, what: str) -> Target:
    """A "rackfire is at least `at_least` times faster than `peer`" target (lower is
    better); `at_least` below 1 reads "within 1/at_least times of"."""
    ours, theirs = result.median(case, SELF), result.median(case, peer)
    if ours is None or theirs is None or ours <= 0:
        return Target(what, None, f"{peer} not measured" if theirs is None else "not measured")
    speedup = theirs / ours
    return Target(what, speedup >= at_least, f"{speedup:.2f}x faster" if speedup >= 1
                  else f"{1 / speedup:.2f}x slower")


# -- the machine ---------------------------------------------------------------------------

def _version(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    line = (out.stdout or out.stderr).strip().splitlines()
    return line[0].strip() if line else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    os_name = "unknown"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    debian = Path("/etc/debian_version")
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{int(mem) // 1024} MiB",
        "kernel": platform.release(),
        "os": os_name + (f" ({debian.read_text().strip()})" if debian.exists() else ""),
        "python": platform.python_version(),
        "cgroups": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1",
        "runc": _version("runc", "--version"),
        "lxc": _version("lxc-start", "--version"),
        "podman": _version("podman", "--version"),
        "docker": _version("/usr/sbin/dockerd", "--version"),
    }


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- docs/benchmarks.md --------------------------------------------------------------------

ORDER = ["start", "bringup", "plan", "schedule", "footprint", "agent_calls", "cli_start",
         "failover", "snapshot", "dbfailover", "autoscale", "ssh"]
# Each measure's section starts with this line, so that a rewrite of the doc keeps the
# sections of measures whose result file is not here (run elsewhere, or not kept in git).
SECTION = "<!-- bench:measure {} -->"
_SECTION = re.compile(r"^<!-- bench:measure (\w+) -->$", re.M)


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}".replace(",", " ")
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) >= 0.01 else f"{x:.2g}"


def _vs(ours: Row | None, row: Row) -> str:
    """How rackfire compares with this row's subject, on the medians."""
    if ours is None or row is ours or row.subject == SELF or row.part:
        return ""
    a, b = ours.summary()[0], row.summary()[0]
    if a <= 0 or b <= 0:
        return ""
    better = b / a if not row.higher_is_better else a / b
    return f"{better:.2f}x faster" if better >= 1 else f"{1 / better:.2f}x slower"


def render_result(r: Result) -> list[str]:
    out = [f"### {r.title}", "", r.what.strip(), ""]
    cases: dict[str, list[Row]] = {}
    for row in r.rows:
        cases.setdefault(row.case, []).append(row)
    out += ["| case | subject | median | min | max | runs | rackfire vs it |",
            "|---|---|---:|---:|---:|---:|---|"]
    for case, rows in cases.items():
        ours = next((x for x in rows if x.subject == SELF), None)
        for row in rows:
            med, lo, hi = row.summary()
            subject = row.subject + (f" ({row.note})" if row.note else "")
            out.append(f"| {case} | {subject} | {_num(med)} {row.unit} | {_num(lo)} | "
                       f"{_num(hi)} | {len(row.samples)} | {_vs(ours, row)} |")
    out.append("")
    if r.targets:
        out += ["| target | met | measured |", "|---|---|---|"]
        for t in r.targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t.met]
            out.append(f"| {t.what} | {met} | {t.figure} |")
        out.append("")
    out += [f"- {n}" for n in r.notes]
    out += [f"- Command: `{r.command}`; started {r.started}, took {r.seconds:.0f} s, "
            f"load average {r.load[0]:.1f} at the start and {r.load[1]:.1f} at the end.", ""]
    return out


def _rank(measure: str) -> int:
    return ORDER.index(measure) if measure in ORDER else len(ORDER)


def kept_sections(block: str) -> dict[str, str]:
    """The sections of a generated block by measure, each its text up to the next one."""
    marks = list(_SECTION.finditer(block))
    out = {}
    for i, m in enumerate(marks):
        stop = marks[i + 1].start() if i + 1 < len(marks) else block.find(END, m.end())
        out[m.group(1)] = block[m.end():stop if stop >= 0 else len(block)].strip("\n")
    return out


def render(results: list[Result], kept: dict[str, str] | None = None) -> str:
    """The generated block: one section per result, and the kept section of any measure
    with no result here."""
    sections = {r.measure: "\n".join(render_result(r)).rstrip("\n") for r in results}
    for measure, text in (kept or {}).items():
        sections.setdefault(measure, text)
    out = [BEGIN, "", "## Side by side: `make bench`", ""]
    if results:
        m = results[0].machine
        out += ["Every figure below comes from one command, `make bench` (as root: it installs "
                "the peers it compares against from Debian's packages, starts what needs "
                "starting, and stops and removes everything it made). Each measurement is "
                "also `python -m bench MEASURE --runs N`. Ratios compare medians.", "",
                "| machine | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in m.items()]
        out.append("")
    for measure in sorted(sections, key=_rank):
        out += [SECTION.format(measure), sections[measure], ""]
    out.append(END)
    return "\n".join(out) + "\n"


def write_doc(results: list[Result], doc: Path = DOC) -> None:
    """Put the generated part between its markers; everything else in the file stays."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    old = pattern.search(text)
    block = render(results, kept_sections(old.group(0)) if old else None)
    if old:
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        head, sep, rest = text.partition("\n## ")
        text = head.rstrip("\n") + "\n\n" + block + ("\n## " + rest if sep else "")
    doc.write_text(text)


def load_all(directory: Path = RESULTS) -> list[Result]:
    out = []
    for name in ORDER:
        p = directory / f"{name}.json"
        if p.exists():
            out.append(Result.load_file(p))
    return out


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
