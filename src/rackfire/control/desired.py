"""A stack's desired instances, rendered, beside what runs: the snapshot a plan is made from,
for `rackfire plan` (nothing built, nothing kept) and for a reconcile pass. Nothing missing
is built here: an image not built yet, a release never built, is a build action of the plan
(plan/steps.py), which the executor runs before the rest."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from rackfire.control.fleet import Fleet
from rackfire.control.health import health_of
from rackfire.errors import NotFound, RackfireError
from rackfire.model.instance import (
    Health,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import StackSpec
from rackfire.plan import Plan, StackAction, plan_stack, render_stack
from rackfire.plan.ipam import allocate_ips, allocate_subnet, gateway_of, subnet_prefix
from rackfire.plan.render import role_keys
from rackfire.plan.steps import (
    UNBUILT,
    build_actions,
    migration_actions,
    publish_actions,
    with_steps,
)
from rackfire.store import ReleaseStatus, StackRecord, StateStore


@dataclass(frozen=True, slots=True)
class Desired:
    network: NetworkConfig
    ips: dict[InstanceKey, str]
    requests: list[InstanceRequest]  # rendered with the instances ready when it was made
    images: dict[str, str]  # role -> the image digest it runs
    layers: dict[str, str]  # role -> its built release layer (roles with an app)
    unbuilt: dict[str, str]  # role -> why its release layer could not be built
    observed: list[InstanceFacts]  # what ran when it was rendered (the plan starts there)
    render: Callable[[Collection[InstanceKey]], list[InstanceRequest]]  # with other ready
    builds: tuple[StackAction, ...] = ()  # images and releases to build before the rest


class ReadyKeys(Protocol):
    def __call__(self, spec: StackSpec, facts: list[InstanceFacts]) -> set[InstanceKey]: ...


class DesiredState:
    def __init__(self, store: StateStore, agent: Fleet, clock: Callable[[], float],
                 subnet_pool: str, ready_keys: ReadyKeys) -> None:
        self.store, self.agent, self.clock = store, agent, clock
        self.subnet_pool = subnet_pool
        self.ready_keys = ready_keys

    def make(self, spec: StackSpec, rec: StackRecord | None, *, build: bool) -> Desired:
        """Every desired instance, rendered with the instances that are ready now. With
        `build` (a reconcile), images and releases that exist are made current (an image
        whose declared spec changed is rebuilt, a release layer looked up); what was never
        built is left to the plan's build actions (`Desired.builds`), as without it."""
        subnet = self.subnet(rec, spec)
        ips = self.store.ips(spec.name) if rec else {}
        roles = {r.name for r in spec.roles}
        runs = {r.key: r.command for r in (self.store.runs.active(spec.name) if rec else [])
                if r.role in roles}
        missing = [k for role in spec.roles for k in role_keys(spec.name, role, surge=True)
                   if k not in ips] + [k for k in runs if k not in ips]
        ips.update(zip(missing, allocate_ips(subnet, ips.values(), len(missing)), strict=True))
        closed = {r.name for r in spec.roles if not r.egress}
        network = NetworkConfig(spec.name, subnet, gateway_of(subnet),
                                int(subnet.rsplit("/", 1)[1]), no_egress=tuple(sorted(
                                    ips[k] for r in spec.roles if not r.egress
                                    for k in role_keys(spec.name, r, surge=True))) + tuple(
                                    sorted(ips[k] for k in runs if k.role in closed)))
        digests = {}
        declared = {i.name for i in spec.images}
        for image_name in {r.image for r in spec.roles}:
            summary = self.agent.images.image(image_name)
            if build and summary is not None and image_name in declared:
                # Rebuilt here if its declared spec changed (other packages, a new tarball):
                # only the image store knows what it was built from.
                summary = self.agent.images.ensure_image(spec.image(image_name))
            if summary is None and build and image_name not in declared:
                raise NotFound(f"image {image_name} is not built", hint="rackfire image build")
            digests[image_name] = summary.digest if summary else UNBUILT  # a BUILD_IMAGE
        images = {r.name: r.image_digest or digests[r.image] for r in spec.roles}
        layers, unbuilt = {}, {}
        for role in spec.roles:
            history = self.store.releases(spec.name, role.name) if role.app and rec else []
            mine = [r for r in history if role.app is not None
                    and r.source == role.app.digest and r.image_digest == images[role.name]]
            built = next((r.layer for r in mine if r.layer), "")
            if any(r.status is ReleaseStatus.FAILED and not r.layer for r in mine):
                # Its build failed before: not again on every pass, only when pushed again.
                unbuilt[role.name] = "it failed to build before; push it again to retry"
            elif role.app is not None and built and not build:
                layers[role.name] = built
            elif role.app is not None and built:
                try:  # built before: a cache hit (a build again only if the layer went)
                    layers[role.name] = self.agent.images.ensure_release(
                        role.app.digest, images[role.name]).digest
                except RackfireError as e:  # that release fails; the reconcile decides
                    unbuilt[role.name] = e.message
            # else never built: a BUILD_RELEASE of the plan (steps.build_actions)
        seeds = self.store.snapshots.seeds(spec.name) if rec else {}

        def render(ready: Collection[InstanceKey]) -> list[InstanceRequest]:
            return [replace(r, seed=(s.snapshot_stack, s.snapshot, s.source))
                    if (s := seeds.get(r.key)) is not None else r
                    for r in plain(ready=ready)]

        primaries = {role: (p.index, p.term)
                     for role, p in self.store.primaries.of_stack(spec.name).items()}
        plain = partial(render_stack, spec, ips, digests, network,
                        self.agent.info().runtimes[0], app_digests=layers, primaries=primaries,
                        runs=runs)
        observed = self.agent.observe(spec.name)
        requests = render(self.ready_keys(spec, observed) if rec else ())
        return Desired(network, {r.key: r.ip for r in requests}, requests, images, layers,
                       unbuilt, observed, render,
                       tuple(build_actions(spec, digests, layers, unbuilt)))

    def subnet(self, rec: StackRecord | None, spec: StackSpec) -> str:
        """The stack's subnet, or the one a new stack would get: sized for it."""
        if rec:
            return rec.subnet
        wanted = sum(len(role_keys(spec.name, r, surge=True)) for r in spec.roles)
        return allocate_subnet(self.subnet_pool, self.store.used_subnets(),
                               subnet_prefix(wanted))

    def plan(self, name: str, generation: int, spec: StackSpec, desired: Desired,
             timed_out: dict[InstanceKey, str] | None = None,
             gated: dict[str, str] | None = None) -> Plan:
        """The pure planner over the snapshot, with each instance's health and control.
        `timed_out`: instances a rollout made that did not pass their check in time,
        failing for the planner as if unhealthy (held behind, restarted by the policy)."""
        statuses = self.store.statuses(name)
        controls = {k: s.control for k, s in statuses.items()}
        checked = {r.name for r in spec.roles if r.health}
        unhealthy, starting = {}, []
        for f in desired.observed:
            if f.state is InstanceState.RUNNING and f.key.role in checked \
                    and f.key.run is None:
                health, why = health_of(f, statuses.get(f.key))
                if health is Health.UNHEALTHY:
                    unhealthy[f.key] = why
                elif health is not Health.HEALTHY:
                    starting.append(f.key)
        for key, why in (timed_out or {}).items():
            unhealthy.setdefault(key, why)
            if key in starting:
                starting.remove(key)
        lost = self.agent.lost(name)
        plan = plan_stack(name, generation, spec, desired.requests, desired.observed,
                          controls, self.clock(), unhealthy, starting, lost, gated)
        return with_steps(plan, desired.builds,
                          migration_actions(self.agent.placements.migrations(name)),
                          publish_actions(spec, plan.actions, desired.observed, lost))


def desired_keys(spec: StackSpec) -> list[InstanceKey]:
    """Every instance the spec wants (not its surge ones)."""
    return [InstanceKey(spec.name, r.name, i) for r in spec.roles for i in range(r.count)]
