"""Stack files with jobs and autoscaling: what a wrong one is told, at its line and field,
before anything is sent or changed."""

from __future__ import annotations

import pytest

from rackfire.errors import SpecError
from rackfire.model.stack import CatchUp, Concurrency, ScaleTarget, TargetKind
from rackfire.spec import load_stack_text

HEAD = "stack: s\nroles:\n"
APP = "  app:\n    image: base\n    command: [serve]\n"


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SpecError) as info:
        load_stack_text(HEAD + text, "stack.yaml")
    return [(p.line, p.field, p.message) for p in info.value.problems]


@pytest.mark.parametrize(("scale", "field", "message"), [
    ("{min: 5, max: 2, target: {cpu: 60%}}", "roles.app.scale", "min: 5 is above max 2"),
    ("{max: 4, target: {cpu: 0%}}", "roles.app.scale", "target.cpu: must be above 0"),
    ("{max: 4, target: {cpu: 500%}}", "roles.app.scale", "at most 100%, not 500%"),
    ("{max: 4, target: {cpu: lots}}", "roles.app.scale.target.cpu",
     "expected a percentage such as 60%"),
    ("{max: 4, warm: 9, target: {cpu: 60%}}", "roles.app.scale", "warm: 9 is above max 4"),
    ("{max: 4}", "roles.app.scale", "a target or a schedule is needed"),
    ("{max: 4, target: {cpu: 60%, memory: 50%}}", "roles.app.scale.target",
     "give one target"),
    ("{max: 4, schedule: [{cron: '61 * * * *', min: 2}]}",
     "roles.app.scale.schedule[0].cron", '"61": 61 is out of range 0-59'),
])
def test_bad_scale_bounds_are_refused_at_their_line(scale: str, field: str,
                                                    message: str) -> None:
    [(line, where, why)] = problems(APP + f"    scale: {scale}\n")
    assert (line, where) == (6, field) and message in why


def test_scale_rules_between_roles() -> None:
    found = problems(APP + "    count: 9\n    scale: {min: 1, max: 4, warm: 1, target: "
                     "{requests_per_instance: 200/s}}\n")
    fields = {f for _, f, _ in found}
    assert fields == {"roles.app.count", "roles.app.scale.target"}


def test_a_job_is_parsed_and_its_mistakes_located() -> None:
    spec = load_stack_text(HEAD + APP + "    schedule: '*/5 * * * *'\n"
                           "    job: {concurrency: replace, timeout: 10m, catch_up: all}\n",
                           "stack.yaml")
    job = spec.role("app").job
    assert job is not None and spec.role("app").count == 0
    assert (job.schedule, job.concurrency, job.timeout, job.catch_up) == (
        "*/5 * * * *", Concurrency.REPLACE, 600.0, CatchUp.ALL)
    [(line, field, why)] = problems(APP + "    schedule: '*/5 * * *'\n")
    assert (line, field) == (6, "roles.app.schedule") and "expected 5 fields" in why
    [(line, field, why)] = problems(APP + "    schedule: '0 0 30 2 *'\n")
    assert "never fires" in why


def test_a_scaled_role_starts_at_min() -> None:
    spec = load_stack_text(HEAD + APP + "    scale: {min: 3, max: 9, target: {cpu: 70%}}\n",
                           "stack.yaml")
    role = spec.role("app")
    assert role.count == 3 and role.scale is not None
    assert role.scale.target == ScaleTarget(TargetKind.CPU, 70.0)
