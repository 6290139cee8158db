"""The console log's on-disk format and file names. Pure.

Each line an instance writes is one record, stamped when its log writer read it (the CRI
logging format, which log shippers such as fluent-bit and promtail read as it is):

    2026-12-06T20:31:47.123456789Z stdout F the line as written

RFC 3339 in UTC with nanoseconds, always 9 digits, so records sort as text in time order;
`F` is a whole line, `P` a part of one (a line longer than logshim's MAX_LINE, 16 KiB, or
one left without its newline for a while), continued by the next record of that stream. The
current file is `console.log`; rotated ones are `console.log.1` (the newest) to
`console.log.<max_files-1>`.
A line that does not parse (a log written before records) is shown as it is, untimed.
The writer (runtime/logshim.py, standard library only) holds the encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STDOUT, STDERR = b"stdout", b"stderr"

_RECORD = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([FP]) (.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Record:
    time: bytes | None  # None: a line written before records, with no timestamp
    stream: bytes
    partial: bool
    content: bytes  # without its newline


def parse(line: bytes) -> Record:
    """One line of a log file, its newline stripped or not."""
    line = line[:-1] if line.endswith(b"\n") else line
    m = _RECORD.fullmatch(line)
    if m is None:
        return Record(None, STDOUT, False, line)
    return Record(m.group(1), m.group(2), m.group(3) == b"P", m.group(4))


def rotated(path: Path, index: int) -> Path:
    """The log's `index`th rotated file (1 is the newest); 0 is the current one."""
    return path if index == 0 else path.with_name(f"{path.name}.{index}")
