"""Day-2 changes to a stack's desired spec (`scale`, `resize`), and what a plan of the stack
file should say when the file disagrees with them. Pure."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from rackfire.errors import NotFound
from rackfire.model.stack import StackSpec
from rackfire.model.units import show_value as _show
from rackfire.store import Override


def with_role(spec: StackSpec, role: str, *, count: int | None = None,
              resources: dict[str, Any] | None = None) -> StackSpec:
    """`spec` with one role's count or resources changed."""
    names = [r.name for r in spec.roles]
    if role not in names:
        raise NotFound(f"stack {spec.name} has no role {role}",
                       hint=f"its roles: {', '.join(names) or 'none'}")
    roles = []
    for r in spec.roles:
        if r.name == role:
            if count is not None:
                r = replace(r, count=count)
            if resources:
                r = replace(r, resources=replace(r.resources, **resources))
        roles.append(r)
    return replace(spec, roles=tuple(roles))


def overrides_for(role: str, changes: dict[str, Any], actor: str) -> list[Override]:
    now = time.time()
    return [Override(role, name, value, actor, now) for name, value in changes.items()]


def disagreements(file: StackSpec, overrides: list[Override]) -> list[str]:
    """One note per value a day-2 command set that the file would set back."""
    notes = []
    roles = {r.name: r for r in file.roles}
    for o in overrides:
        role = roles.get(o.role)
        if role is None:
            continue
        in_file = role.count if o.field == "count" else getattr(role.resources, o.field, None)
        if in_file == o.value:
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(o.time))
        command = "scale" if o.field == "count" else "resize"
        notes.append(
            f"roles.{o.role}.{_path(o.field)}: the file says {_show(o.field, in_file)}, but "
            f"`rackfire {command}` set {_show(o.field, o.value)} ({o.actor}, {when}); "
            f"applying this file sets it back to {_show(o.field, in_file)}")
    return notes


def _path(field: str) -> str:
    return field if field == "count" else f"resources.{field}"



