"""Publishing: the published ports, the role names in each stack's hosts file, and the
reloads of appliances whose files list who is ready (a load balancer's backends).

Who is *ready* runs and passes its check; an instance *drained* on its way down is not,
from the moment the executor drains it until its action has run. Leaving one out may
reload an appliance: the action then waits RELOAD_SETTLE for the reload to take, as a
later pass of the reconcile, never a sleep.
"""

from __future__ import annotations

from collections.abc import Callable

from rackfire.control.desired import Desired
from rackfire.control.executor import CONTROLLER, TAKE_DOWN
from rackfire.control.fleet import Fleet
from rackfire.control.health import health_of
from rackfire.control.vip import Vips
from rackfire.errors import RackfireError
from rackfire.model.agent import PublishedPort
from rackfire.model.instance import (
    Health,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
)
from rackfire.model.stack import HealthSpec, StackSpec
from rackfire.plan import Plan
from rackfire.plan.planner import reloadable
from rackfire.store import InstanceStatus, StackRecord, StateStore

RELOAD_SETTLE = 0.5  # after a reload signal, before the drained instance is stopped


class Publisher:
    def __init__(self, store: StateStore, agent: Fleet, clock: Callable[[], float]) -> None:
        self.store, self.agent, self.clock = store, agent, clock
        self.vips = Vips(agent)
        # stack -> instance -> (when it was drained, whether a reload must settle first);
        # each stack's map is only touched by the worker that has the stack
        self._draining: dict[str, dict[InstanceKey, tuple[float, bool]]] = {}

    def drained(self, stack: str) -> dict[InstanceKey, tuple[float, bool]]:
        """The stack's drained instances: when, and whether a reload must settle first."""
        return self._draining.setdefault(stack, {})

    def ready_keys(self, spec: StackSpec, facts: list[InstanceFacts]) -> set[InstanceKey]:
        """The instances that run and pass their check (a role without one: that run),
        but not those drained on their way down, nor those on a host that is gone (what it
        last said of them stands, but nothing reaches them)."""
        statuses = self.store.statuses(spec.name)
        checks = {r.name: r.health for r in spec.roles}
        out = self.drained(spec.name).keys() | self.agent.lost(spec.name).keys()
        return {f.key for f in facts if f.key.role in checks and f.key not in out
                and f.key.run is None  # a run serves nobody (its role's name is not its)
                and ready(f, statuses.get(f.key), checks[f.key.role])}

    def forget_drains(self, stack: str, plan: Plan) -> None:
        """A drain ends with the action it was for: one this plan no longer takes (the
        change was undone, the instance went meanwhile) puts the instance back."""
        down = {a.key for a in plan.actions if a.kind in TAKE_DOWN and not a.held}
        drained = self.drained(stack)
        for key in [k for k in drained if k not in down]:
            del drained[key]

    def forget_stack(self, stack: str) -> None:
        self._draining.pop(stack, None)
        self.vips.forget(stack)

    def ports(self, rec: StackRecord, desired: Desired) -> Ports:
        return Ports(self, rec, desired)

    def publish(self, rec: StackRecord, desired: Desired,
                facts: list[InstanceFacts] | None = None) -> int:
        """Point the published ports and the role names at the instances that are ready,
        leaving out those drained. An instance's own name stays while it runs and is not
        failing, so it can find itself while it starts. How many instances were reloaded
        for it."""
        facts = self.agent.observe(rec.name) if facts is None else facts
        observed = {f.key: f for f in facts}
        statuses = self.store.statuses(rec.name)
        exclude = self.drained(rec.name)
        ready_keys = self.ready_keys(rec.spec, facts)
        reloaded = self._reload_changed(rec, desired.render(ready_keys), observed)
        ports = []
        hosts: list[tuple[str, list[str]]] = []
        primaries = self.store.primaries.of_stack(rec.name)
        for role in rec.spec.roles:
            mine = [k for k in sorted(observed) if k.role == role.name and k not in exclude
                    and k in desired.ips]
            ready_ones = [k for k in mine if k in ready_keys]
            if role.ha.primary:  # its name and ports lead to the primary alone
                first = primaries[role.name].index if role.name in primaries else 0
                ready_ones = [k for k in ready_ones if k.index == first]
            for k in mine:
                f = observed.get(k)
                if k in ready_keys:
                    named = not role.ha.primary or k in ready_ones
                    hosts.append((desired.ips[k], [k.name, k.role] if named else [k.name]))
                elif f is not None and f.state is InstanceState.RUNNING and \
                        health_of(f, statuses.get(k))[0] is not Health.UNHEALTHY:
                    hosts.append((desired.ips[k], [k.name]))
            for p in role.ports:
                backends = tuple(f"{observed[k].ip or desired.ips[k]}:{p.container_port}"
                                 for k in ready_ones)
                ports.append(PublishedPort(p, backends))
        self.agent.set_hosts(rec.name, hosts)
        self.agent.publish(rec.name, ports)
        self.vips.place(rec.name, rec.spec.vip)
        return reloaded

    def _reload_changed(self, rec: StackRecord, requests: list[InstanceRequest],
                        observed: dict[InstanceKey, InstanceFacts]) -> int:
        """Instances whose files changed with who is ready (a load balancer's backend list)
        and that can reload get the new files now, in place: before a drained instance is
        stopped, and as soon as a new one is ready. Others wait for the next plan (a
        reconfigure). How many were reloaded."""
        reloaded = 0
        for req in requests:
            f = observed.get(req.key)
            if f is None or not reloadable(req, f):
                continue
            try:
                self.agent.reload(req)
            except RackfireError as e:
                self.store.add_event(CONTROLLER, rec.name, str(req.key), "reload", "failed",
                                     e.message)
                continue
            reloaded += 1
            self.store.add_event(CONTROLLER, rec.name, str(req.key), "reload", "ok",
                                 "who is ready changed")
        return reloaded


class Ports:
    """The executor's drains (control/executor.py Ports), for one pass of one stack."""

    def __init__(self, publisher: Publisher, rec: StackRecord, desired: Desired) -> None:
        self.publisher, self.rec, self.desired = publisher, rec, desired
        self.drained = publisher.drained(rec.name)

    def drain(self, keys: set[InstanceKey]) -> bool:
        now = self.publisher.clock()
        new = keys - self.drained.keys()
        for key in new:
            self.drained[key] = (now, False)
        if new:
            reloaded = self.publisher.publish(self.rec, self.desired)
            for key in new:
                self.drained[key] = (now, reloaded > 0)
        return all(not settle or now - since >= RELOAD_SETTLE
                   for since, settle in (self.drained[k] for k in keys))

    def restore(self, keys: set[InstanceKey], *, repoint: bool = True) -> None:
        for key in keys:
            self.drained.pop(key, None)
        if repoint:
            self.publisher.publish(self.rec, self.desired)


def ready(f: InstanceFacts | None, st: InstanceStatus | None, health: HealthSpec | None) -> bool:
    if f is None or f.state is not InstanceState.RUNNING:
        return False
    return health is None or health_of(f, st)[0] is Health.HEALTHY

