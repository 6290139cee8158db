"""HAProxy CSV stats: a real `show stat` answer read (HAProxy 2.6, one frontend, a backend of
two servers up and one down, 61 requests served), rates between snapshots, counter resets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.errors import ExecError
from rackfire.plan.haproxy_stats import (
    HEADER,
    RowKind,
    StatRow,
    backend_rates,
    counter_delta,
    latency_estimate,
    parse_stat,
)

FIXTURE = Path(__file__).parent / "fixtures" / "haproxy_stat.csv"


@pytest.fixture
def after() -> dict[tuple[str, str], StatRow]:
    return parse_stat(FIXTURE.read_text())


def test_parses_every_row_by_proxy_and_server(after: dict[tuple[str, str], StatRow]) -> None:
    assert set(after) == {("web", "FRONTEND"), ("app", "app-0"), ("app", "app-1"),
                          ("app", "app-2"), ("app", "BACKEND"), ("stats", "FRONTEND"),
                          ("stats", "BACKEND")}


def test_reads_the_fields(after: dict[tuple[str, str], StatRow]) -> None:
    be = after[("app", "BACKEND")]
    assert (be.kind, be.status, be.stot, be.req_tot) == (RowKind.BACKEND, "UP", 61, 61)
    assert (be.hrsp_2xx, be.hrsp_4xx, be.hrsp_5xx, be.qcur) == (60, 1, 0, 0)
    assert (be.rtime, be.ttime) == (1, 1)
    s0, s2 = after[("app", "app-0")], after[("app", "app-2")]
    assert (s0.kind, s0.status, s0.req_tot, s0.serving) == (RowKind.SERVER, "UP", 31, True)
    assert (s2.status, s2.req_tot, s2.serving) == ("DOWN", 0, False)
    fe = after[("web", "FRONTEND")]
    assert (fe.kind, fe.status, fe.req_tot) == (RowKind.FRONTEND, "OPEN", 61)
    assert fe.qcur is None and fe.ttime is None  # empty for a frontend


def test_the_stats_page_form_reads_the_same(after: dict[tuple[str, str], StatRow]) -> None:
    # /stats;csv is the same text without the socket's closing blank line
    assert parse_stat(FIXTURE.read_text().rstrip("\n")) == after


def test_quoted_fields_and_columns_found_by_name() -> None:
    text = FIXTURE.read_text()
    header, *lines = text.splitlines()
    names = header[2:].split(",")
    row = lines[1].split(",")  # app,app-0
    assert row[names.index("check_desc")] == "Layer4 check passed"
    row[names.index("check_desc")] = '"a, ""quoted"" text"'
    rows = parse_stat("\n".join([header, ",".join(row)]))
    assert rows[("app", "app-0")].req_tot == 31
    # a version with another column ahead reads the same: columns go by name
    moved = "\n".join(["# pxname,svname,extra," + header[len(HEADER):],
                       *(",".join([*ln.split(",")[:2], "x", *ln.split(",")[2:]])
                         for ln in lines if ln)])
    assert parse_stat(moved) == parse_stat(text)


def test_not_stats_is_an_error() -> None:
    with pytest.raises(ExecError, match="not HAProxy CSV stats"):
        parse_stat("Unknown command. Please enter one of the following commands only :\n")
    with pytest.raises(ExecError, match="lack the columns"):
        parse_stat("# pxname,svname,status\nweb,FRONTEND,OPEN\n")


def earlier(after: dict[tuple[str, str], StatRow], **req: int) -> dict[tuple[str, str],
                                                                        StatRow]:
    """`after` with the request counters of some rows set back, as an earlier snapshot."""
    out = dict(after)
    for name, n in req.items():
        key = ("app", name.replace("_", "-"))
        out[key] = replace(out[key], req_tot=n, stot=n)
    return out


def test_rates_between_snapshots(after: dict[tuple[str, str], StatRow]) -> None:
    before = earlier(after, BACKEND=21, app_0=11, app_1=10)
    r = backend_rates(before, after, "app", 10.0)
    assert (r.requests, r.requests_per_second) == (40, 4.0)
    assert [(s.server, s.requests, s.requests_per_second, s.serving) for s in r.servers] == [
        ("app-0", 20, 2.0, True), ("app-1", 20, 2.0, True), ("app-2", 0, 0.0, False)]
    assert (r.serving, r.requests_per_instance, r.queue) == (2, 2.0, 0)
    assert (r.rtime_ms, r.ttime_ms) == (1, 1)
    assert dict(r.responses) == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0,
                                 "other": 0}  # the hrsp counters were not set back


def test_a_counter_reset_counts_from_zero(after: dict[tuple[str, str], StatRow]) -> None:
    # HAProxy reloaded between the snapshots: its counters went down, to what it counted since
    before = earlier(after, BACKEND=5000, app_0=2600, app_1=2400)
    before[("app", "BACKEND")] = replace(before[("app", "BACKEND")], hrsp_2xx=4990)
    r = backend_rates(before, after, "app", 2.0)
    assert (r.requests, r.requests_per_second) == (61, 30.5)
    assert [s.requests for s in r.servers] == [31, 30, 0]
    assert dict(r.responses)["2xx"] == 60
    assert counter_delta(10, 3) == 3 and counter_delta(3, 10) == 7
    assert counter_delta(None, 4) == 4 and counter_delta(4, None) is None


def test_servers_come_and_go(after: dict[tuple[str, str], StatRow]) -> None:
    before = earlier(after, BACKEND=21, app_0=11, app_1=10)
    del before[("app", "app-1")]  # new since: counted from zero
    before[("app", "app-9")] = replace(after[("app", "app-0")], server="app-9")  # gone
    r = backend_rates(before, after, "app", 10.0)
    assert [(s.server, s.requests) for s in r.servers] == [
        ("app-0", 20), ("app-1", 30), ("app-2", 0)]


def test_queue_adds_the_backend_and_its_servers(after: dict[tuple[str, str],
                                                              StatRow]) -> None:
    now = dict(after)
    now[("app", "BACKEND")] = replace(now[("app", "BACKEND")], qcur=3)
    now[("app", "app-0")] = replace(now[("app", "app-0")], qcur=2)
    assert backend_rates(after, now, "app", 1.0).queue == 5


def test_latency_estimate_is_the_average_total_time(after: dict[tuple[str, str],
                                                                StatRow]) -> None:
    now = dict(after)
    now[("app", "BACKEND")] = replace(now[("app", "BACKEND")], ttime=143)
    assert latency_estimate(backend_rates(after, now, "app", 1.0)) == 0.143


def test_refusals(after: dict[tuple[str, str], StatRow]) -> None:
    with pytest.raises(ExecError, match="no backend 'nope'"):
        backend_rates(after, after, "nope", 1.0)
    with pytest.raises(ExecError, match="apart in time"):
        backend_rates(after, after, "app", 0.0)
