"""The Agent the controller talks to: the server's own host and every joined one, as one.

Each call about an instance goes to the host it is placed on (`store/placements.py`); calls
about a stack's network, names and ports go to every host of the stack; images, sources and
release builds stay on the server's own host, whose store the joined hosts fetch layers
from (`ensure_layer`). With no joined host this is the local agent, call for call.

`observe` merges what every host reports. A host that cannot be asked (unreachable, its
agent restarting) reports what it reported last: its instances are not taken for gone, so
nothing is re-created on a hiccup; an action on it fails as AgentOffline and is retried. One
that has not answered since this server started is *blind*: its instances are `unknown`,
and the reconcile leaves them alone until it answers.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from rackfire.control.hosts import HostView, host_views, silent
from rackfire.errors import AgentOffline
from rackfire.model.agent import (
    Agent,
    ExecHandle,
    HostAgent,
    HostCapacity,
    HostInfo,
    ImageSummary,
    InstanceStats,
    JoinedHostAgent,
    PublishedPort,
    ServerHostAgent,
)
from rackfire.model.host import HostFacts
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, HealthSpec, ImageSpec, PortMap, StackSpec
from rackfire.store import Store
from rackfire.store.hosts import HostRecord, HostRegistry
from rackfire.store.placements import Placements

QUIET = 5.0  # seconds a host that could not be reached is not asked again

Connect = Callable[[str, str, str], JoinedHostAgent]
"""(host name, agent address, agent key) -> that host's agent."""


class Fleet:
    def __init__(self, local: ServerHostAgent, store: Store, connect: Connect, *,
                 local_pool: bool = True) -> None:
        self.local = local
        self.local_name = local.info().name
        self.local_pool = local_pool  # the server's own host runs instances too
        self.store = store
        self.registry = HostRegistry(store)
        self.placements = Placements(store)
        self._connect = connect
        self._lock = threading.Lock()
        # name -> its address, key and agent
        self._remotes: dict[str, tuple[str, str, JoinedHostAgent]] = {}
        self._seen: dict[str, list[InstanceFacts]] = {}  # host -> its last observe()
        self._names: dict[str, list[tuple[str, list[str]]]] = {}  # stack -> hosts file
        self._quiet: dict[str, float] = {}  # host -> not asked again before (monotonic)
        self._blind: set[str] = set()  # hosts the last observe knew nothing of

    # the pool -----------------------------------------------------------------------------

    def views(self, stacks: Iterable[StackSpec] = ()) -> list[HostView]:
        """Every host: the server's own first (when it runs instances), then the joined."""
        return host_views(self.local_name, self.local.facts(), self.registry.hosts(), stacks,
                          self.placements.all(), time.time(), local_pool=self.local_pool)

    def underlay_ips(self) -> dict[str, str]:
        """Host -> the IPv4 address VXLAN reaches it at: a joined one's from the address its
        agent reports, the server's own (when it runs instances) the route toward those."""
        ips = {h.name: ip for h in self.registry.hosts() if (ip := _ip_of(h.address))}
        if ips and self.local_pool and (mine := _route_source(next(iter(ips.values())))):
            ips[self.local_name] = mine
        return ips

    def multi_host(self) -> bool:
        """Instances may run elsewhere than on the server's own host."""
        return not self.local_pool or bool(self.registry.hosts())

    def agent_for(self, host: str) -> HostAgent:
        if host == self.local_name:
            return self.local
        return self.joined_agent(host)

    def joined_agent(self, host: str) -> JoinedHostAgent:
        """The agent of a joined host (not the server's own)."""
        return self._remote(host, next((h for h in self.registry.hosts() if h.name == host),
                                       None))

    def _remote(self, host: str, rec: HostRecord | None) -> JoinedHostAgent:
        """The agent of a joined host, as its record says to reach it."""
        with self._lock:
            known = self._remotes.get(host)
        if rec is None:  # removed: to a fan-out as good as offline
            raise AgentOffline(f"host {host} is no longer known", hint="see `rackfire hosts`")
        if not rec.address:
            raise AgentOffline(f"host {host} has not reported its agent's address yet")
        if known is None or known[:2] != (rec.address, rec.agent_key):
            known = (rec.address, rec.agent_key, self._connect(host, rec.address,
                                                               rec.agent_key))
            with self._lock:
                self._remotes[host] = known
        return known[2]

    def host_of(self, key: InstanceKey) -> str:
        return self.placements.host_of(key) or self.local_name

    def _hosts(self) -> list[str]:
        """Every host that may hold instances: the server's own, and the joined ones."""
        return [self.local_name] + [h.name for h in self.registry.hosts()]

    def _stack_hosts(self, stack: str) -> list[str]:
        """The hosts the stack's network, names and ports are on: where it is placed, and
        the server's own when it runs instances (a stack with none placed yet)."""
        placed = set(self.placements.of_stack(stack).values())
        placed |= {f.host for facts in self._last().values() for f in facts
                   if f.key.stack == stack}
        if self.local_pool and not placed:
            placed.add(self.local_name)
        return sorted(placed)

    # instances ----------------------------------------------------------------------------

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        placed = self.placements.all()
        joined = self.registry.hosts()
        records = {h.name: h for h in joined}
        hosts = [self.local_name, *records]
        silent_ = {h.name for h in joined if silent(h, time.time())}
        now = time.monotonic()

        def ask(host: str) -> list[InstanceFacts] | None:
            with self._lock:
                # It failed just now and sends no heartbeats: not every call waits for it.
                # (One that heartbeats again, restarted, is asked at once.)
                if host in silent_ and now < self._quiet.get(host, 0.0):
                    return None
            try:
                agent = self.local if host == self.local_name else self._remote(
                    host, records.get(host))
                return agent.observe(stack)
            except AgentOffline:
                with self._lock:
                    self._quiet[host] = time.monotonic() + QUIET
                return None

        if len(hosts) > 2:  # side by side: each joined host is a round trip
            with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as workers:
                answers = list(workers.map(ask, hosts))
        else:
            answers = [ask(h) for h in hosts]
        by_key: dict[InstanceKey, InstanceFacts] = {}
        blind = set()
        for host, facts in zip(hosts, answers, strict=True):
            with self._lock:
                if facts is not None:
                    self._quiet.pop(host, None)
                    old = self._seen.get(host, [])
                    self._seen[host] = facts if stack is None else [
                        f for f in old if f.key.stack != stack] + facts
                elif host in self._seen:
                    facts = self._seen[host]
                else:
                    blind.add(host)
                    facts = []
            for f in facts:
                if stack is not None and f.key.stack != stack:
                    continue
                # Mid-migration an instance exists on two hosts: its placement is the one.
                if f.key not in by_key or placed.get(f.key) == host:
                    by_key[f.key] = f
        with self._lock:
            self._blind = blind
        return list(by_key.values())

    def heard_from(self, *hosts: str) -> None:
        """A call to these hosts just went through: the next observe asks them again."""
        with self._lock:
            for host in hosts:
                self._quiet.pop(host, None)

    def unknown(self, stack: str) -> set[InstanceKey]:
        """Instances placed on a host that could not be asked and never answered this server
        (just restarted): nothing is known of them, so nothing may be done to them."""
        with self._lock:
            blind = set(self._blind)
        return {k for k, h in self.placements.of_stack(stack).items() if h in blind}

    def _last(self) -> dict[str, list[InstanceFacts]]:
        """What each host reported last (a copy: observers run in other threads)."""
        with self._lock:
            return dict(self._seen)

    def strays(self, stack: str) -> list[tuple[InstanceKey, str]]:
        """Stopped copies of the stack's instances, as last observed, on a host other than
        their placement: what an interrupted migration left behind. A running one is never
        taken for a leftover (it may be what a lost host still runs: issue 7's fencing)."""
        placed = self.placements.of_stack(stack)
        return sorted((f.key, host) for host, facts in self._last().items() for f in facts
                      if f.key.stack == stack and placed.get(f.key, host) != host
                      and f.state is not InstanceState.RUNNING)

    def create(self, req: InstanceRequest) -> None:
        host = self.host_of(req.key)
        agent = self.agent_for(host)
        self.prepare(host, agent, req)
        agent.create(req)

    def reconfigure(self, req: InstanceRequest) -> None:
        host = self.host_of(req.key)
        agent = self.agent_for(host)
        self.prepare(host, agent, req)
        agent.reconfigure(req)

    def restart(self, req: InstanceRequest) -> None:
        host = self.host_of(req.key)
        agent = self.agent_for(host)
        self.prepare(host, agent, req)
        agent.restart(req)

    def prepare(self, host: str, agent: Agent, req: InstanceRequest) -> None:
        """What an instance needs on its host before it starts there: the stack's network
        and names, and its image and release layers."""
        if host != self.local_name:
            for digest in (req.image_digest, req.app_digest):
                if digest:
                    agent.ensure_layer(digest)
        agent.ensure_network(self._network(req.network, host))
        if req.key.stack in self._names:  # (after a restart, _publish sets them first)
            agent.set_hosts(req.key.stack, self._names[req.key.stack])

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.agent_for(self.host_of(key)).destroy(key, stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.agent_for(self.host_of(key)).stop(key, stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        self.agent_for(self.host_of(req.key)).resize(req)

    def check_resize(self, req: InstanceRequest) -> None:
        self.agent_for(self.host_of(req.key)).check_resize(req)

    def reload(self, req: InstanceRequest) -> None:
        self.agent_for(self.host_of(req.key)).reload(req)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        """On its placement; while a migration starts it on its target, there."""
        starting = next((m.target for m in self.placements.migrations(key.stack)
                         if m.key == key and m.step == "starting"), None)
        return self.agent_for(starting or self.host_of(key)).probe(key, ip, health)

    def stats(self, stack: str) -> list[InstanceStats]:
        out: list[InstanceStats] = []
        for host in self._stack_hosts(stack):
            try:
                out += self.agent_for(host).stats(stack)
            except AgentOffline:
                continue
        return sorted(out, key=lambda s: s.key)

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        return self.agent_for(self.host_of(key)).exec(key, argv, tty)

    def log_path(self, key: InstanceKey) -> str:
        return self.agent_for(self.host_of(key)).log_path(key)

    def discard_disks(self, key: InstanceKey) -> None:
        self.agent_for(self.host_of(key)).discard_disks(key)

    def set_aside(self, key: InstanceKey) -> None:
        self.agent_for(self.host_of(key)).set_aside(key)

    # the stack's network, names and ports -------------------------------------------------

    def _network(self, net: NetworkConfig, host: str) -> NetworkConfig:
        """The stack's network as `host` sees it: across hosts, with the stack's VNI, the
        host's own underlay address and every host as a peer (the same list everywhere)."""
        ips = self.underlay_ips() if self.multi_host() else {}
        if not ips:
            return net
        return replace(net, vni=self.placements.vni(net.stack), local_ip=ips.get(host, ""),
                       peers=tuple(sorted(ips.values())))

    def ensure_network(self, net: NetworkConfig) -> None:
        for host in self._stack_hosts(net.stack):
            try:
                self.agent_for(host).ensure_network(self._network(net, host))
            except AgentOffline:
                continue  # an instance gets it before it starts there (prepare)

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        """The same names everywhere: instances reach each other across hosts."""
        self._names[stack] = entries
        for host in self._stack_hosts(stack):
            try:
                self.agent_for(host).set_hosts(stack, entries)
            except AgentOffline:
                continue  # it gets them before its next instance starts (prepare)

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        """Each host publishes the ports to its own instances only: a host reaches only
        those through the stack's bridge (net/vxlan.py)."""
        if not self.multi_host():
            self.local.publish(stack, ports)
            return
        host_of_ip = {f.ip: f.host for facts in self._last().values() for f in facts
                      if f.key.stack == stack and f.ip}
        for host in self._stack_hosts(stack):
            mine = [PublishedPort(p.port, tuple(b for b in p.backends
                                                if host_of_ip.get(b.rpartition(":")[0]) == host))
                    for p in ports]
            try:
                self.agent_for(host).publish(stack, mine)
            except AgentOffline:
                continue

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        """Ports taken on any host the stack may land on."""
        busy: list[PortMap] = []
        hosts = [self.local_name] if self.local_pool else []
        for host in hosts + [h.name for h in self.registry.hosts() if h.address]:
            try:
                found = self.agent_for(host).busy_ports(stack, ports)
            except AgentOffline:
                continue
            busy += [p for p in found if p not in busy]
        return busy

    def teardown_stack(self, stack: str, keep_data: bool = False) -> None:
        """On every host: where the stack ran once (a bridge stays after its last instance
        moved away) too. A host it is placed on must answer; others may be away."""
        must = set(self._stack_hosts(stack))
        for host in self._hosts():
            try:
                agent = self.agent_for(host)
                agent.teardown_stack(stack, keep_data)
                if host != self.local_name:
                    agent.collect_layers()
            except AgentOffline:
                if host in must:
                    raise
        self._names.pop(stack, None)

    # the server's own host ----------------------------------------------------------------

    def info(self) -> HostInfo:
        return self.local.info()

    def facts(self, interval: float = 5.0) -> HostFacts:
        return self.local.facts(interval)

    def facts_of(self, host: str) -> HostFacts:
        """What `host` last reported of itself (the server's own: now)."""
        if host == self.local_name:
            return self.local.facts()
        rec = next((h for h in self.registry.hosts() if h.name == host), None)
        if rec is None:
            raise AgentOffline(f"host {host} is no longer known", hint="see `rackfire hosts`")
        return rec.facts

    def capacity(self) -> HostCapacity:
        return self.local.capacity()

    def ensure_layer(self, digest: str) -> None:
        self.local.ensure_layer(digest)

    def collect_layers(self) -> list[str]:
        return self.local.collect_layers()

    def store_source(self, tarball: str) -> str:
        return self.local.store_source(tarball)

    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary:
        return self.local.ensure_release(source_digest, image_digest)

    def ensure_image(self, spec: ImageSpec) -> ImageSummary:
        return self.local.ensure_image(spec)

    def check_image(self, spec: ImageSpec) -> None:
        self.local.check_image(spec)

    def image(self, name: str) -> ImageSummary | None:
        return self.local.image(name)

    def images(self) -> list[ImageSummary]:
        return self.local.images()

    def remove_image(self, name: str) -> bool:
        return self.local.remove_image(name)

    def import_image(self, name: str, tarball: str) -> ImageSummary:
        return self.local.import_image(name, tarball)


def _route_source(peer_ip: str) -> str:
    """This machine's address toward `peer_ip` (no packet is sent: it only picks a route);
    "" when there is none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer_ip, 9))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def _ip_of(address: str) -> str:
    """The IPv4 address of an agent's HOST:PORT, for VXLAN; "" if it is none (VXLAN here
    runs over IPv4 only)."""
    host = address.rpartition(":")[0]
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return ""
