"""A stack's desired instances, rendered, beside what runs: the snapshot a plan is made from,
for `rackfire plan` (nothing built, nothing kept) and for a reconcile pass (missing images
and release layers built first)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from rackfire.control.health import health_of
from rackfire.errors import NotFound, RackfireError
from rackfire.model.agent import Agent
from rackfire.model.instance import (
    Health,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.records import StackStatus
from rackfire.model.stack import StackSpec
from rackfire.plan import Plan, plan_stack, render_stack
from rackfire.plan.ipam import allocate_ips, allocate_subnet, gateway_of, subnet_prefix
from rackfire.plan.render import role_keys
from rackfire.store import ReleaseStatus, StackRecord, Store

UNBUILT = "0" * 64  # the digest a plan shows for an image that apply will build


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


class ReadyKeys(Protocol):
    def __call__(self, spec: StackSpec, facts: list[InstanceFacts]) -> set[InstanceKey]: ...


class DesiredState:
    def __init__(self, store: Store, agent: Agent, clock: Callable[[], float],
                 subnet_pool: str, ready_keys: ReadyKeys) -> None:
        self.store, self.agent, self.clock = store, agent, clock
        self.subnet_pool = subnet_pool
        self.ready_keys = ready_keys

    def make(self, spec: StackSpec, rec: StackRecord | None, *, build: bool) -> Desired:
        """Every desired instance, rendered with the instances that are ready now. With
        `build`, missing images and release layers are built first."""
        subnet = self.subnet(rec, spec)
        network = NetworkConfig(spec.name, subnet, gateway_of(subnet),
                                int(subnet.rsplit("/", 1)[1]))
        ips = self.store.ips(spec.name) if rec else {}
        missing = [k for role in spec.roles for k in role_keys(spec.name, role, surge=True)
                   if k not in ips]
        ips.update(zip(missing, allocate_ips(subnet, ips.values(), len(missing)), strict=True))
        digests = {}
        for image_name in {r.image for r in spec.roles}:
            summary = self.agent.image(image_name)
            if build and image_name in {i.name for i in spec.images}:
                if summary is None and rec is not None:
                    self.store.set_stack_status(spec.name, rec.generation,
                                                StackStatus.PROGRESSING,
                                                f"building image {image_name}")
                summary = self.agent.ensure_image(spec.image(image_name))
            if summary is None and build:
                raise NotFound(f"image {image_name} is not built", hint="rackfire image build")
            digests[image_name] = summary.digest if summary else UNBUILT
        images = {r.name: r.image_digest or digests[r.image] for r in spec.roles}
        layers, unbuilt = {}, {}
        for role in spec.roles:
            if build and role.app is not None and rec is not None and any(
                    r.status is ReleaseStatus.FAILED and not r.layer
                    and r.source == role.app.digest and r.image_digest == images[role.name]
                    for r in self.store.releases(spec.name, role.name)):
                # Its build failed before: not again on every pass, only when pushed again.
                unbuilt[role.name] = "it failed to build before; push it again to retry"
            elif build and role.app is not None:
                if rec is not None:
                    self.store.set_stack_status(spec.name, rec.generation,
                                                StackStatus.PROGRESSING,
                                                f"building the release of {role.name}")
                try:
                    layers[role.name] = self.agent.ensure_release(role.app.digest,
                                                                  images[role.name]).digest
                except RackfireError as e:  # that release fails; the reconcile decides
                    unbuilt[role.name] = e.message
        render = partial(render_stack, spec, ips, digests, network,
                         self.agent.info().runtimes[0], app_digests=layers)
        observed = self.agent.observe(spec.name)
        requests = render(ready=self.ready_keys(spec, observed) if rec else ())
        return Desired(network, {r.key: r.ip for r in requests}, requests, images, layers,
                       unbuilt, observed, lambda ready: render(ready=ready))

    def subnet(self, rec: StackRecord | None, spec: StackSpec) -> str:
        """The stack's subnet, or the one a new stack would get: sized for it."""
        if rec:
            return rec.subnet
        wanted = sum(len(role_keys(spec.name, r, surge=True)) for r in spec.roles)
        return allocate_subnet(self.subnet_pool, self.store.used_subnets(),
                               subnet_prefix(wanted))

    def plan(self, name: str, generation: int, spec: StackSpec, desired: Desired,
             timed_out: dict[InstanceKey, str] | None = None) -> Plan:
        """The pure planner over the snapshot, with each instance's health and control.
        `timed_out`: instances a rollout made that did not pass their check in time,
        failing for the planner as if unhealthy (held behind, restarted by the policy)."""
        statuses = self.store.statuses(name)
        controls = {k: s.control for k, s in statuses.items()}
        checked = {r.name for r in spec.roles if r.health}
        unhealthy, starting = {}, []
        for f in desired.observed:
            if f.state is InstanceState.RUNNING and f.key.role in checked:
                health, why = health_of(f, statuses.get(f.key))
                if health is Health.UNHEALTHY:
                    unhealthy[f.key] = why
                elif health is not Health.HEALTHY:
                    starting.append(f.key)
        for key, why in (timed_out or {}).items():
            unhealthy.setdefault(key, why)
            if key in starting:
                starting.remove(key)
        return plan_stack(name, generation, spec, desired.requests, desired.observed,
                          controls, self.clock(), unhealthy, starting)


def desired_keys(spec: StackSpec) -> list[InstanceKey]:
    """Every instance the spec wants (not its surge ones)."""
    return [InstanceKey(spec.name, r.name, i) for r in spec.roles for i in range(r.count)]
