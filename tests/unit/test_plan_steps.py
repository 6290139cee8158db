"""The plan's stack actions (plan/steps.py): builds, migration steps and what publishing
reloads, as data in the plan `rackfire plan` prints; and a reconcile that runs the builds as
journalled actions before anything else (control/reconcile.py `_build`)."""

from __future__ import annotations

from pathlib import Path

from tests.harness import harness

from rackfire.api.answers import PlanAnswer
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState, NetworkConfig
from rackfire.model.records import Migration
from rackfire.model.stack import (
    AppSource,
    ImageSource,
    ImageSpec,
    ReloadSpec,
    RoleSpec,
    RuntimeKind,
    StackSpec,
)
from rackfire.plan import Action, ActionKind, Plan, StackAction, render_stack
from rackfire.plan.steps import (
    UNBUILT,
    build_actions,
    migration_actions,
    publish_actions,
    with_steps,
)

IMAGE = "a" * 64
SOURCE = "b" * 64
LB_FILE = ("/etc/lb.cfg", "{% for w in roles.web.ready %}{{ w.ip }} {% endfor %}")


def _stack(*, lb_reload: bool = True, images: tuple[ImageSpec, ...] = ()) -> StackSpec:
    return StackSpec("s", images=images, roles=(
        RoleSpec("web", "base", 2, ("serve",)),
        RoleSpec("lb", "base", 1, ("serve",), uses=("web",), files=(LB_FILE,),
                 reload=ReloadSpec(signal="HUP") if lb_reload else None),
        RoleSpec("app", "base", 1, ("serve",), app=AppSource("./app", SOURCE)),
    ))


def _running(spec: StackSpec) -> list[InstanceFacts]:
    ips = {InstanceKey("s", r.name, i): f"10.1.{n}.{i + 2}"
           for n, r in enumerate(spec.roles) for i in range(r.count + 1)}
    net = NetworkConfig("s", "10.1.0.0/16", "10.1.0.1", 16)
    return [InstanceFacts(key=r.key, state=InstanceState.RUNNING, runtime=r.runtime, host="h",
                          ip=r.ip, spec_hash=r.spec_hash, spec_fields=r.spec_fields,
                          config_hash=r.config_hash, files_layout=r.files_layout)
            for r in render_stack(spec, ips, {"base": IMAGE}, net, RuntimeKind.CONTAINER)
            if not r.surge]


def _summary(steps: list[StackAction]) -> list[tuple[str, str, str]]:
    return [(s.kind.value, s.subject, s.reason) for s in steps]


# builds ------------------------------------------------------------------------------------

def test_a_declared_image_not_built_and_a_release_never_built_are_builds() -> None:
    spec = _stack(images=(ImageSpec("base", ImageSource.HOST),))
    steps = build_actions(spec, {"base": UNBUILT}, {}, {})
    assert _summary(steps) == [
        ("build-image", "image/base", "not built yet; run by web, lb, app"),
        ("build-release", "s/app",
         "release bbbbbbbbbbbb (./app) on image base (once the image is built)")]
    assert (steps[1].role, steps[1].source, steps[1].image) == ("app", SOURCE, UNBUILT)
    assert {s.by for s in steps} == {"executor"}


def test_what_is_built_or_failed_before_or_undeclared_is_no_build() -> None:
    # The image exists; the release has its layer (built before) or failed to build before
    # (not tried again until pushed again): nothing to build.
    spec = _stack(images=(ImageSpec("base", ImageSource.HOST),))
    assert build_actions(spec, {"base": IMAGE}, {"app": "c" * 64}, {}) == []
    assert build_actions(spec, {"base": IMAGE}, {}, {"app": "it failed before"}) == []
    # A release on an image that is built is built on its digest.
    [release] = build_actions(spec, {"base": IMAGE}, {}, {})
    assert (release.kind, release.image) == (ActionKind.BUILD_RELEASE, IMAGE)
    # An image the file does not declare is not the plan's to build (apply refuses it).
    assert [s.kind for s in build_actions(_stack(), {"base": UNBUILT}, {}, {})] == [
        ActionKind.BUILD_RELEASE]


# migrations ---------------------------------------------------------------------------------

def test_each_migration_under_way_says_its_next_step() -> None:
    rows = [Migration(InstanceKey("s", "db", 0), "h1", "h2", step, 1.0, "op")
            for step in ("copying", "starting")]
    steps = migration_actions(rows)
    assert _summary(steps) == [
        ("migrate", "s/db/0", "h1 → h2, copying: copy its disks to h2"),
        ("migrate", "s/db/0", "h1 → h2, starting: start it on h2 from the copied disks, "
         "until it passes its check")]
    assert steps[0].key == InstanceKey("s", "db", 0) and steps[0].by == "migration"


# publishing ---------------------------------------------------------------------------------

def _action(kind: ActionKind, role: str, index: int, held: str = "") -> Action:
    return Action(kind, InstanceKey("s", role, index), "why", held=held)


def test_a_change_of_who_is_ready_reloads_the_appliances_that_list_them() -> None:
    spec = _stack()
    facts = _running(spec)
    steps = publish_actions(spec, [_action(ActionKind.CREATE, "web", 2)], facts)
    assert _summary(steps) == [("publish", "s/lb/0", "who is ready of web changes: its files "
                                "again, then reloaded")]
    assert steps[0].by == "publisher"


def test_no_reload_predicted_where_the_publisher_would_not_reload() -> None:
    spec = _stack()
    facts = _running(spec)
    create = _action(ActionKind.CREATE, "web", 2)
    # Resizes and reloads leave who is ready as it is; a held rollout does not go yet.
    assert publish_actions(spec, [_action(ActionKind.RESIZE, "web", 0),
                                  _action(ActionKind.RELOAD, "web", 1)], facts) == []
    assert publish_actions(spec, [_action(ActionKind.REPLACE, "web", 0, "web/1 fails")],
                           facts) == []
    # An appliance that cannot reload is reconfigured by a later plan instead.
    assert publish_actions(_stack(lb_reload=False), [create], facts) == []
    # One with an action of its own gets its files from that action.
    assert publish_actions(spec, [create, _action(ActionKind.RECONFIGURE, "lb", 0)],
                           facts) == []
    # Not running, or on a host that was lost: nothing to reload.
    stopped = [f if f.key.role != "lb" else InstanceFacts(
        key=f.key, state=InstanceState.STOPPED, runtime=f.runtime, host="h")
        for f in facts]
    assert publish_actions(spec, [create], stopped) == []
    assert publish_actions(spec, [create], facts, lost={InstanceKey("s", "lb", 0)}) == []
    assert publish_actions(None, [create], facts) == []


# the plan as printed -------------------------------------------------------------------------

def test_the_plan_lists_builds_first_and_publishing_last() -> None:
    spec = _stack(images=(ImageSpec("base", ImageSource.HOST),))
    create = _action(ActionKind.CREATE, "web", 2)
    plan = with_steps(Plan("s", 3, (create,)), publish_actions(spec, [create], _running(spec)),
                      build_actions(spec, {"base": UNBUILT}, {}, {}),
                      migration_actions([Migration(InstanceKey("s", "app", 0), "h1", "h2",
                                                   "stopping", 1.0, "op")]))
    data = plan.to_json()
    assert [(a["kind"], a["subject"], a["by"]) for a in data["actions"]] == [
        ("build-image", "image/base", "executor"), ("build-release", "s/app", "executor"),
        ("migrate", "s/app/0", "migration"), ("create", "s/web/2", "executor"),
        ("publish", "s/lb/0", "publisher")]
    assert data["changes"] == 5
    assert (data["actions"][0]["instance"], data["actions"][0]["index"]) == (None, None)
    assert [s.kind for s in plan.builds] == [ActionKind.BUILD_IMAGE, ActionKind.BUILD_RELEASE]
    assert not plan.empty and Plan("s", 3, ()).empty
    # The API's model takes it as it is (POST /v1/plan).
    answer = PlanAnswer.model_validate(data)
    assert [a.model_dump(mode="json") for a in answer.actions] == data["actions"]


# the reconcile runs the builds ---------------------------------------------------------------

def test_a_missing_image_is_built_as_a_journalled_action_then_the_instances_go(
        tmp_path: Path) -> None:
    h = harness(tmp_path, images=())
    try:
        spec = StackSpec("s", images=(ImageSpec("base", ImageSource.HOST),),
                         roles=(RoleSpec("web", "base", 2, ("serve",)),))
        planned = h.controller.plan(spec)
        assert [(s.kind, s.subject) for s in planned.steps] == [
            (ActionKind.BUILD_IMAGE, "image/base")]
        assert h.host.image("base") is None  # a plan builds nothing
        generation, _ = h.controller.apply(spec, None, actor="test")

        # The first pass builds, and only that; it looks again at once.
        result = h.controller.reconcile("s")
        assert result.requeue_after is not None and result.requeue_after < 0.1
        assert h.host.image("base") is not None
        assert h.host.instances("s") == {}
        [build] = h.store.actions("s", generation)
        assert (build.kind, build.instance, build.state) == ("build-image", "image/base",
                                                             "done")
        events = [(e.target, e.action, e.result) for e in h.store.events(stack="s")]
        assert ("image/base", "build-image", "ok") in events

        # The next passes render with the image's digest: nothing to build any more.
        assert h.converge("s").converged
        assert len(h.host.instances("s")) == 2
        rec = h.store.get_stack("s")
        assert rec is not None
        assert h.controller.plan(rec.spec).steps == ()
    finally:
        h.close()


def test_a_migration_under_way_is_in_the_plan(tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        spec = StackSpec("s", roles=(RoleSpec("db", "base", 1, ("serve",)),))
        h.controller.apply(spec, None, actor="test")
        assert h.converge("s").converged
        key = InstanceKey("s", "db", 0)
        h.fleet.placements.start_migration(key, "fakehost", "other", "test")
        plan = h.controller.plan(spec)
        assert [(s.kind, s.subject, s.by) for s in plan.steps] == [
            (ActionKind.MIGRATE, "s/db/0", "migration")]
        assert "fakehost → other, stopping" in plan.steps[0].reason
        h.fleet.placements.end_migration(key, "fakehost")
        assert h.controller.plan(spec).empty
    finally:
        h.close()
