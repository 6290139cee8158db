"""Jobs and tasks in the controller harness (tests/harness: the real Store, Fleet and
Controller over an in-memory host and a fake clock): a cron job runs exactly once per slot
for an hour, the controller restarted in the middle; missed slots follow `catch_up`; a
slot while a run still runs follows `concurrency`; timeouts, exit codes and lost runs are
recorded, and every run's instance goes once it has ended."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.harness import Harness, harness

from rackfire.errors import NotFound
from rackfire.model.cron import parse
from rackfire.model.records import RunKind, RunState
from rackfire.runtime.fake import Exit
from rackfire.spec import load_stack_text

STACK = "s"
STEP = 5.0  # seconds of fake time between looks


def stack(job: str = "", command: str = "[report]") -> str:
    return (f"stack: {STACK}\nroles:\n  web:\n    image: base\n    command: [serve]\n"
            f"  report:\n    image: base\n    command: {command}\n"
            f"    schedule: '* * * * *'\n{job}")


@contextmanager
def started(tmp_path: Path, text: str, run_for: float = 5.0,
            code: int = 0) -> Iterator[list[Harness]]:
    h = harness(tmp_path)
    h.host.runtime.exits[("report",)] = Exit(run_for, code)
    h.clock.to((h.clock() // 60 + 1) * 60 + 1)  # just past a minute: slots are whole
    h.controller.apply(load_stack_text(text, "stack.yaml"), None, actor="test")
    box = [h]
    try:
        yield box
    finally:
        box[0].close()


def run_for(h: Harness, seconds: float) -> None:
    """What the controller's threads do, in fake time: heartbeats, the job tick, a pass."""
    end = h.clock() + seconds
    while h.clock() < end:
        h.beat()
        h.controller.jobs.tick()
        h.beat()
        h.controller.reconcile(STACK)
        h.clock.advance(STEP)


def job_runs(h: Harness) -> list:  # type: ignore[type-arg]
    return sorted((r for r in h.store.runs.of_stack(STACK, "report", limit=10_000)
                   if r.kind is RunKind.JOB), key=lambda r: r.number)


def test_a_job_runs_once_per_slot_for_an_hour_across_a_restart(tmp_path: Path) -> None:
    with started(tmp_path, stack("    job: {history: 1000}\n")) as box:
        h = box[0]
        first = h.clock()
        run_for(h, 1800)
        box[0] = h = h.restart()  # the server again, in the middle
        run_for(h, 1800 + 30)
        runs = job_runs(h)
        slots = [int(r.slot) for r in runs if r.slot is not None]
        want = parse("* * * * *").slots(int(first), int(first) + 3600, 100)
        assert slots == want and len(slots) == 60  # each minute, once
        assert {r.state for r in runs} == {RunState.SUCCEEDED}
        assert all(r.exit_code == 0 and r.host == "fakehost" for r in runs)
        # Each run's instance made once, and gone once it ended: the web instance is left.
        creates = Counter(c.target for c in h.host.calls(["create"]))
        assert all(n == 1 for n in creates.values()) and h.host.duplicates == []
        assert sum(1 for t in creates if "report" in t) == 60
        assert [k.name for k in h.host.instances(STACK)] == ["web-0"]
        assert not [k for k in h.store.ips(STACK) if k.run is not None]  # addresses back


@pytest.mark.parametrize(("policy", "expected"), [("all", 5), ("last", 1), ("skip", 0)])
def test_slots_missed_while_the_controller_was_down_follow_catch_up(
        tmp_path: Path, policy: str, expected: int) -> None:
    with started(tmp_path, stack(f"    job: {{catch_up: {policy}, concurrency: allow}}\n")
                 ) as box:
        h = box[0]
        run_for(h, 120)
        before = len(job_runs(h))
        h.close()
        h.clock.advance(5 * 60 - 10)  # down for five slots
        box[0] = h = h.restart()
        h.clock.advance(0)
        h.controller.jobs.tick()
        caught = [r for r in job_runs(h)][before:]
        assert len(caught) == expected
        if policy == "skip":
            assert any(e.action == "job" and e.result == "missed" for e in h.store.events(
                STACK))
        run_for(h, 60)
        assert all(n == 1 for n in Counter(r.slot for r in job_runs(h)).values())


def test_forbid_skips_a_slot_while_its_run_runs_and_replace_stops_it(tmp_path: Path) -> None:
    with started(tmp_path, stack(), run_for=90) as box:  # forbid is the default
        h = box[0]
        run_for(h, 300)
        states = [r.state for r in job_runs(h)]
        assert RunState.SKIPPED in states and RunState.SUCCEEDED in states
        skipped = next(r for r in job_runs(h) if r.state is RunState.SKIPPED)
        assert "still runs (concurrency: forbid)" in skipped.reason
    with started(tmp_path / "r", stack("    job: {concurrency: replace}\n"), run_for=90) as box:
        h = box[0]
        run_for(h, 200)
        cancelled = [r for r in job_runs(h) if r.state is RunState.CANCELLED]
        assert cancelled and cancelled[0].reason.startswith("replaced by run #")
        assert sum(1 for r in h.host.instances(STACK) if r.run is not None) <= 1


def test_a_failing_job_and_a_timeout_are_recorded(tmp_path: Path) -> None:
    with started(tmp_path, stack(), code=3) as box:
        h = box[0]
        run_for(h, 100)
        [run, *_] = job_runs(h)
        assert (run.state, run.exit_code, run.reason) == (RunState.FAILED, 3, "exited 3")
        assert any(e.action == "job" and e.result == "failed" and e.reason == "exited 3"
                   for e in h.store.events(STACK))
    with started(tmp_path / "t", stack("    job: {timeout: 20s}\n"), run_for=600) as box:
        h = box[0]
        run_for(h, 100)
        [run, *_] = job_runs(h)
        assert run.state is RunState.TIMED_OUT and "timed out after 20s" in run.reason
        assert run.key not in h.host.instances(STACK)  # stopped and removed


def test_a_task_runs_the_roles_image_with_its_own_command(tmp_path: Path) -> None:
    with started(tmp_path, stack()) as box:
        h = box[0]
        h.host.runtime.exits[("migrate", "--now")] = Exit(2.0, 0)
        task = h.controller.jobs.start_task(STACK, "web", ("migrate", "--now"), None, "me")
        run_for(h, 20)
        done = h.store.runs.get(STACK, task.number)
        assert done is not None and done.state is RunState.SUCCEEDED
        assert [c.verb for c in h.host.calls(["create"]) if c.target == str(task.key)] == [
            "create"]
        assert done.kind is RunKind.TASK and done.actor == "me"
        # Not one of web's instances: never listed, checked or counted.
        assert h.controller.desired.make(
            h.store.get_stack(STACK).spec, h.store.get_stack(STACK), build=False  # type: ignore[union-attr]
        ).requests[0].key.name == "web-0"
        with pytest.raises(NotFound, match="has no role nope; its roles: web, report"):
            h.controller.jobs.start_task(STACK, "nope", ("x",), None, "me")
        with pytest.raises(NotFound, match="no stack other"):
            h.controller.jobs.start_task("other", "web", ("x",), None, "me")


def web_stack(image: str) -> str:
    return (f"stack: {STACK}\nroles:\n  web:\n    image: {image}\n    command: [serve]\n"
            f"    count: 2\n    release: {{before: [migrate]}}\n")


def test_a_before_task_gates_a_rollout_and_its_failure_rolls_back(tmp_path: Path) -> None:
    h = harness(tmp_path, images=("base", "next", "third"))
    try:
        h.controller.apply(load_stack_text(web_stack("base"), "stack.yaml"), None)
        run_for(h, 30)
        assert not h.store.runs.of_stack(STACK)  # its first release: nothing older to gate
        h.host.runtime.exits[("migrate",)] = Exit(10.0, 0)
        h.controller.apply(load_stack_text(web_stack("next"), "stack.yaml"), None)
        run_for(h, 60)
        [task] = h.store.runs.of_stack(STACK)
        assert (task.kind, task.state, task.release) == (RunKind.BEFORE, RunState.SUCCEEDED, 2)
        calls = h.instance_calls()
        # The task went first: the surge instance and the replaces only once it passed.
        first_rolling = calls.index("create s/web/2")
        assert calls.index(f"destroy {task.key}") < first_rolling
        live = [r.version for r in h.store.releases(STACK, "web") if r.status.value == "live"]
        assert live == [2]
        # A task that fails: no instance is replaced, the release fails and goes back.
        h.host.runtime.exits[("migrate",)] = Exit(1.0, 3)
        before = {k: f.spec_hash for k, f in h.host.instances(STACK).items()}
        h.controller.apply(load_stack_text(web_stack("third"), "stack.yaml"), None)
        run_for(h, 60)
        failed = next(r for r in h.store.runs.of_stack(STACK) if r.release == 3)
        assert (failed.state, failed.exit_code) == (RunState.FAILED, 3)
        third = next(r for r in h.store.releases(STACK, "web") if r.version == 3)
        assert third.status.value == "failed" and "before task" in third.reason
        after = {k: f.spec_hash for k, f in h.host.instances(STACK).items() if k.run is None}
        assert after == {k: v for k, v in before.items() if k.run is None}
        assert any(e.action == "rollback" for e in h.store.events(STACK))
    finally:
        h.close()
