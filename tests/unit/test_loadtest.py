"""control/loadtest.py's pure parts: the checks, the clients' roles, the appliance's files
(verbatim through the template sandbox), and a client's result read back from its log tail
even when it is longer than a log record (16 KiB: split in parts by the log writer)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from rackfire.cli.load import parse_rate
from rackfire.control import loadtest
from rackfire.control.jobs import LOG_LINES, TASK_HISTORY
from rackfire.errors import PrereqError
from rackfire.loadgen.histogram import Histogram
from rackfire.loadgen.report import merge
from rackfire.model import templates
from rackfire.runtime import logshim, logwriter
from rackfire.spec import load_stack_text

LOADGEN = Path(loadtest.__file__).resolve().parent.parent / "loadgen"


@pytest.mark.parametrize(("args", "says"), [
    (("http://a/", 0, 1.0, 5.0, 64), "clients"), (("http://a/", 65, 1.0, 5.0, 64), "clients"),
    (("http://a/", 1, 0.0, 5.0, 64), "rate"), (("http://a/", 1, 1.0, 0.5, 64), "duration"),
    (("http://a/", 1, 1.0, 3601.0, 64), "duration"),
    (("http://a/", 1, 1.0, 5.0, 0), "connections"),
    (("https://a/", 1, 1.0, 5.0, 64), "http://"), (("a:80", 1, 1.0, 5.0, 64), "http://"),
    (("http://a b/", 1, 1.0, 5.0, 64), "http://"),
    (("http://a:99999/", 1, 1.0, 5.0, 64), "Port out of range"),
])
def test_check_refuses(args: tuple[str, int, float, float, int], says: str) -> None:
    with pytest.raises(PrereqError, match=says):
        loadtest.check(*args)


def test_names_and_roles() -> None:
    assert loadtest.load_stack_name("shop") == "shop-load"
    assert len(loadtest.load_stack_name("a" * 32)) == 32
    roles = loadtest.role_names(64)
    # No role has more clients than the jobs' tick keeps ended runs of (their results).
    assert max(roles.count(r) for r in set(roles)) <= TASK_HISTORY
    assert roles[0] == "client" and roles[-1] == "client-4"


def test_the_appliance_arrives_byte_exact() -> None:
    spec = load_stack_text(loadtest.stack_text("shop-load", loadtest.role_names(25),
                                               {"LOAD_TARGET": "http://a/"}), "x.json")
    assert [r.name for r in spec.roles] == ["client", "client-2"]
    role = spec.roles[0]
    assert role.count == 0 and role.resources.memory == 64 << 20
    for path, text in role.files:
        rendered = templates.render(templates.compile_template(text)[0], {},
                                    templates.MAX_FILE_BYTES, "too big")
        assert rendered == (LOADGEN / Path(path).name).read_text()


def wide_result() -> dict[str, object]:
    """A result whose histogram has a bucket at every other index: ~1,300 of them."""
    h = Histogram()
    rng = random.Random(1)
    for _ in range(20_000):
        h.record(int(10 ** rng.uniform(1, 7.7)))
    n = h.count
    return {"version": 1, "client": "c", "target": "http://a:80/", "method": "GET",
            "arrivals": "uniform", "rate": 100.0, "duration": 5.0, "connections": 64,
            "timeout": 5.0, "start_at": 1.0, "started": 1.0, "finished": 7.0,
            "issue_window": 4.99, "interrupted": False, "sent": n, "completed": n, "ok": n,
            "errors": dict.fromkeys(("connect", "timeout", "reset", "http_4xx", "http_5xx",
                                     "other"), 0),
            "statuses": {"200": n}, "connections_opened": 3, "late_max_ms": 1.0,
            "latency": h.to_json()}


def test_a_result_longer_than_a_log_record_is_read_back(tmp_path: Path) -> None:
    result = wide_result()
    line = json.dumps(result, separators=(",", ":")).encode() + b"\n"  # as client.py writes
    assert len(line) > logshim.MAX_LINE  # two records at least
    progress = b"".join(b'{"t": %d, "sent": 1, "done": 1, "errors": 0, "inflight": 0}\n' % i
                        for i in range(60))
    stream = logshim.Stream(b"stdout")
    records: list[bytes] = []
    data = progress + line
    for i in range(0, len(data), 4096):  # as the pipe gives it: pieces of lines
        records += stream.feed(data[i:i + 4096], time.time_ns())
    records += stream.flush(eof=True)
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(records))
    tail = logwriter.tail_lines(log, LOG_LINES)
    assert loadtest.result_of(tail) == result
    assert merge([loadtest.result_of(tail)]).reporting == 1


def test_no_result_in_the_log() -> None:
    assert loadtest.result_of("") is None
    assert loadtest.result_of('{"t": 1}\nclient: LOAD_RATE is required') is None
    assert merge([loadtest.result_of('{"version":1,"cut')]).errors["no_result"] == 1


def test_parse_rate() -> None:
    assert parse_rate("600/s") == parse_rate("600") == parse_rate("36000/m") == 600.0
    for bad in ("0", "-1/s", "fast", "6/day", "inf", "nan"):
        with pytest.raises(ValueError, match="not a rate"):
            parse_rate(bad)
