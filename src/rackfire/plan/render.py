"""Per-instance desired state: templates rendered, hashes computed. Pure.

A role's templates see only its own instances and the roles it `uses`, so a change to an
unrelated role never reconfigures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from rackfire.errors import PrereqError
from rackfire.model.instance import InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import RoleSpec, RuntimeKind, StackSpec, digest

_JINJA = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                              keep_trailing_newline=True)


def spec_fields(role: RoleSpec, image_digest: str, runtime: RuntimeKind) -> dict[str, str]:
    """The parts of a role that need a fresh instance when they change."""
    return {
        "image": image_digest[:16],
        "command": digest(role.command),
        "resources": digest(asdict(role.resources)),
        "env": digest(role.env),
        "runtime": runtime.value,
    }


def render_stack(
    stack: StackSpec,
    ips: Mapping[InstanceKey, str],
    image_digests: Mapping[str, str],
    network: NetworkConfig,
    default_runtime: RuntimeKind,
) -> list[InstanceRequest]:
    """Every desired instance of the stack, with its config rendered from the templates."""
    peers = {
        role.name: [
            {"name": k.name, "ip": ips[k], "index": k.index}
            for k in (InstanceKey(stack.name, role.name, i) for i in range(role.count))
        ]
        for role in stack.roles
    }
    out: list[InstanceRequest] = []
    for role in stack.roles:
        runtime = role.runtime or default_runtime
        fields = spec_fields(role, image_digests[role.image], runtime)
        visible = {r: {"instances": peers[r], "count": len(peers[r])}
                   for r in (role.name, *role.uses)}
        for index in range(role.count):
            key = InstanceKey(stack.name, role.name, index)
            ctx = {
                "instance": {"name": key.name, "ip": ips[key], "index": index, "id": key.id,
                             "role": role.name},
                "role": {"name": role.name, "count": role.count},
                "stack": {"name": stack.name},
                "roles": visible,
                "env": dict(role.env),
            }
            files = tuple((path, _render(role, path, tpl, ctx)) for path, tpl in role.files)
            request = InstanceRequest(
                key=key,
                action_id="",
                runtime=runtime,
                image_digest=image_digests[role.image],
                command=role.command,
                env=role.env,
                resources=role.resources,
                files=files,
                ip=ips[key],
                network=network,
                spec_hash=digest(fields),
                spec_fields=tuple(sorted(fields.items())),
                config_hash=digest(files),
                stop_timeout=role.stop_timeout,
            )
            out.append(request)
    return out


def _render(role: RoleSpec, path: str, template: str, ctx: dict[str, Any]) -> str:
    try:
        return _JINJA.from_string(template).render(ctx)
    except TemplateError as e:
        raise PrereqError(
            f"roles.{role.name}.files.{path}: template failed: {e}",
            hint="templates see instance.{name,ip,index}, role, stack, env, and "
            "roles.<r>.instances for the role itself and the roles it `uses`",
        ) from None
