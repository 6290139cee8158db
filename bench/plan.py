"""Planning at scale: what `rackfire plan` computes for a stack of 10,000 instances on 1,000
hosts whose observed state differs from the file in 1% of the instances."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from bench.report import Result, Target
from rackfire.control.hosts import asks_of
from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host
from rackfire.model.instance import (
    InstanceFacts,
    InstanceKey,
    InstanceRequest,
    InstanceState,
    NetworkConfig,
)
from rackfire.model.stack import RuntimeKind
from rackfire.plan import Plan, plan_stack, render_stack
from rackfire.plan.ipam import allocate_ips, gateway_of, subnet_prefix
from rackfire.plan.render import role_keys
from rackfire.schedule import Placement, schedule
from rackfire.spec import load_stack_text

G, M = 1 << 30, 1 << 20
HOSTS, TARGET = 1_000, 1.0  # seconds
T = TypeVar("T")

# 10,000 instances: a fleet of web servers behind lbs that list them all in their config.
STACK = """\
stack: big
images: {base: {from: host}}
roles:
  web:
    image: base
    count: 6000
    command: [python3, -m, http.server, "8000", --directory, /srv]
    resources: {cpu: 0.25, memory: 256M, disk: 1G}
    files:
      /srv/index.html: "hello from {{ instance.name }} at {{ instance.ip }}\\n"
  app:
    image: base
    count: 3500
    uses: [mem]
    command: [sleep, infinity]
    resources: {cpu: 0.5, memory: 512M, disk: 2G}
    env: {MODE: production}
    files:
      /etc/app/mem: "{% for m in roles.mem.instances %}{{ m.ip }}:11211\\n{% endfor %}"
  mem:
    image: base
    count: 496
    command: [sleep, infinity]
    resources: {cpu: 0.5, memory: 1G, disk: 1G}
  lb:
    image: base
    count: 4
    uses: [web]
    command: [sleep, infinity]
    resources: {cpu: 1, memory: 1G, disk: 1G}
    files:
      /etc/haproxy/web.cfg: |
        backend web
        {% for w in roles.web.instances %}  server {{ w.name }} {{ w.ip }}:8000 check
        {% endfor %}
"""


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """CPU seconds of this process: the plan is single-threaded work, and on a shared
    machine the wall clock also counts the time others held the cores."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


class Scenario:
    """The stack as it runs: every instance placed and observed, then 1% drifted."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a seeded, reproducible drift)
        self.spec = load_stack_text(STACK, "big.yaml")
        keys = [k for r in self.spec.roles for k in role_keys("big", r, surge=True)]
        subnet = f"10.64.0.0/{subnet_prefix(len(keys))}"
        self.network = NetworkConfig("big", subnet, gateway_of(subnet),
                                     int(subnet.rsplit("/", 1)[1]))
        self.ips = dict(zip(keys, allocate_ips(subnet, [], len(keys)), strict=True))
        self.digests = {"base": "b" * 64}
        self.hosts = [Host(f"host-{i:04}", HostCapacity(32.0, 128 * G, 2048 * G),
                           labels=(("rack", f"rack-{i // 40:02}"),)) for i in range(HOSTS)]
        wanted = asks_of([self.spec])
        self.placed = schedule(self.hosts, {}, wanted).assignments()
        desired = [r for r in self.render() if not r.surge]
        facts = [InstanceFacts(
            key=r.key, state=InstanceState.RUNNING, runtime=r.runtime,
            host=self.placed[r.key], ip=r.ip, spec_hash=r.spec_hash, spec_fields=r.spec_fields,
            config_hash=r.config_hash, files_layout=r.files_layout, resources=r.resources,
            started_at=1000.0, pid=1) for r in desired]
        drift = rnd.sample(range(len(facts)), len(facts) // 100)
        self.missing: set[InstanceKey] = set()
        for n, i in enumerate(drift):  # a third gone, a third exited, a third changed
            if n % 3 == 0:
                self.missing.add(facts[i].key)
            elif n % 3 == 1:
                facts[i] = replace(facts[i], state=InstanceState.STOPPED, exit_code=1)
            else:
                facts[i] = replace(facts[i], config_hash="changed by hand")
        self.observed = [f for f in facts if f.key not in self.missing]
        for k in self.missing:  # the host it was on died: it is placed again
            del self.placed[k]

    def render(self) -> list[InstanceRequest]:
        return render_stack(self.spec, self.ips, self.digests, self.network,
                            RuntimeKind.CONTAINER)

    def place(self) -> Placement:
        return schedule(self.hosts, self.placed, asks_of([self.spec]))

    def plan(self, desired: list[InstanceRequest]) -> Plan:
        return plan_stack("big", 2, self.spec, desired, self.observed, {}, 2000.0)


def run(runs: int) -> Result:
    r = Result("plan", "Planning at scale", f"""\
The work behind `rackfire plan` for one stack of 10,000 instances (web 6,000, app 3,500,
mem 496, lb 4; the lbs' config lists every web instance, each app's every mem) on
{HOSTS:,} hosts (racks of 40), all placed and running, against an observed state that
differs in 1% of the instances: a third missing (their host died: placed again), a third
exited, a third with a config changed by hand. Timed in-process, each step as the
controller calls it: parsing and validating the stack file; rendering every instance's
request (templates, digests); the scheduler over the 1,000 hosts (9,966 kept where they
are, 34 placed anew); the planner (desired vs observed, the actions). Not included: the
API round trip and the SQLite reads, and asking the hosts what runs (`observe`: one call
per host, side by side), which a real `plan` also does. Times are CPU seconds of the
process (the work is single-threaded); the wall clock of the same runs is shown too.""")
    parse, render, place, planning, total, wall = [], [], [], [], [], []
    for i in range(runs):
        s = Scenario(i)
        w0 = time.perf_counter()
        _, t_parse = timed(lambda: load_stack_text(STACK, "big.yaml"))
        desired, t_render = timed(s.render)
        placement, t_place = timed(s.place)
        plan, t_plan = timed(lambda: s.plan(desired))  # noqa: B023 (called at once)
        wall.append(time.perf_counter() - w0)
        new = [d for d in placement.decisions if not d.kept]
        if len(new) != len(s.missing) or not placement.ok:
            raise RuntimeError(f"{len(new)} placed anew, {len(s.missing)} expected")
        kinds: dict[str, int] = {}
        for a in plan.actions:
            kinds[a.kind] = kinds.get(a.kind, 0) + 1
        parse.append(t_parse)
        render.append(t_render)
        place.append(t_place)
        planning.append(t_plan)
        total.append(t_parse + t_render + t_place + t_plan)
        print(f"   run {i + 1}: {total[-1]:.3f} s (parse {t_parse:.3f}, render {t_render:.3f}, "
              f"schedule {t_place:.3f}, plan {t_plan:.3f}); actions {kinds}", flush=True)
    case = "10,000 instances, 1,000 hosts, 1% drift"
    r.add(case, "rackfire", total, "s", note="the four steps, CPU time")
    r.add(case, "the same, wall clock", wall, "s", part=True)
    r.add(case, "1. parse and validate the file", parse, "s", part=True)
    r.add(case, "2. render 10,000 requests", render, "s", part=True)
    r.add(case, "3. schedule on 1,000 hosts", place, "s", part=True)
    r.add(case, "4. plan (desired vs observed)", planning, "s", part=True)
    worst = max(total)
    r.targets.append(Target(f"plan of 10,000 instances <= {TARGET:g} s", worst <= TARGET,
                            f"{worst:.2f} s (slowest run)"))
    r.notes.append(f"The plan found {sum(kinds.values())} actions: "
                   + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ".")
    r.notes.append("Peers: `nomad job plan` and `terraform plan` are the models, but neither "
                   "is packaged for Debian or can be fetched here; no peer figure.")
    return r
