"""Merging the load-test clients' results into one report."""

from __future__ import annotations

from typing import Any

from rackfire.loadgen.histogram import Histogram
from rackfire.loadgen.report import KINDS, decode, merge, parse


def result(latencies_ms: list[float], *, rate: float = 100.0, started: float = 1000.0,
           sent: int | None = None, errors: dict[str, int] | None = None,
           statuses: dict[str, int] | None = None, ok: int | None = None) -> dict[str, Any]:
    h = Histogram()
    for ms in latencies_ms:
        h.record(int(ms * 1000))
    n = len(latencies_ms)
    return {"version": 1, "client": "c", "target": "http://t:80/", "method": "GET",
            "arrivals": "uniform", "rate": rate, "duration": 3.0, "connections": 64,
            "timeout": 5.0, "start_at": started, "started": started,
            "finished": started + 3.1, "issue_window": 2.99, "interrupted": False,
            "sent": n if sent is None else sent, "completed": n,
            "ok": n if ok is None else ok,
            "errors": {**dict.fromkeys(KINDS, 0), **(errors or {})},
            "statuses": statuses if statuses is not None else {"200": n},
            "connections_opened": 3, "late_max_ms": 0.5, "latency": h.to_json()}


def test_merge_adds_counts_and_merges_latencies() -> None:
    a = result([1.0] * 98 + [500.0, 1000.0], statuses={"200": 95, "503": 5}, ok=95,
               errors={"http_5xx": 5})
    b = result([2.0] * 100, sent=103, errors={"connect": 3}, started=1000.2)
    rep = merge([a, b])
    assert (rep.clients, rep.reporting) == (2, 2)
    assert (rep.sent, rep.completed, rep.ok) == (203, 200, 195)
    assert rep.errors["http_5xx"] == 5 and rep.errors["connect"] == 3
    assert rep.errors["no_result"] == 0 and rep.failed == 8
    assert rep.statuses == {"200": 195, "503": 5}
    assert rep.duration == 3.3  # 1000.0 .. 1003.3
    assert rep.throughput == round(200 / 3.3, 2)
    assert rep.intended_rate == 200.0
    assert rep.achieved_rate == round(100 / 3 + 103 / 3, 2)
    assert abs(rep.p50_ms - 2.0) < 0.02  # rank 100 of 98 x 1 ms, 100 x 2 ms, 2 slow
    assert abs(rep.p99_ms - 2.0) < 0.02
    assert rep.max_ms == 1000.0


def test_missing_or_malformed_results_are_no_result_not_a_crash() -> None:
    good = result([5.0] * 10)
    bad_hist = {**good, "latency": {"bits": 3}}
    wrong_counts = {**good, "completed": 11}
    rep = merge([good, None, "junk", {}, bad_hist, wrong_counts, {**good, "version": 2},
                 {**good, "errors": {"connect": 1}}, {**good, "sent": -1},
                 {**good, "statuses": {"abc": 1}}, {**good, "rate": "fast"}])
    assert (rep.clients, rep.reporting) == (11, 1)
    assert rep.errors["no_result"] == 10
    assert rep.sent == 10 and abs(rep.p50_ms - 5.0) < 0.05
    assert parse(good) is not None and parse(bad_hist) is None


def test_no_results_at_all() -> None:
    rep = merge([None])
    assert rep.reporting == 0 and rep.sent == 0 and rep.duration == 0.0
    assert rep.throughput == 0.0 and rep.p99_ms == 0.0 and rep.errors["no_result"] == 1
    assert merge([]).clients == 0


def test_json_and_rows() -> None:
    rep = merge([result([1.0, 2.0, 3.0], errors={"timeout": 1}, sent=4), None])
    data = rep.to_json()
    assert data["errors"]["timeout"] == 1 and data["errors"]["no_result"] == 1
    assert set(data) >= {"clients", "sent", "completed", "duration", "throughput", "p50_ms",
                         "p95_ms", "p99_ms", "max_ms", "errors", "statuses",
                         "intended_rate", "achieved_rate"}
    rows = dict(rep.rows())
    assert rows["clients"] == "1/2"
    assert rows["errors"] == "timeout 1, no_result 1"
    assert rows["statuses"] == "200 3"
    assert "p99" in rows["latency"]


def test_decode_feeds_merge() -> None:
    import json

    good = json.dumps(result([1.0]))
    rep = merge([decode(good), decode(None), decode("{trunc"), decode(b"[]")])
    assert (rep.clients, rep.reporting, rep.errors["no_result"]) == (4, 1, 3)
