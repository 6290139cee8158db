"""Per-instance desired state: templates rendered, hashes computed. Pure.

A role's templates see only its own instances and the roles it `uses`, so a change to an
unrelated role never reconfigures it. `roles.<r>.instances` is every desired instance;
`roles.<r>.ready` those that pass their check now (surge instances of a rollout included,
draining ones left out): what a load balancer lists, re-rendered and reloaded as it changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

from rackfire.errors import PrereqError
from rackfire.model import templates
from rackfire.model.instance import InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import LogLimits, RoleSpec, RuntimeKind, StackSpec, digest
from rackfire.model.template_budget import Steps


def spec_fields(role: RoleSpec, image_digest: str, runtime: RuntimeKind) -> dict[str, str]:
    """The parts of a role that need a fresh instance when they change. A release is known
    by its source (its layer follows from it and the image), so a plan needs no build; the
    env a release adds follows `app`."""
    fields = {
        "image": image_digest[:16],
        "command": digest(role.command),
        # A data disk's size is a resource too: it grows live, with the root disk.
        "resources": digest([asdict(role.resources), role.data.size if role.data else None]),
        "env": digest(role.env),
        "runtime": runtime.value,
    }
    if role.app is not None:
        fields["app"] = role.app.digest[:16]
    if role.data is not None:
        fields["data"] = digest(role.data.path)
    if role.logs != LogLimits():  # only when set: instances made before it keep their hash
        fields["logs"] = digest(asdict(role.logs))  # applied live, as resources are
    return fields


def surge_count(role: RoleSpec) -> int:
    """Extra instances (indexes count, count+1, ...) a rollout of this role may add. A role
    with data disks never surges: the extra one would be a new, empty one (a second, empty
    database) taking traffic."""
    return role.update.max_surge if role.count and role.data is None else 0


def max_unavailable(role: RoleSpec) -> int:
    """How many of the role's count a rollout may take out at once: at least one when it
    cannot surge, or nothing could roll."""
    return role.update.max_unavailable or (0 if surge_count(role) else 1)


def warm_count(role: RoleSpec) -> int:
    """Instances past the count kept made and stopped, for a scale-out to start (none past
    the role's max: no scale-out would start them)."""
    return max(0, min(role.scale.warm, role.scale.max - role.count)) if role.scale else 0


def role_keys(stack: str, role: RoleSpec, *, surge: bool = False) -> list[InstanceKey]:
    """The role's instances: 0..count-1, and with `surge` the ones past it: a rollout's
    extra ones, and the warm ones (the same indexes: a rollout's surge takes a warm one)."""
    n = role.count + (max(surge_count(role), warm_count(role)) if surge else 0)
    return [InstanceKey(stack, role.name, i) for i in range(n)]


def app_env(role: RoleSpec) -> tuple[tuple[str, str], ...]:
    """The role's env, plus what a pushed release needs: its packages on the path, and
    which release it is (the app can say so)."""
    if role.app is None:
        return role.env
    env = {"PYTHONPATH": "/app/.deps", **dict(role.env),
           "RACKFIRE_RELEASE": role.app.digest[:12]}
    return tuple(sorted(env.items()))


def render_stack(
    stack: StackSpec,
    ips: Mapping[InstanceKey, str],
    image_digests: Mapping[str, str],
    network: NetworkConfig,
    default_runtime: RuntimeKind,
    *,
    app_digests: Mapping[str, str] | None = None,
    ready: Collection[InstanceKey] = (),
    primaries: Mapping[str, tuple[int, int]] | None = None,
    runs: Mapping[InstanceKey, tuple[str, ...]] | None = None,
) -> list[InstanceRequest]:
    """Every desired instance of the stack, with its config rendered from the templates,
    then the surge instances a rollout may add (`surge=True`; those that have an IP).
    `image_digests` is by image name, `app_digests` (release layers, once built) by role,
    `primaries` (index, term) by primary role (its first instance, term 1, if not given),
    `runs` the runs under way (control/jobs.py), each with its command (() for the role's):
    instances of their role that no template lists."""
    runs = runs or {}
    app_digests = app_digests or {}
    chosen = {r.name: (primaries or {}).get(r.name, (0, 1)) for r in stack.roles
              if r.ha.primary}

    def entry(k: InstanceKey) -> dict[str, Any]:
        return templates.peer(k.name, ips[k], k.index)

    peers = {role.name: [entry(k) for k in role_keys(stack.name, role)]
             for role in stack.roles}
    ready_peers = {role.name: [entry(k) for k in role_keys(stack.name, role, surge=True)
                               if k in ready and k in ips]
                   for role in stack.roles}
    out: list[InstanceRequest] = []
    steps = Steps()
    for role in stack.roles:
        runtime = role.runtime or default_runtime
        env = app_env(role)
        app_digest = app_digests.get(role.name, "") if role.app else ""
        fields = spec_fields(role, role.image_digest or image_digests[role.image], runtime)
        visible = {r: templates.role_view(peers[r], ready_peers[r],
                                          *_primary(peers[r], chosen.get(r)))
                   for r in (role.name, *role.uses)}
        keys = [k for k in role_keys(stack.name, role, surge=True) if k in ips]
        keys += sorted(k for k in runs if k.role == role.name and k in ips)
        # path -> a file that reads nothing of its instance, and its size
        shared: dict[str, tuple[str, int]] = {}
        # The same for every instance of the role: hashed once.
        spec_hash, spec_items = digest(fields), tuple(sorted(fields.items()))
        layout = digest([path for path, _ in role.files])
        config_hashes: dict[tuple[tuple[str, str], ...], str] = {}
        for key in keys:
            index = key.index
            ctx = templates.context(stack=stack.name, role=role.name, count=role.count,
                                    env=dict(role.env), name=key.name, ip=ips[key],
                                    index=index, instance_id=key.id, roles=visible,
                                    primary=chosen.get(role.name, (-1, 0))[0] == index)
            files = _render_files(role, ctx, shared, steps)
            run = runs.get(key)
            request = InstanceRequest(
                key=key,
                action_id="",
                runtime=runtime,
                image_digest=role.image_digest or image_digests[role.image],
                command=run or role.command,
                env=env if run is None else tuple(sorted(
                    {**dict(env), "RACKFIRE_RUN": str(key.run)}.items())),
                resources=role.resources,
                files=files,
                ip=ips[key],
                network=network,
                spec_hash=spec_hash,
                spec_fields=spec_items,
                config_hash=config_hashes.get(files) or config_hashes.setdefault(
                    files, digest(files)),
                stop_timeout=role.stop_timeout,
                app_digest=app_digest,
                data=role.data,
                reload=role.reload,
                files_layout=layout,
                surge=key.run is None and role.count <= index < role.count + surge_count(role),
                warm=key.run is None and role.count <= index < role.count + warm_count(role),
                logs=role.logs,
                fence=role.self_fences and run is None,
            )
            out.append(request)
    return out


def _primary(peers: list[dict[str, Any]],
             chosen: tuple[int, int] | None) -> tuple[dict[str, Any] | None, int]:
    """A primary role's primary peer (None while it is scaled to nothing) and term."""
    if chosen is None:
        return None, 0
    index, term = chosen
    return next((p for p in peers if p["index"] == index), None), term


def _render_files(role: RoleSpec, ctx: dict[str, Any], shared: dict[str, tuple[str, int]],
                  steps: Steps) -> tuple[tuple[str, str], ...]:
    """An instance's files, within the bounds of one file and of its disk. One that reads
    nothing of `instance` is the same for every instance of the role: it goes into `shared`,
    rendered once (a role of thousands each listing hundreds of peers renders in
    milliseconds rather than minutes)."""
    files, used = [], 0
    for path, text in role.files:
        limit, too_big = templates.file_limit(used, role.resources.disk)
        if path in shared:
            out, size = shared[path]
            if size > limit:
                raise _failed(role, path, templates.RenderError(too_big))
        else:
            try:
                compiled, per_instance = templates.compile_template(text)
                out = templates.render(compiled, ctx, limit, too_big, steps)
            except templates.RenderError as e:
                raise _failed(role, path, e) from None
            size = len(out) if out.isascii() else len(out.encode())
            if not per_instance:
                shared[path] = out, size
        used += size
        files.append((path, out))
    return tuple(files)


def _failed(role: RoleSpec, path: str, e: templates.RenderError) -> PrereqError:
    return PrereqError(f"roles.{role.name}.files.{path}: template failed: {e}",
                       hint=templates.HINT)
