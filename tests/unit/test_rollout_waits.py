"""A rollout's wait is a verdict on what was observed, not a loop: passed, failed, timed out
or still in time, and when to look again."""

from __future__ import annotations

from dataclasses import replace

from rackfire.control.rollouts import judge
from rackfire.model.instance import Health, InstanceFacts, InstanceKey, InstanceState
from rackfire.model.stack import RuntimeKind
from rackfire.spec import load_stack_text
from rackfire.store import InstanceStatus
from rackfire.store.rollouts import RolloutWait

SPEC = load_stack_text("""\
stack: s
images: {base: {from: host}}
roles:
  web:
    image: base
    count: 2
    command: ["sleep", "1000"]
    health: {tcp: 80, interval: 1s, grace: 10s, retries: 2}
    update: {health_timeout: 30s}
  bare:
    image: base
    command: ["sleep", "1000"]
""", "s.yaml")
WEB0, WEB1, BARE0 = (InstanceKey("s", "web", 0), InstanceKey("s", "web", 1),
                     InstanceKey("s", "bare", 0))
STARTED = 1000.0


def facts(key: InstanceKey, state: InstanceState = InstanceState.RUNNING,
          started: float = STARTED) -> InstanceFacts:
    return InstanceFacts(key=key, state=state, runtime=RuntimeKind.CONTAINER, host="h",
                         ip="10.0.0.2", started_at=started)


def status(key: InstanceKey, health: Health, message: str = "",
           run: float = STARTED) -> InstanceStatus:
    return InstanceStatus(key, health, run, 0, run + 1, 0, None, message)


def wait(key: InstanceKey, kind: str = "replace") -> RolloutWait:
    return RolloutWait(key, kind, "a1", STARTED, 30.0)


def test_a_healthy_instance_ends_its_wait() -> None:
    v = judge([wait(WEB0)], SPEC, {WEB0: facts(WEB0)}, {WEB0: status(WEB0, Health.HEALTHY)},
              STARTED + 5)
    assert v.over == [WEB0] and not v.failed and v.due is None


def test_a_starting_instance_waits_until_its_timeout() -> None:
    observed = {WEB0: facts(WEB0)}
    statuses = {WEB0: status(WEB0, Health.STARTING, "connection refused")}
    v = judge([wait(WEB0)], SPEC, observed, statuses, STARTED + 5)
    assert v.over == [] and not v.failed and v.due == STARTED + 30
    late = judge([wait(WEB0)], SPEC, observed, statuses, STARTED + 31)
    assert late.over == [WEB0]
    assert late.timed_out == {WEB0: "not healthy after 30s (connection refused)"}
    assert late.rollout_failed == {"web": "replace web-0: not healthy after 30s "
                                          "(connection refused); rollout stopped"}


def test_health_of_an_earlier_run_does_not_count() -> None:
    old = status(WEB0, Health.HEALTHY, run=STARTED - 100)  # the instance it replaced
    v = judge([wait(WEB0)], SPEC, {WEB0: facts(WEB0)}, {WEB0: old}, STARTED + 1)
    assert v.over == [] and v.due == STARTED + 30


def test_stopped_unhealthy_and_gone_fail_at_once() -> None:
    v = judge([wait(WEB0), wait(WEB1, "restart"), wait(BARE0, "create")], SPEC,
              {WEB0: replace(facts(WEB0, InstanceState.STOPPED), exit_code=2),
               WEB1: facts(WEB1)},
              {WEB1: status(WEB1, Health.UNHEALTHY, "refused")}, STARTED + 1)
    assert set(v.over) == {WEB0, WEB1, BARE0}
    assert v.failed[WEB0] == "replace web-0: it stopped (exited 2); rollout stopped"
    assert v.failed[WEB1] == "restart web-1: unhealthy (refused); rollout stopped"
    assert v.failed[BARE0] == "create bare-0: it disappeared; rollout stopped"
    # An operator's rolling restart failing is not a release's failure.
    assert set(v.rollout_failed) == {"web", "bare"}
    assert v.rollout_failed["web"].startswith("replace web-0")


def test_a_role_without_a_check_is_ready_once_it_runs() -> None:
    v = judge([wait(BARE0, "create")], SPEC, {BARE0: facts(BARE0)}, {}, STARTED + 1)
    assert v.over == [BARE0] and not v.failed


def test_waits_on_instances_no_longer_wanted_are_dropped() -> None:
    gone = InstanceKey("s", "web", 7)
    v = judge([wait(gone), wait(InstanceKey("s", "nosuch", 0))], SPEC, {}, {}, STARTED)
    assert len(v.over) == 2 and not v.failed
