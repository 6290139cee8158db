"""The hosts, as a directory: name -> its link (the call table through its transport), its
state and its lease. The server's own host is one entry like any other, served in-process
(agent/inprocess.py); a joined one over HTTP (agent/remote.py), its link made from what its
record says. Each call about an instance goes to the host it is placed on
(`store/placements.py`); calls about a stack's network, names and ports go to every host of
the stack. Images, app sources and release builds are the image service's (`images`): the
server's own store, which joined hosts fetch layers from (`ensure_layer`).

What runs is read from the observed cache (control/observed.py), which every host's
heartbeat fills (the server's own every BEAT seconds, in-process). A host is asked directly
only when the cache does not yet reflect the controller's own last call there (at most once
per such call). A host that cannot be asked keeps what it reported last: its instances are
not taken for gone, so nothing is re-created on a hiccup; an action on it fails as
AgentOffline and is retried. One that has not answered since this server started is
*blind*: its instances are `unknown`, and the reconcile leaves them alone until it answers.

Each joined host holds a lease, renewed by its heartbeats (control/hosts.py `Liveness`: a
few missed beats); one whose lease lapsed, or that an operator fenced, is gone, and the
instances placed on it are `lost` until control/failover.py places them again. A copy whose
incarnation is older than its placement's (a replaced one, on a host that came back) is not
the instance: observe leaves it out, `strays` lists it for removal, and the host's next
heartbeat answer names it (`replaced_on`) so the host destroys it at once.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from rackfire.control.hosts import DEFAULT_LIVENESS, HostView, Lapses, Liveness, host_views
from rackfire.control.observed import ObservedCache
from rackfire.errors import AgentOffline, PrereqError
from rackfire.model.agent import (
    HostCapacity,
    HostInfo,
    HostLink,
    ImageService,
    InstanceStats,
    Observed,
    PublishedPort,
)
from rackfire.model.host import HostFacts
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.records import HostRecord
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, HealthSpec, PortMap, StackSpec
from rackfire.plan.ipam import allocate_host_ips
from rackfire.store import StateStore

log = logging.getLogger("rackfire.fleet")
QUIET = 5.0  # seconds a host that could not be reached is not asked again
# A network a host was given this recently is not given again before each instance's start:
# a pass ensures it on every host first, and 50 creates would redo it 50 times (bridge,
# mesh port, an `nft` listing: ~8 ms each, under one lock).
ENSURED_FOR = 10.0
BEAT = 0.5  # seconds between the server's own host's in-process heartbeats

Connect = Callable[[str, str, str, Callable[[], int], Callable[[], bool]], HostLink]
"""(host name, agent address, agent key, its epoch, whether it is gone) -> its link."""


class Fleet:
    def __init__(self, home: HostLink, images: ImageService, store: StateStore, connect: Connect,
                 *, local_pool: bool = True, liveness: Liveness = DEFAULT_LIVENESS) -> None:
        self.home = home  # the server's own host, in-process
        self.server_host = home.info().name
        self.images = images
        self.local_pool = local_pool  # the server's own host runs instances too
        self.store = store
        self.liveness = liveness
        self.registry = store.hosts
        self.placements = store.placements
        self.observed = ObservedCache()
        self.lapses = Lapses()  # what the links' `gone` reads; the detector keeps it
        self._connect = connect
        self._lock = threading.Lock()
        # name -> its address, key and link
        self._remotes: dict[str, tuple[str, str, HostLink]] = {}
        self._facts: dict[str, HostFacts] = {self.server_host: home.facts()}
        self._names: dict[str, list[tuple[str, list[str]]]] = {}  # stack -> hosts file
        # (host, stack) -> the network it was last given and when (monotonic), and the
        # hosts file it last got: what `prepare` need not send again
        self._networks: dict[tuple[str, str], tuple[NetworkConfig, float]] = {}
        self._hosts_sent: dict[tuple[str, str], tuple[list[tuple[str, list[str]]], float]] = {}
        self._meshed: dict[str, bool] = {}  # stack -> its hosts have their own addresses
        self._quiet: dict[str, float] = {}  # host -> not asked again before (monotonic)
        self._blind: set[str] = set()  # hosts the last observe knew nothing of

    # the directory ------------------------------------------------------------------------

    def link(self, host: str) -> HostLink:
        """The host's link, whichever transport carries it."""
        if host == self.server_host:
            return self.home
        return self._remote(host, self._record(host))

    def _record(self, host: str) -> HostRecord | None:
        return next((h for h in self.registry.hosts() if h.name == host), None)

    def _remote(self, host: str, rec: HostRecord | None) -> HostLink:
        """The link of a joined host, as its record says to reach it."""
        with self._lock:
            known = self._remotes.get(host)
        if rec is None:  # removed: to a fan-out as good as offline
            raise AgentOffline(f"host {host} is no longer known", hint="see `rackfire hosts`")
        if not rec.address:
            raise AgentOffline(f"host {host} has not reported its agent's address yet")
        if known is None or known[:2] != (rec.address, rec.agent_key):
            link = self._connect(host, rec.address, rec.agent_key,
                                 lambda: self.registry.epoch(host),
                                 lambda: self.lapses.gone(host))
            known = (rec.address, rec.agent_key, link)
            with self._lock:
                self._remotes[host] = known
        return known[2]

    def heard(self, host: str, observed: Observed | None, facts: HostFacts | None = None,
              *, unchanged: bool = False) -> None:
        """A heartbeat: what the host says of its instances (or that they are as it last
        said) and of itself, now."""
        if observed is not None:
            self.observed.put(host, observed)
        elif unchanged:
            self.observed.confirm(host)
        if facts is not None:
            with self._lock:
                self._facts[host] = facts
        self.heard_from(host)

    def beat_home(self, stop: threading.Event) -> None:
        """The server's own host's heartbeat, in-process: no lease to renew (it lives as
        long as this process), its facts for the cache."""
        while not stop.wait(BEAT):
            try:
                self.heard(self.server_host, self.home.observed(), self.home.facts())
            except Exception:
                log.exception("the server's own host's heartbeat failed; the next one "
                              "tries again")

    def views(self, stacks: Iterable[StackSpec] = ()) -> list[HostView]:
        """Every host: the server's own first (when it runs instances), then the joined."""
        return host_views(self.server_host, self.facts_of(self.server_host),
                          self.registry.hosts(), stacks, self.placements.all(), time.time(),
                          local_pool=self.local_pool, liveness=self.liveness,
                          observed_at={h: self.observed.observed_at(h) for h in self._hosts()})

    def underlay_ips(self) -> dict[str, str]:
        """Host -> the IPv4 address VXLAN reaches it at: a joined one's from the address its
        agent reports, the server's own (when it runs instances) the route toward those."""
        ips = {h.name: ip for h in self.registry.hosts() if (ip := _ip_of(h.address))}
        if ips and self.local_pool and (mine := _route_source(next(iter(ips.values())))):
            ips[self.server_host] = mine
        return ips

    def multi_host(self) -> bool:
        """Instances may run elsewhere than on the server's own host."""
        return not self.local_pool or bool(self.registry.hosts())

    def sole_host(self) -> str | None:
        """The one host of the pool, when it has only one that is not joined (the server's
        own: nothing to choose, nothing moves); None otherwise."""
        return None if self.multi_host() else self.server_host

    def host_of(self, key: InstanceKey) -> str:
        return self.placements.host_of(key) or self.server_host

    def _hosts(self) -> list[str]:
        """Every host that may hold instances: the server's own, and the joined ones."""
        return [self.server_host] + [h.name for h in self.registry.hosts()]

    def holding(self, stack: str) -> set[str]:
        """The hosts the stack is placed on or was last seen on."""
        placed = set(self.placements.of_stack(stack).values())
        return placed | {f.host for f in self.observed_facts() if f.key.stack == stack}

    def _stack_hosts(self, stack: str) -> list[str]:
        """The hosts the stack's network, names and ports are on: where it is placed, and
        the server's own when it runs instances (a stack with none placed yet)."""
        placed = self.holding(stack)
        if self.local_pool and not placed:
            placed.add(self.server_host)
        return sorted(placed)

    # instances ----------------------------------------------------------------------------

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        """What runs (of `stack`), from the cache; a host whose cached facts predate the
        controller's last call there is asked itself."""
        placed = self.placements.all()
        runs = self.placements.incarnations(stack)
        joined = self.registry.hosts()
        records = {h.name: h for h in joined}
        hosts = [self.server_host, *records]
        silent_ = {h.name for h in joined if self.liveness.gone(h, time.time())}
        now = time.monotonic()

        def ask(host: str) -> list[InstanceFacts] | None:
            try:
                link = self.home if host == self.server_host else self._remote(
                    host, records.get(host))
                if self.observed.fresh(host, stack, link.done()):
                    return self.observed.facts(host, stack)
                with self._lock:
                    # It failed just now and sends no heartbeats: not every call waits for
                    # it. (One that heartbeats again, restarted, is asked at once.)
                    if host in silent_ and now < self._quiet.get(host, 0.0):
                        return self.observed.facts(host, stack)
                got = link.observed(stack)
            except AgentOffline:
                with self._lock:
                    self._quiet[host] = time.monotonic() + QUIET
                return self.observed.facts(host, stack)
            self.observed.put(host, got)
            with self._lock:
                self._quiet.pop(host, None)
            return list(got.facts)

        if len(hosts) > 2:  # side by side: each joined host may be a round trip
            with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as workers:
                answers = list(workers.map(ask, hosts))
        else:
            answers = [ask(h) for h in hosts]
        by_key: dict[InstanceKey, InstanceFacts] = {}
        blind = set()
        for host, facts in zip(hosts, answers, strict=True):
            if facts is None:
                blind.add(host)
                continue
            for f in facts:
                if replaced(f, placed.get(f.key), runs.get(f.key, 0)):
                    continue  # not the instance (`strays`)
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

    def lost(self, stack: str | None = None) -> dict[InstanceKey, str]:
        """Instances placed on a host that is gone (its lease lapsed, or fenced, or it was
        removed), and that host."""
        hosts = self.registry.hosts()
        known = {h.name for h in hosts} | {self.server_host}
        gone = set(self._gone(hosts))
        placed = self.placements.of_stack(stack) if stack else self.placements.all()
        return {k: h for k, h in placed.items() if h in gone or h not in known}

    def gone(self) -> dict[str, HostRecord]:
        """The joined hosts whose lease lapsed or that were fenced."""
        return self._gone(self.registry.hosts())

    def _gone(self, hosts: list[HostRecord]) -> dict[str, HostRecord]:
        now = time.time()
        return {h.name: h for h in hosts if self.liveness.gone(h, now)}

    def replaced_on(self, host: str) -> list[tuple[InstanceKey, int]]:
        """What `host` last told it runs that was replaced since (the instance runs on as
        a later incarnation), with that incarnation: the host destroys those copies."""
        runs, placed = self.placements.incarnations(), self.placements.all()
        return sorted((f.key, runs[f.key]) for f in self.observed.facts(host) or []
                      if replaced(f, placed.get(f.key), runs.get(f.key, 0)))

    def observed_facts(self) -> list[InstanceFacts]:
        """Every instance as its host last told (the cache; nothing is asked)."""
        return [f for host in self._hosts() for f in self.observed.facts(host) or []]

    def strays(self, stack: str) -> list[tuple[InstanceKey, str]]:
        """Copies of the stack's instances, as last observed, that are not the instance:
        a stopped one on a host other than its placement (what an interrupted migration
        left behind), and any of an older incarnation than its placement's (replaced while
        its host was lost). Another running copy is not taken for a leftover: it may be
        mid-migration."""
        placed = self.placements.of_stack(stack)
        runs = self.placements.incarnations(stack)
        return sorted((f.key, f.host) for f in self.observed_facts()
                      if f.key.stack == stack and (
                          replaced(f, placed.get(f.key), runs.get(f.key, 0))
                          or (placed.get(f.key, f.host) != f.host
                              and f.state is not InstanceState.RUNNING)))

    def create(self, req: InstanceRequest) -> None:
        host, link, req = self._run_of(req)
        self.prepare(host, link, req)
        link.create(req)

    def reconfigure(self, req: InstanceRequest) -> None:
        host, link, req = self._run_of(req)
        self.prepare(host, link, req)
        link.reconfigure(req)

    def restart(self, req: InstanceRequest) -> None:
        host, link, req = self._run_of(req)
        self.prepare(host, link, req)
        link.restart(req)

    def _run_of(self, req: InstanceRequest) -> tuple[str, HostLink, InstanceRequest]:
        """The host the instance is placed on, its link, and the request as the run its
        placement issued (a host refuses an older one)."""
        host = self.host_of(req.key)
        return host, self.link(host), replace(req, incarnation=self.placements.incarnation(
            req.key))

    def prepare(self, host: str, link: HostLink, req: InstanceRequest) -> None:
        """What an instance needs on its host before it starts there: its image and release
        layers (the server's own has them: its store is where they are fetched from), the
        stack's network and names."""
        for digest in (req.image_digest, req.app_digest):
            if digest:
                link.ensure_layer(digest)
        net, stack = self._network(req.network, host), req.key.stack
        if not _recent(self._networks.get((host, stack)), net):
            self._ensure_network(host, link, net)
        names = self._names.get(stack)  # (after a restart, _publish sets them first)
        if names is not None and not _recent(self._hosts_sent.get((host, stack)), names):
            link.set_hosts(stack, names)
            self._hosts_sent[(host, stack)] = (names, time.monotonic())

    def _ensure_network(self, host: str, link: HostLink, net: NetworkConfig) -> None:
        self._networks.pop((host, net.stack), None)  # not known given until it is
        link.ensure_network(net)
        self._networks[(host, net.stack)] = (net, time.monotonic())

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.link(self.host_of(key)).destroy(key, stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.link(self.host_of(key)).stop(key, stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        self.link(self.host_of(req.key)).resize(req)

    def check_resize(self, req: InstanceRequest) -> None:
        self.link(self.host_of(req.key)).check_resize(req)

    def reload(self, req: InstanceRequest) -> None:
        self.link(self.host_of(req.key)).reload(req)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        """On its placement; while a migration starts it on its target, there."""
        starting = next((m.target for m in self.placements.migrations(key.stack)
                         if m.key == key and m.step == "starting"), None)
        return self.link(starting or self.host_of(key)).probe(key, ip, health)

    def http_get(self, key: InstanceKey, url: str) -> str:
        return self.link(self.host_of(key)).http_get(key, url)

    def log_tail(self, key: InstanceKey, lines: int) -> str:
        return self.link(self.host_of(key)).log_tail(key, lines)

    def stats(self, stack: str) -> list[InstanceStats]:
        out: list[InstanceStats] = []
        for host in self._stack_hosts(stack):
            try:
                out += self.link(host).stats(stack)
            except AgentOffline:
                continue
        return sorted(out, key=lambda s: s.key)

    def discard_disks(self, key: InstanceKey) -> None:
        self.link(self.host_of(key)).discard_disks(key)

    def set_aside(self, key: InstanceKey) -> None:
        self.link(self.host_of(key)).set_aside(key)

    def stage_snapshot(self, key: InstanceKey, stack: str, name: str, source: str) -> None:
        self.link(self.host_of(key)).stage_snapshot(key, stack, name, source)

    def stage_replica(self, key: InstanceKey, disk_size: int) -> str:
        return self.link(self.host_of(key)).stage_replica(key, disk_size)

    def drop_replica(self, key: InstanceKey) -> None:
        self.link(self.host_of(key)).drop_replica(key)

    # the stack's network, names and ports -------------------------------------------------

    def _network(self, net: NetworkConfig, host: str) -> NetworkConfig:
        """The stack's network as `host` sees it: across hosts, with the stack's VNI, the
        host's own underlay address and every host as a peer (the same list everywhere)."""
        ips = self.underlay_ips() if self.multi_host() else {}
        if not ips:
            return net
        return replace(net, vni=self.placements.vni(net.stack), local_ip=ips.get(host, ""),
                       peers=tuple(sorted(ips.values())),
                       host_ip=self._host_ips(net.stack, net.subnet, ips).get(host, ""))

    def _host_ips(self, stack: str, subnet: str, underlay: dict[str, str]) -> dict[str, str]:
        """Host -> its own address in the stack's subnet (the routing mesh, net/mesh.py):
        the top ones, by the pool's hosts in name order, none an instance holds now. {} if
        the subnet has no room (publish then keeps each host to its own instances)."""
        try:
            got = allocate_host_ips(subnet, underlay, self.store.ips(stack).values(), {})
        except PrereqError:
            got = {}
        self._meshed[stack] = bool(got)
        return got

    def ensure_network(self, net: NetworkConfig) -> None:
        for host in self._stack_hosts(net.stack):
            try:
                self._ensure_network(host, self.link(host), self._network(net, host))
            except AgentOffline:
                continue  # an instance gets it before it starts there (prepare)

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        """The same names everywhere: instances reach each other across hosts."""
        self._names[stack] = entries
        for host in self._stack_hosts(stack):
            try:
                self._hosts_sent.pop((host, stack), None)
                self.link(host).set_hosts(stack, entries)
                self._hosts_sent[(host, stack)] = (entries, time.monotonic())
            except AgentOffline:
                continue  # it gets them before its next instance starts (prepare)

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        """Every host of the stack publishes the ports to all its instances, on any host,
        through its own address in the subnet (the routing mesh: ensure_network gave it).
        Without one (a full subnet, a network not ensured since the server started), each
        host to its own instances only: from the anycast gateway a host reaches only those
        (net/vxlan.py). A stack on one host: all of them."""
        hosts = self._stack_hosts(stack)
        if len(hosts) > 1 and self._meshed.get(stack):
            for host in hosts:
                try:
                    self.link(host).publish(stack, ports)
                except AgentOffline:
                    continue
            return
        placed, runs = self.placements.of_stack(stack), self.placements.incarnations(stack)
        host_of_ip = {f.ip: f.host for f in self.observed_facts()  # (a replaced copy has
                      if f.key.stack == stack and f.ip  # its replacement's IP)
                      and not replaced(f, placed.get(f.key), runs.get(f.key, 0))}
        for host in hosts:
            mine = ports if len(hosts) == 1 else [
                PublishedPort(p.port, tuple(b for b in p.backends
                                            if host_of_ip.get(b.rpartition(":")[0]) == host))
                for p in ports]
            try:
                self.link(host).publish(stack, mine)
            except AgentOffline:
                continue

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        """Ports taken on any host the stack may land on."""
        busy: list[PortMap] = []
        hosts = [self.server_host] if self.local_pool else []
        for host in hosts + [h.name for h in self.registry.hosts() if h.address]:
            try:
                found = self.link(host).busy_ports(stack, ports)
            except AgentOffline:
                continue
            busy += [p for p in found if p not in busy]
        return busy

    def teardown_stack(self, stack: str, keep_data: bool = False,
                       skip: Collection[str] = ()) -> None:
        """On every host but `skip`: where the stack ran once (a bridge stays after its
        last instance moved away) too. A host it is placed on must answer; others may be
        away. Fetched layers no instance uses any more go too (the server's own store keeps
        its own)."""
        must = set(self._stack_hosts(stack))
        for host in [h for h in self._hosts() if h not in skip]:
            try:
                link = self.link(host)
                link.teardown_stack(stack, keep_data)
                link.collect_layers()
            except AgentOffline:
                if host in must:
                    raise
        self._names.pop(stack, None)
        self._meshed.pop(stack, None)
        for key in [k for k in (*self._networks, *self._hosts_sent) if k[1] == stack]:
            self._networks.pop(key, None)
            self._hosts_sent.pop(key, None)

    # what hosts are -----------------------------------------------------------------------

    def info(self) -> HostInfo:
        """The server's own host: the runtimes a stack gets by default."""
        return self.home.info()

    def capacity(self) -> HostCapacity:
        return self.home.capacity()

    def facts_of(self, host: str) -> HostFacts:
        """What `host` last reported of itself."""
        with self._lock:
            known = self._facts.get(host)
        if known is not None:
            return known
        rec = self._record(host)
        if rec is None:
            raise AgentOffline(f"host {host} is no longer known", hint="see `rackfire hosts`")
        return rec.facts


def replaced(f: InstanceFacts, placed_on: str | None, run: int) -> bool:
    """The copy is of an older run than its placement's: replaced (one made before runs
    were numbered, 0, only when it is not where it is placed)."""
    return f.incarnation < run and (f.incarnation > 0 or placed_on != f.host)


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


def _recent(given: tuple[object, float] | None, wanted: object) -> bool:
    """Whether `wanted` is what was given, less than ENSURED_FOR ago."""
    return given is not None and given[0] == wanted and \
        time.monotonic() - given[1] <= ENSURED_FOR
