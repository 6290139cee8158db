"""A witness for singletons: the instance prints `witness <incarnation> <time>` every 100 ms
to its console; a collector thread here ships those lines off each bed host as they are
written (as a log shipper would, into this process: outside every host under test), and
`overlaps` is the checker: no two incarnations of one instance may have run at once."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Run inside the instance: one line per 100 ms, flushed, stamped with the machine's clock
# (instances share the kernel's clock with this process: no time namespaces).
SCRIPT = """\
import os, sys, time
run = os.environ.get("RACKFIRE_INCARNATION", "0")
while True:
    print(f"witness {run} {time.time():.3f}", flush=True)
    time.sleep(0.1)
"""
LINE = re.compile(r"witness (\d+) (\d+\.\d+)")


@dataclass(frozen=True, slots=True)
class Mark:
    incarnation: int
    host: str
    time: float


@dataclass
class Witness:
    """Ships the witness lines of instance `instance_id` from every agent dir given."""

    agent_dirs: dict[str, Path]  # host -> its agent's data dir
    instance_id: str
    marks: list[Mark] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self) -> Witness:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._ship()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._ship()

    def _ship(self) -> None:
        for host, d in self.agent_dirs.items():
            log = d / "instances" / self.instance_id / "console.log"
            try:
                size = log.stat().st_size
                at = self._offsets.get(log, 0)
                if size < at:  # made anew (destroyed, created again): from its start
                    at = 0
                with open(log, "rb") as f:
                    f.seek(at)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # a line half-written is read next time
            self._offsets[log] = at + end
            for m in LINE.finditer(chunk[:end].decode(errors="replace")):
                self.marks.append(Mark(int(m.group(1)), host, float(m.group(2))))

    def runs(self) -> dict[tuple[int, str], tuple[float, float]]:
        """(incarnation, host) -> its first and last mark."""
        out: dict[tuple[int, str], tuple[float, float]] = {}
        for m in self.marks:
            first, last = out.get((m.incarnation, m.host), (m.time, m.time))
            out[(m.incarnation, m.host)] = (min(first, m.time), max(last, m.time))
        return out


def overlaps(runs: dict[tuple[int, str], tuple[float, float]]) -> list[str]:
    """Each pair of runs (an incarnation on a host) that were alive at once."""
    spans = sorted(runs.items(), key=lambda kv: kv[1][0])
    bad = []
    for i, (a, (_, a_end)) in enumerate(spans):
        for b, (b_start, _) in spans[i + 1:]:
            if b_start <= a_end:
                bad.append(f"incarnation {a[0]} on {a[1]} ran until {a_end:.3f}, "
                           f"incarnation {b[0]} on {b[1]} from {b_start:.3f}")
    return bad
