"""Releases: which version of its image and app each role runs, and going back to one.

A release is what a role's desired spec runs: an image (by digest) plus, for a role with an
`app`, the pushed source. A change of either (an apply, a `push`, a rebuilt image) to a pair
not seen before is a new version; going back to one seen before deploys that version again.
It is `deploying` until the role's instances all run it and pass, then `live`. A rollout that fails
its health checks marks the release `failed` and puts the role back on the release that was
live; `rollback` does the same on an operator's word. Pure apart from the store calls in
`note` and `settle`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rackfire.errors import Conflict, NotFound
from rackfire.model.stack import AppSource, RoleSpec, StackSpec
from rackfire.store import Release, ReleaseStatus, StackRecord, StateStore


def note(store: StateStore, rec: StackRecord, images: Mapping[str, str],
         layers: Mapping[str, str]) -> dict[str, Release]:
    """The release each role of the stored spec runs, recorded if new. `images`: role ->
    image digest; `layers`: role -> built release layer."""
    out = {}
    for role in rec.spec.roles:
        out[role.name] = store.note_release(
            rec.name, role.name, source=role.app.digest if role.app else "",
            label=role.app.path if role.app else "", layer=layers.get(role.name, ""),
            image=role.image, image_digest=images[role.name], actor=rec.actor or "api")
    return out


def settle(store: StateStore, settled: Iterable[Release]) -> None:
    """Roles whose every instance runs their release and passes: it is live."""
    for rel in settled:
        if rel.status is not ReleaseStatus.LIVE:
            store.set_release_status(rel.stack, rel.role, rel.version, ReleaseStatus.LIVE)


def fallback(history: list[Release], bad: Release) -> Release | None:
    """Where a failed release goes back to: the live one, else the newest retired one."""
    others = [r for r in history if r.version != bad.version]
    for status in (ReleaseStatus.LIVE, ReleaseStatus.RETIRED):
        found = [r for r in others if r.status is status]
        if found:
            return max(found, key=lambda r: r.updated)
    return None


def pick(history: list[Release], current: Release | None, version: int | None) -> Release:
    """The release `rollback` goes to: the one asked for, or the one live before now."""
    if not history:
        raise NotFound("this role has no releases yet", hint="rackfire push STACK/ROLE DIR")
    if version is not None:
        target = next((r for r in history if r.version == version), None)
        if target is None:
            raise NotFound(f"no release v{version}",
                           hint="versions: " + ", ".join(f"v{r.version}" for r in history))
    else:
        older = [r for r in history if current is None or r.version != current.version]
        good = [r for r in older if r.status in (ReleaseStatus.LIVE, ReleaseStatus.RETIRED)]
        if not good:
            raise Conflict("there is no earlier release to go back to",
                           hint="see `rackfire releases`")
        target = max(good, key=lambda r: r.updated)
    if current is not None and target.version == current.version:
        raise Conflict(f"the role already runs v{target.version}")
    return target


def fields_of(rel: Release) -> dict[str, Any]:
    """The role fields that make it run `rel` (its image pinned by digest: the name may
    point at a newer build by now)."""
    return {"app": AppSource(rel.label, rel.source) if rel.source else None,
            "image": rel.image, "image_digest": rel.image_digest}


def current(store: StateStore, spec: StackSpec, role: RoleSpec,
            image_digest: str) -> Release | None:
    """The release the role's desired spec runs (as `note` keys it: its source and the
    digest its image resolves to), if it was recorded."""
    source = role.app.digest if role.app else ""
    return next((rel for rel in store.releases(spec.name, role.name)
                 if rel.source == source and rel.image_digest == image_digest), None)
