"""Day-2 changes to a stack's desired spec (`scale`, `resize`, `push`, `rollback`), and what a
plan of the stack file should say when the file disagrees with them. Pure."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

from rackfire.errors import NotFound
from rackfire.model.stack import AppSource, RoleSpec, StackSpec
from rackfire.model.units import show_value as _show
from rackfire.store import Override

RELEASE_FIELDS = ("app", "image", "image_digest")  # set by push and rollback
RESOURCES = ("cpu", "memory", "disk", "pids")


def with_role(spec: StackSpec, role: str, fields: dict[str, Any]) -> StackSpec:
    """`spec` with some of one role's fields changed: count, resources by name, and what a
    release is made of (`RELEASE_FIELDS`)."""
    names = [r.name for r in spec.roles]
    if role not in names:
        raise NotFound(f"stack {spec.name} has no role {role}",
                       hint=f"its roles: {', '.join(names) or 'none'}")
    roles = []
    for r in spec.roles:
        if r.name == role:
            resources = {k: v for k, v in fields.items() if k in RESOURCES}
            plain = {k: v for k, v in fields.items() if k not in RESOURCES}
            r = replace(r, resources=replace(r.resources, **resources), **plain)
        roles.append(r)
    return replace(spec, roles=tuple(roles))


def overrides_for(role: str, changes: dict[str, Any], actor: str) -> list[Override]:
    now = time.time()
    return [Override(role, name, asdict(value) if isinstance(value, AppSource) else value,
                     actor, now)
            for name, value in changes.items() if name != "image_digest"]


def disagreements(file: StackSpec, overrides: list[Override]) -> list[str]:
    """One note per value a day-2 command set that the file would set back."""
    notes = []
    roles = {r.name: r for r in file.roles}
    for o in overrides:
        role = roles.get(o.role)
        if role is None:
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(o.time))
        if o.field in RELEASE_FIELDS:
            note = _release_note(role, o, when)
            if note:
                notes.append(note)
            continue
        in_file = role.count if o.field == "count" else getattr(role.resources, o.field, None)
        if in_file == o.value:
            continue
        command = "scale" if o.field == "count" else "resize"
        notes.append(
            f"roles.{o.role}.{_path(o.field)}: the file says {_show(o.field, in_file)}, but "
            f"`rackfire {command}` set {_show(o.field, o.value)} ({o.actor}, {when}); "
            f"applying this file sets it back to {_show(o.field, in_file)}")
    return notes


def _release_note(role: RoleSpec, o: Override, when: str) -> str:
    if o.field == "image":
        if role.image == o.value:
            return ""
        return (f"roles.{o.role}.image: the file says {role.image}, but `rackfire push` or "
                f"`rollback` set {o.value} ({o.actor}, {when}); applying this file sets it "
                f"back to {role.image}")
    pushed = o.value or {}
    in_file = role.app.digest if role.app else ""
    if pushed.get("digest", "") == in_file:
        return ""
    return (f"roles.{o.role}.app: `rackfire push` or `rollback` deployed "
            f"{pushed.get('path') or 'no app'} ({pushed.get('digest', '')[:12] or '-'}; "
            f"{o.actor}, {when}), but this file's {role.app.path if role.app else 'no app'} "
            f"({in_file[:12] or '-'}) differs; applying it deploys the file's")


def _path(field: str) -> str:
    return field if field == "count" else f"resources.{field}"



