"""Releases: versions recorded per role as its source or image changes, their statuses, and
where a failed one (or `rollback`) goes back to."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackfire.control import overrides, releases
from rackfire.errors import NotFound, PrereqError
from rackfire.model.stack import AppSource, RoleSpec, StackSpec
from rackfire.store import ReleaseStatus, Store

A, B, C = "a" * 64, "b" * 64, "c" * 64
IMG, IMG2 = "1" * 64, "2" * 64


def note(store: Store, source: str, image_digest: str = IMG, actor: str = "ann@h") -> int:
    return store.note_release("shop", "app", source=source, label=f"./app-{source[:1]}",
                              layer="", image="base", image_digest=image_digest,
                              actor=actor).version


def test_versions_follow_source_and_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert note(store, A) == 1
    assert note(store, A) == 1  # nothing changed: the same release
    store.set_release_status("shop", "app", 1, ReleaseStatus.LIVE)
    assert note(store, B) == 2
    assert note(store, B, IMG2) == 3  # a rebuilt base image is a release too
    store.set_release_status("shop", "app", 3, ReleaseStatus.LIVE)
    rows = {r.version: r for r in store.releases("shop", "app")}
    assert [r.version for r in store.releases("shop", "app")] == [3, 2, 1]  # newest first
    assert rows[1].status is ReleaseStatus.RETIRED  # a new live one retires the last
    assert rows[2].status is ReleaseStatus.DEPLOYING and rows[3].status is ReleaseStatus.LIVE
    assert rows[2].actor == "ann@h" and rows[2].label == "./app-b"
    # Going back to an older source deploys that version again, under its own number.
    assert note(store, A) == 1
    assert {r.version: r.status for r in store.releases("shop", "app")}[1] \
        is ReleaseStatus.DEPLOYING


def test_a_failed_release_falls_back_to_the_live_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    note(store, A)
    store.set_release_status("shop", "app", 1, ReleaseStatus.LIVE)
    note(store, B)
    store.set_release_status("shop", "app", 2, ReleaseStatus.LIVE)
    note(store, C)
    bad = store.releases("shop", "app")[0]
    assert bad.version == 3
    target = releases.fallback(store.releases("shop", "app"), bad)
    assert target is not None and target.version == 2
    fields = releases.fields_of(target)
    assert fields == {"app": AppSource("./app-b", B), "image": "base", "image_digest": IMG}
    # The first release has nowhere to go back to.
    first = store.releases("shop", "app")[-1]
    assert releases.fallback([first], first) is None


def test_rollback_picks_the_one_live_before_or_the_version_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    for i, src in enumerate((A, B, C), 1):
        note(store, src)
        store.set_release_status("shop", "app", i, ReleaseStatus.LIVE)
    history = store.releases("shop", "app")
    current = history[0]
    assert releases.pick(history, current, None).version == 2
    assert releases.pick(history, current, 1).version == 1
    with pytest.raises(PrereqError, match="already runs v3"):
        releases.pick(history, current, 3)
    with pytest.raises(NotFound, match="no release v9"):
        releases.pick(history, current, 9)
    with pytest.raises(NotFound):
        releases.pick([], None, None)


def test_a_push_the_file_disagrees_with_is_noted() -> None:
    role = RoleSpec("app", "base", app=AppSource("/src/app", A))
    spec = StackSpec("shop", roles=(role,))
    pushed = overrides.overrides_for("app", {"app": AppSource("/tmp/v2", B),
                                             "image_digest": ""}, "bob@h")
    assert [o.field for o in pushed] == ["app"]  # the pin is not the operator's to note
    [note_text] = overrides.disagreements(spec, pushed)
    assert "roles.app.app" in note_text and "/tmp/v2" in note_text and "bob@h" in note_text
    same = overrides.overrides_for("app", {"app": AppSource("/tmp/v2", A)}, "bob@h")
    assert overrides.disagreements(spec, same) == []
    changed = overrides.with_role(spec, "app", {"app": AppSource("/tmp/v2", B), "cpu": 1.0})
    assert changed.role("app").app == AppSource("/tmp/v2", B)
    assert changed.role("app").resources.cpu == 1.0
