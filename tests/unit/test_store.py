"""The store keeps what must survive a crash: generations with check-and-set, stable IPs, the
action journal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rackfire.errors import Conflict
from rackfire.model.instance import Health, InstanceKey
from rackfire.model.stack import ImageSource, ImageSpec, RoleSpec, StackSpec
from rackfire.store import ActionRecord, Store


def spec(count: int = 1) -> StackSpec:
    return StackSpec("s", (ImageSpec("base", ImageSource.HOST),),
                     (RoleSpec("web", "base", count, ("true",)),))


def test_generations_and_check_and_set(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.put_stack(spec(), "10.1.0.0/24", None) == 1
    assert store.put_stack(spec(2), "10.1.0.0/24", expected_generation=1) == 2
    with pytest.raises(Conflict, match="changed since the plan"):
        store.put_stack(spec(3), "10.1.0.0/24", expected_generation=1)
    rec = store.get_stack("s")
    assert rec is not None and rec.generation == 2 and rec.spec.role("web").count == 2
    store.close()
    # On disk: a new process sees the same.
    again = Store(tmp_path / "db")
    rec = again.get_stack("s")
    assert rec is not None and rec.spec == spec(2)


def test_ips_stick_and_release(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    k0, k1 = InstanceKey("s", "web", 0), InstanceKey("s", "web", 1)
    store.save_ips({k0: "10.1.0.2", k1: "10.1.0.3"})
    store.save_ips({k0: "10.1.0.9"})  # an allocation never moves
    assert store.ips("s") == {k0: "10.1.0.2", k1: "10.1.0.3"}
    store.release_ip(k1)
    assert store.ips("s") == {k0: "10.1.0.2"}


def test_interrupted_actions_are_marked_not_replayed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.record_action(ActionRecord("a1", "s", 1, "create", "s/web/0", "new", "running",
                                     time.time(), None, ""))
    store.record_action(ActionRecord("a2", "s", 1, "create", "s/web/1", "new", "running",
                                     time.time(), None, ""))
    store.finish_action("a1", "done")
    assert store.abandon_unfinished() == 1
    assert {a.id: a.state for a in store.actions("s")} == {"a1": "done", "a2": "interrupted"}


def test_failures_count_until_a_fresh_start_or_an_operator(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    k = InstanceKey("s", "web", 0)
    store.note_restart(k, fresh=False, now=10.0)
    store.note_restart(k, fresh=False, now=12.0)
    store.set_failed(k, "exited with code 1")
    st = store.statuses("s")[k]
    assert (st.restarts, st.failures, st.failed) == (2, (10.0, 12.0), "exited with code 1")
    store.set_health(k, Health.HEALTHY, 1.0, 0, "")  # health alone does not forgive
    assert store.statuses("s")[k].failures == (10.0, 12.0)
    store.set_operator([k], stopped=True)
    st = store.statuses("s")[k]
    assert (st.stopped, st.failures, st.failed, st.restarts) == (True, (), "", 2)
    store.set_operator([k], stopped=False, restart_requested=20.0)
    assert store.statuses("s")[k].control.restart_requested == 20.0
    store.note_restart(k, fresh=False, now=30.0)
    store.note_restart(k, fresh=True, now=31.0)  # a replace: counted until it starts
    store.note_started(k, ok=False, now=32.0)
    assert store.statuses("s")[k].control.failures == (30.0, 32.0)
    store.note_started(k, ok=True)
    assert store.statuses("s")[k].control.failures == ()


def test_a_new_release_starts_its_restart_count_afresh(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    k = InstanceKey("s", "web", 0)
    store.note_restart(k, fresh=True, new=True, now=1.0)  # made by a create
    for t in (2.0, 3.0, 4.0):  # a bad release crashes; the restart policy restarts it
        store.note_restart(k, fresh=False, now=t)
    store.note_restart(k, fresh=True, now=5.0)  # an operator's start: the same instance
    assert store.statuses("s")[k].restarts == 3
    store.note_restart(k, fresh=True, new=True, now=6.0)  # replaced by the next release
    store.note_started(k, ok=True, now=6.5)
    assert store.statuses("s")[k].restarts == 0
    store.note_restart(k, fresh=False, now=7.0)
    assert store.statuses("s")[k].restarts == 1


def test_events_are_kept_in_order_and_filtered(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.add_event("me@host", "a", "a/web", "scale", "ok", "count 2 → 5")
    store.add_event("controller", "b", "b/db/0", "restart", "failed", "exited with code 1")
    store.add_event("health", "a", "a/web/1", "unhealthy", "ok", "connection refused")
    assert [e.action for e in store.events()] == ["scale", "restart", "unhealthy"]
    only_a = store.events("a")
    assert [e.target for e in only_a] == ["a/web", "a/web/1"]
    assert [e.action for e in store.events("a", after=only_a[0].id)] == ["unhealthy"]
    assert [e.action for e in store.events(limit=1)] == ["unhealthy"]  # a tail
    first = store.events()[0].id
    assert [e.action for e in store.events(after=first, limit=1)] == ["restart"]  # a page
