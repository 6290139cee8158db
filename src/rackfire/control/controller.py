"""The controller: accepts desired stacks, and reconciles each stack to them.

Level-triggered: an API call or a health change only enqueues the stack's name; `reconcile`
reads everything fresh (desired from the store, observed from the agent), plans (pure), and
executes. It is safe to run at any time, any number of times, after any crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from rackfire.control.executor import Executor
from rackfire.control.health import HealthMonitor, health_of
from rackfire.control.workqueue import WorkQueue
from rackfire.errors import NotFound, PrereqError, RackfireError
from rackfire.model.agent import Agent, PublishedPort
from rackfire.model.instance import (
    Health,
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import HealthSpec, StackSpec
from rackfire.plan import Plan, RestartRecord, plan_stack, render_stack
from rackfire.plan.ipam import DEFAULT_POOL, allocate_ip, allocate_subnet, gateway_of
from rackfire.store import InstanceStatus, StackRecord, Store

log = logging.getLogger("rackfire.controller")

RESYNC_SECONDS = 10.0
UNBUILT = "0" * 64  # the digest a plan shows for an image that apply will build


@dataclass(frozen=True, slots=True)
class Desired:
    network: NetworkConfig
    ips: dict[InstanceKey, str]
    requests: list[InstanceRequest]


class Controller:
    def __init__(self, store: Store, agent: Agent, *, subnet_pool: str = DEFAULT_POOL,
                 workers: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.agent = agent
        self.subnet_pool = subnet_pool
        self.clock = clock
        self.queue = WorkQueue()
        self.health = HealthMonitor(store, agent, on_change=self.queue.add)
        self.executor = Executor(store, agent, self.health)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._apply_lock = threading.Lock()

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        interrupted = self.store.abandon_unfinished()
        if interrupted:
            log.warning("%d action(s) were interrupted by a crash; re-planning", interrupted)
        for i in range(self._workers):
            self._spawn(f"reconcile-{i}", lambda: self.queue.run_worker(self.reconcile_safely))
        self._spawn("resync", self._resync)
        self._spawn("health", lambda: self.health.run(self._stop))

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for t in self._threads:
            t.join(timeout=15)

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _resync(self) -> None:
        while not self._stop.is_set():
            for rec in self.store.stacks():
                self.queue.add(rec.name)
            self._stop.wait(RESYNC_SECONDS)

    # requests from the API --------------------------------------------------------------

    def plan(self, spec: StackSpec) -> Plan:
        """What apply would do now. Changes nothing (IPs are chosen but not kept)."""
        self._check_prereqs(spec)
        rec = self.store.get_stack(spec.name)
        desired = self._desired(spec, rec, build=False)
        return self._plan(spec.name, rec.generation if rec else 0, spec, desired)

    def apply(self, spec: StackSpec, expected_generation: int | None) -> tuple[int, Plan]:
        """Store the spec as the stack's next generation and start converging.
        Every check runs before the store is touched: if this raises, nothing changed."""
        with self._apply_lock:  # two new stacks must not both take the same free subnet
            plan = self.plan(spec)
            subnet = self._subnet(self.store.get_stack(spec.name))
            generation = self.store.put_stack(spec, subnet, expected_generation)
        self.queue.add(spec.name)
        return generation, Plan(plan.stack, generation, plan.actions)

    def destroy(self, name: str) -> int:
        if self.store.get_stack(name) is None:
            if self.agent.observe(name):
                raise PrereqError(f"stack {name} is unknown here but has instances on the host",
                                  hint="see `rackfire ps`")
            return 0  # not found on delete is success
        generation = self.store.mark_deleting(name)
        self.queue.add(name)
        return generation

    def _check_prereqs(self, spec: StackSpec) -> None:
        taken = {
            p.host_port: rec.name
            for rec in self.store.stacks() if rec.name != spec.name and not rec.deleting
            for role in rec.spec.roles for p in role.ports
        }
        for role in spec.roles:
            for p in role.ports:
                if p.host_port in taken:
                    raise PrereqError(
                        f"roles.{role.name}.ports: host port {p.host_port} is already "
                        f"published by stack {taken[p.host_port]}",
                        hint="choose another host port")
        busy = self.agent.busy_ports(spec.name, [p for r in spec.roles for p in r.ports])
        if busy:
            raise PrereqError(
                f"host port {busy[0].host_port} is in use on {self.agent.info().name} by "
                "another program", hint="choose another host port, or stop that program")
        declared = {i.name for i in spec.images}
        for role in spec.roles:
            if role.image not in declared and self.agent.image(role.image) is None:
                raise PrereqError(
                    f"roles.{role.name}.image: image {role.image!r} is neither declared under "
                    "images: nor built on this host",
                    hint=f"declare it (images: {{{role.image}: {{from: host}}}}) "
                    "or run `rackfire image build`")
        runtimes = self.agent.info().runtimes
        for role in spec.roles:
            if role.runtime is not None and role.runtime not in runtimes:
                raise PrereqError(f"roles.{role.name}.runtime: {role.runtime} is not available "
                                  f"here (available: {', '.join(runtimes)})",
                                  hint="the container runtime needs root and runc")
        for image in spec.images:
            self.agent.check_image(image)

    # reconcile --------------------------------------------------------------------------

    def reconcile_safely(self, name: str) -> None:
        rec = self.store.get_stack(name)
        generation = rec.generation if rec else 0
        try:
            self.reconcile(name)
        except RackfireError as e:
            log.warning("reconcile %s: %s", name, e.message)
            self.store.set_stack_status(name, generation, "failed", e.message)
            self.queue.add(name, delay=5.0)
        except Exception as e:
            log.exception("reconcile %s crashed", name)
            self.store.set_stack_status(name, generation, "failed", f"internal error: {e}")
            self.queue.add(name, delay=5.0)

    def reconcile(self, name: str) -> None:
        rec = self.store.get_stack(name)
        if rec is None:
            return
        if rec.deleting:
            self._reconcile_deleted(rec)
            return
        desired = self._desired(rec.spec, rec, build=True)
        self.agent.ensure_network(desired.network)
        self.store.save_ips(desired.ips)
        self.agent.set_hosts(name, _hosts_entries(desired.ips))
        plan = self._plan(name, rec.generation, rec.spec, desired)
        if not plan.empty:
            self.store.set_stack_status(name, rec.generation, "progressing",
                                        f"{len(plan.actions)} action(s)")
        outcome = self.executor.run(
            plan, self.clock, lambda down: self._publish(rec, desired, exclude=down))
        for key in outcome.released:
            self.store.release_ip(key)
        observed = self.agent.observe(name)
        self._publish(rec, desired, observed)
        if outcome.failed:
            self.store.set_stack_status(name, rec.generation, "failed", outcome.failed)
            self.queue.add(name, delay=5.0)
        elif outcome.deferred is not None:
            self.queue.add(name, delay=max(0.1, outcome.deferred - self.clock()))
        else:
            self._settle(rec, observed)

    def _reconcile_deleted(self, rec: StackRecord) -> None:
        observed = self.agent.observe(rec.name)
        plan = plan_stack(rec.name, rec.generation, None, [], observed, {}, self.clock())
        outcome = self.executor.run(plan, self.clock)
        if outcome.failed:
            self.store.set_stack_status(rec.name, rec.generation, "failed", outcome.failed)
            self.queue.add(rec.name, delay=5.0)
            return
        self.agent.teardown_stack(rec.name)
        self.store.forget_stack(rec.name)

    def _settle(self, rec: StackRecord, observed: list[InstanceFacts]) -> None:
        """Converged when every desired instance runs and passes its check."""
        waiting = list(self._unready(rec, observed).values())
        if waiting:
            self.store.set_stack_status(rec.name, rec.generation, "progressing",
                                        "waiting for " + waiting[0])
            self.queue.add(rec.name, delay=1.0)
        else:
            self.store.set_stack_status(rec.name, rec.generation, "converged", "",
                                        converged=True)

    def unready(self, name: str, facts: list[InstanceFacts] | None = None) -> list[str]:
        rec = self.store.get_stack(name)
        if rec is None:
            return []
        return list(self._unready(rec, facts).values())

    def _unready(self, rec: StackRecord,
                 facts: list[InstanceFacts] | None = None) -> dict[InstanceKey, str]:
        """Desired instances that are not running and passing their check, and why."""
        observed = {f.key: f for f in (self.agent.observe(rec.name) if facts is None else facts)}
        statuses = self.store.statuses(rec.name)
        out = {}
        for role in rec.spec.roles:
            for i in range(role.count):
                key = InstanceKey(rec.name, role.name, i)
                f = observed.get(key)
                if f is None or f.state is not InstanceState.RUNNING:
                    out[key] = f"{key.name} ({f.state if f else 'missing'})"
                elif role.health is not None:
                    health, why = health_of(f, statuses.get(key))
                    if health is not Health.HEALTHY:
                        out[key] = f"{key.name} ({health}{': ' + why if why else ''})"
        return out

    # shared by plan and reconcile -------------------------------------------------------

    def _desired(self, spec: StackSpec, rec: StackRecord | None, *, build: bool) -> Desired:
        subnet = self._subnet(rec)
        network = NetworkConfig(spec.name, subnet, gateway_of(subnet),
                                int(subnet.rsplit("/", 1)[1]))
        ips = self.store.ips(spec.name) if rec else {}
        used = set(ips.values())
        for role in spec.roles:
            for i in range(role.count):
                key = InstanceKey(spec.name, role.name, i)
                if key not in ips:
                    ips[key] = allocate_ip(subnet, used)
                    used.add(ips[key])
        digests = {}
        for image_name in {r.image for r in spec.roles}:
            summary = self.agent.image(image_name)
            if build and image_name in {i.name for i in spec.images}:
                if summary is None and rec is not None:
                    self.store.set_stack_status(spec.name, rec.generation, "progressing",
                                                f"building image {image_name}")
                summary = self.agent.ensure_image(spec.image(image_name))
            if summary is None and build:
                raise NotFound(f"image {image_name} is not built", hint="rackfire image build")
            digests[image_name] = summary.digest if summary else UNBUILT
        requests = render_stack(spec, ips, digests, network, self.agent.info().runtimes[0])
        return Desired(network, {r.key: r.ip for r in requests}, requests)

    def _subnet(self, rec: StackRecord | None) -> str:
        """The stack's subnet, or the one a new stack would get."""
        return rec.subnet if rec else allocate_subnet(self.subnet_pool, self.store.used_subnets())

    def _plan(self, name: str, generation: int, spec: StackSpec, desired: Desired) -> Plan:
        statuses = self.store.statuses(name)
        restarts = {k: RestartRecord(s.restarts, s.last_restart or 0.0)
                    for k, s in statuses.items()}
        counts = {r.name: r.count for r in spec.roles}
        observed = self.agent.observe(name)
        # Failing, not merely starting: a rollout waits for the former, never the latter.
        failing = [f.key for f in observed if f.state is not InstanceState.RUNNING
                   or health_of(f, statuses.get(f.key))[0] is Health.UNHEALTHY]
        return plan_stack(name, generation, counts, desired.requests, observed, restarts,
                          self.clock(), failing)

    def _publish(self, rec: StackRecord, desired: Desired,
                 facts: list[InstanceFacts] | None = None,
                 exclude: Collection[InstanceKey] = ()) -> None:
        observed = {f.key: f for f in (self.agent.observe(rec.name) if facts is None else facts)}
        statuses = self.store.statuses(rec.name)
        ports = []
        for role in rec.spec.roles:
            ready = [
                k for k in sorted(desired.ips)
                if k.role == role.name and k not in exclude
                and _ready(observed.get(k), statuses.get(k), role.health)
            ]
            for p in role.ports:
                backends = tuple(f"{_address(observed[k], desired.ips[k])}:{p.container_port}"
                                 for k in ready)
                ports.append(PublishedPort(p, backends))
        self.agent.publish(rec.name, ports)

    # reads ------------------------------------------------------------------------------

    def instances(self, stack: str | None = None) -> list[tuple[InstanceFacts, Health, str]]:
        facts = sorted(self.agent.observe(stack), key=lambda f: f.key)
        stacks = {r.name: r for r in self.store.stacks()}
        statuses: dict[InstanceKey, InstanceStatus] = {}
        for name in {f.key.stack for f in facts}:
            statuses.update(self.store.statuses(name))
        out = []
        for f in facts:
            rec = stacks.get(f.key.stack)
            has_check = False
            if rec is not None:
                has_check = any(r.name == f.key.role and r.health for r in rec.spec.roles)
            health, message = health_of(f, statuses.get(f.key))
            if not has_check:
                health, message = Health.NONE, ""
            out.append((f, health, message))
        return out


def _ready(f: InstanceFacts | None, st: InstanceStatus | None, health: HealthSpec | None) -> bool:
    if f is None or f.state is not InstanceState.RUNNING:
        return False
    return health is None or health_of(f, st)[0] is Health.HEALTHY


def _address(f: InstanceFacts, ip: str) -> str:
    return f.ip or ip


def _hosts_entries(ips: dict[InstanceKey, str]) -> list[tuple[str, list[str]]]:
    """`web-0` for each instance; `web` for the role (listed on each of its instances)."""
    return [(ip, [k.name, k.role]) for k, ip in sorted(ips.items())]
