"""The stack actions of a plan (plan/actions.py StackAction): what a pass does besides the
instances' own actions. Pure, as the planner.

- builds: a declared image that is not built, a role's release (its app source on its
  image) that was never built; the executor runs them before anything else and the next
  pass renders with their digests;
- migration steps: each migration under way and the step it goes on with;
- publishing: an appliance whose files list who is ready of a role (a load balancer's
  backends) is given them again and reloaded by the publisher as the plan's actions change
  who is ready. Predicted from the roles those actions touch, not rendered: the publisher
  reloads one only if its files do change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState
from rackfire.model.records import Migration
from rackfire.model.stack import StackSpec
from rackfire.plan.actions import Action, ActionKind, Plan, StackAction

UNBUILT = "0" * 64  # the digest a plan shows for an image that apply will build

# What each step of a migration goes on to do (control/migrate.py).
_MIGRATION_STEPS = {
    "stopping": "stop it on {source}, then copy its disks",
    "copying": "copy its disks to {target}",
    "releasing": "remove it from {source}, its disks set aside",
    "starting": "start it on {target} from the copied disks, until it passes its check",
    "cleaning": "placed on {target}; drop its disks on {source}",
    "reverting": "a step failed: remove the copy on {target}, start it again on {source}",
}

# Actions after which an instance is ready, or no longer is.
_CHANGES_READY = frozenset({ActionKind.DESTROY, ActionKind.STOP, ActionKind.FAIL,
                            ActionKind.CREATE, ActionKind.RESTART, ActionKind.RECONFIGURE,
                            ActionKind.REPLACE})


def build_actions(spec: StackSpec, images: Mapping[str, str], layers: Mapping[str, str],
                  unbuilt: Mapping[str, str]) -> list[StackAction]:
    """`images`: image name -> its digest (UNBUILT: not built); `layers`: role -> its
    release layer, for releases built before; `unbuilt`: roles whose release failed to
    build before (not tried again until pushed again)."""
    declared = {i.name for i in spec.images}
    out = []
    for name in sorted({r.image for r in spec.roles}):
        if images.get(name, UNBUILT) == UNBUILT and name in declared:
            users = ", ".join(r.name for r in spec.roles if r.image == name)
            out.append(StackAction(ActionKind.BUILD_IMAGE, f"image/{name}",
                                   f"not built yet; run by {users}", image=name))
    for role in spec.roles:
        if role.app is None or role.name in layers or role.name in unbuilt:
            continue
        digest = role.image_digest or images.get(role.image, UNBUILT)
        after = " (once the image is built)" if digest == UNBUILT else ""
        out.append(StackAction(
            ActionKind.BUILD_RELEASE, f"{spec.name}/{role.name}",
            f"release {role.app.digest[:12]} ({role.app.path}) on image {role.image}{after}",
            role=role.name, image=digest, source=role.app.digest))
    return out


def migration_actions(migrations: Iterable[Migration]) -> list[StackAction]:
    """Each migration under way, and what its step does next."""
    out = []
    for m in sorted(migrations, key=lambda m: m.key):
        then = _MIGRATION_STEPS.get(m.step, m.step).format(source=m.source, target=m.target)
        out.append(StackAction(ActionKind.MIGRATE, str(m.key),
                               f"{m.source} → {m.target}, {m.step}: {then}",
                               role=m.key.role, key=m.key))
    return out


def publish_actions(spec: StackSpec | None, actions: Iterable[Action],
                    observed: Iterable[InstanceFacts],
                    lost: Collection[InstanceKey] = ()) -> list[StackAction]:
    """The running instances of roles that reload and have files, whose files may list who
    is ready of a role (their own, or one they use) that `actions` change: the publisher
    gives them their files again and reloads them (instances with an action of their own
    get their files from it)."""
    if spec is None:
        return []
    actions = list(actions)
    changed = {a.key.role for a in actions if a.kind in _CHANGES_READY and not a.held}
    if not changed:
        return []
    own = {a.key for a in actions}
    out = []
    for f in sorted(observed, key=lambda f: f.key):
        role = next((r for r in spec.roles if r.name == f.key.role), None)
        if role is None or role.reload is None or not role.files or f.key in own \
                or f.key in lost or f.state is not InstanceState.RUNNING:
            continue
        seen = sorted({role.name, *role.uses} & changed)
        if seen:
            out.append(StackAction(
                ActionKind.PUBLISH, str(f.key),
                f"who is ready of {', '.join(seen)} changes: its files again, then reloaded",
                role=role.name, key=f.key))
    return out


def with_steps(plan: Plan, *steps: Iterable[StackAction]) -> Plan:
    """`plan` with these stack actions besides its own."""
    return replace(plan, steps=(*plan.steps, *(s for group in steps for s in group)))
