"""The replicated-db failover benchmark's pure parts: its copy of the stack file, who the
role's name leads to in /etc/hosts, when writes flowed again from the writer's records, and
its result judging the targets on every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.dbfailover import (
    MIN_RUNS,
    WEB_PORT,
    Write,
    _result,
    db_name,
    missing,
    named,
    retarget,
    stack_name,
    timeline,
)

from rackfire.spec import load_stack_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["shop", "shop-ha"])
def test_the_copy_publishes_the_bench_port_and_still_loads(name: str) -> None:
    path = EXAMPLES / name / "stack.yaml"
    if not path.exists():
        pytest.skip(f"{path} is not there yet")
    text = retarget(path.read_text(), WEB_PORT)
    spec = load_stack_text(text, str(path))
    lb = next(r for r in spec.roles if r.name == "lb")
    assert [p.host_port for p in lb.ports] == [WEB_PORT]
    assert stack_name(text) == spec.name == name
    assert db_name(text) == "shop"


def test_a_stack_that_publishes_no_8080_is_refused() -> None:
    with pytest.raises(RuntimeError, match="8080"):
        retarget('ports: ["9090:80"]', WEB_PORT)


def test_the_name_leads_to_the_instances_that_carry_it_as_an_alias() -> None:
    hosts = ("127.0.0.1 localhost\n"
             "10.97.0.2 db-0\n"
             "10.97.0.3 db-1 db  # the primary\n"
             "10.97.0.4 app-0 app\n"
             "# 10.97.0.9 db-9 db\n")
    assert named(hosts, "db") == ["db-1"]
    assert named(hosts, "app") == ["app-0"]
    assert named(hosts, "mem") == []
    assert named("10.97.0.2 db-0 db\n10.97.0.3 db-1 db\n", "db") == ["db-0", "db-1"]


def w(start: float, end: float, id: int | None, why: str = "") -> Write:
    return Write(start, end, id, why or ("" if id is not None else "503"))


def test_writes_resume_at_the_first_ack_sent_after_the_kill_and_steady_at_a_run() -> None:
    t0 = 100.0
    writes = [w(99.0, 100.5, 1),  # sent before the kill: does not count
              w(100.1, 100.2, None), w(100.2, 102.2, None, "timeout"),
              w(103.0, 103.1, 2),  # the first after the kill
              w(103.1, 103.2, None),  # breaks the run
              *[w(104 + n / 10, 104.05 + n / 10, 3 + n) for n in range(3)],
              w(105.0, 105.1, None, "refused")]
    tl = timeline(writes, t0, steady=3)
    assert tl.resumed == pytest.approx(3.1)
    assert tl.steady == pytest.approx(4.05)  # the first of the 3 in a row
    assert (tl.failed, tl.failures) == (3, {"503": 2, "timeout": 1})  # none after steady
    assert tl.acked == 4
    # Sent after the clock's start but before the link went down: answered by the old
    # primary, not a sign that writes resumed.
    early = timeline([w(100.001, 100.01, 1), *writes[1:]], t0, steady=3, since=100.005)
    assert early.resumed == pytest.approx(3.1)
    assert timeline([w(100.001, 100.01, 1)], t0).resumed == pytest.approx(0.01)
    none = timeline([w(101, 101.1, None)], t0, steady=3)
    assert (none.resumed, none.steady, none.failed) == (None, None, 1)


def test_missing_is_what_was_acknowledged_and_not_found() -> None:
    assert missing([1, 2, 3, 5], [1, 2, 3, 4, 5, 6]) == []
    assert missing([5, 1, 2, 3], [2, 3]) == [1, 5]


def one(resumed: float | None, lost: tuple[int, ...] = (), victim: str = "h1",
        ) -> dict[str, Any]:
    return {"victim": victim, "old": "db-0", "new": "db-1", "new_host": "h2",
            "on_victim": ["app/1", "db/0"], "killed_in": 0.01, "resumed": resumed,
            "steady": None if resumed is None else resumed + 0.5, "failed": 100,
            "failures": {"503": 98, "timeout": 2}, "promote": 4.8, "promote_reason": "",
            "out_of_recovery": 5.2,
            "acked": 1000, "acked_after": 400, "lost": list(lost), "failed_back": 0,
            "failures_back": [], "acked_back": 300, "old_host": victim, "standby_missing": [],
            "standby_after_back": 2.5,
            "sync_after_back": 3.0, "whole_after_back": 3.0}


def test_targets_on_the_max_every_run_and_the_lost_total() -> None:
    runs = [one(6.0), one(7.5, victim="h2"), one(5.0, victim="h3")] * 7
    ok = _result(runs, {"primary": "db-1", "looks": 500, "missing": []}, 1, 21000,
                 "examples/shop-ha/stack.yaml")
    resume, lost, second = ok.targets
    assert (resume.met, resume.figure) == (True, "median 6.00 s, max 7.50 s")
    assert lost.met is True and lost.figure.startswith("0 lost of 21000 acknowledged over 21")
    assert second.met is True
    rows = {x.subject.split(" (")[0]: x.samples for x in ok.rows}
    assert rows["rackfire: writes accepted again"] == [6.0, 7.5, 5.0] * 7
    assert rows["acknowledged writes lost"] == [0.0] * 21
    assert rows["failed writes until steady"] == [100.0] * 21
    assert any("503 2058, timeout 42" in n for n in ok.notes)
    assert any("No writes failed while the host came back in 21 of 21 runs." in n
               for n in ok.notes)
    assert any("db-0 on h1 (with app/1, db/0) -> db-1: 7 runs; db-0 on h2" in n
               for n in ok.notes)

    few = _result(runs[:3], {"primary": "db-1", "looks": 50, "missing": []}, 1, 3000, "x")
    assert few.targets[1].met is False  # 0 lost, but fewer than MIN_RUNS runs
    assert len(runs[:3]) < MIN_RUNS
    back = {**one(6.0, lost=(7, 9)), "failed_back": 1, "failures_back": ["503 at +2.10 s"]}
    bad = _result([back, one(None)], {"primary": "db-0", "looks": 9, "missing": [7, 9]}, 2,
                  2000, "x")
    assert any("came back in 1 of 2 runs; in run 1: 503 at +2.10 s (sent" in n
               for n in bad.notes)
    resume, lost, second = bad.targets
    assert resume.met is False  # a run in which writes never resumed
    assert lost.met is False and lost.figure.startswith("2 lost of 2000")
    assert "missing on the last primary: [7, 9]" in lost.figure
    assert second.met is False and second.figure.startswith("at most 2 at once")
