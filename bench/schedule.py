"""Scheduling throughput: placements per second for 100,000 instances on 5,000 simulated
hosts (in-process `Host` values: the scheduler is pure), spread and bin-pack, one core."""

from __future__ import annotations

import os
import random
import time

from bench.report import Result, Target
from rackfire.model.agent import HostCapacity
from rackfire.model.host import Host, HostState, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.schedule import Ask, Strategy, schedule

G, M = 1 << 30, 1 << 20
HOSTS, INSTANCES, ROLES = 5_000, 100_000, 50
TARGET = 2_000.0  # placements/s
FEW = 200  # instances placed by the explain path, which is hosts x instances of work


def fleet(n: int, rnd: random.Random) -> list[Host]:
    """Three host shapes, racks of 40, a few hosts draining and some already half full."""
    shapes = [(16.0, 64 * G, 1024 * G), (32.0, 128 * G, 2048 * G), (64.0, 256 * G, 4096 * G)]
    out = []
    for i in range(n):
        cpus, mem, disk = rnd.choice(shapes)
        used = rnd.choice([0.0, 0.0, 0.25, 0.5])
        out.append(Host(f"host-{i:05}", HostCapacity(cpus, mem, disk),
                        HostState.DRAINING if rnd.random() < 0.01 else HostState.READY,
                        (("rack", f"rack-{i // 40:03}"),),
                        reserved=Reservation(cpus * used, int(mem * used), int(disk * used))))
    return out


def wanted(n: int, roles: int, strategy: Strategy,
           rnd: random.Random) -> dict[InstanceKey, Ask]:
    """`roles` roles in 10 stacks, each role asking its own size."""
    out: dict[InstanceKey, Ask] = {}
    for r in range(roles):
        ask = Ask(Reservation(rnd.choice([0.25, 0.5, 1.0]), rnd.choice([256, 512, 1024]) * M,
                              rnd.choice([1, 4, 10]) * G), strategy=strategy)
        for i in range(n // roles):
            out[InstanceKey(f"stack{r % 10}", f"role{r}", i)] = ask
    return out


def one_core() -> str:
    """Pin to one core, so the figure is one core's (the scheduler is single-threaded)."""
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return "pinned to one core"
    except (AttributeError, OSError) as e:
        return f"not pinned ({e})"


def rate(hosts: list[Host], want: dict[InstanceKey, Ask], explain: bool = False) -> float:
    t0 = time.perf_counter()
    p = schedule(hosts, {}, want, explain=explain)
    elapsed = time.perf_counter() - t0
    placed = len(p.assignments())
    if placed != len(want):
        raise RuntimeError(f"only {placed} of {len(want)} placed: the fleet is too small")
    return placed / elapsed


def run(runs: int) -> Result:
    pinned = one_core()
    r = Result("schedule", "Scheduling throughput", f"""\
`schedule()` (the pure scheduler the controller calls) places {INSTANCES:,} instances of
{ROLES} roles in 10 stacks on {HOSTS:,} simulated hosts: three host shapes (16, 32, 64
cores), racks of 40, 1% of the hosts draining, a quarter half full and a quarter a quarter
full already. Each role asks its own cpu, memory and disk. One call places them all, from
nothing; the figure is placements per second of that call, {pinned}. The explain path
(`plan --explain`, which checks and ranks every host for every instance to say why) is
timed on the first {FEW} instances for comparison.""")
    spreads, packs, explained = [], [], []
    for i in range(runs):
        rnd = random.Random(i)  # noqa: S311 (a seeded, reproducible fleet)
        hosts = fleet(HOSTS, rnd)
        spreads.append(rate(hosts, wanted(INSTANCES, ROLES, Strategy.SPREAD, rnd)))
        packs.append(rate(hosts, wanted(INSTANCES, ROLES, Strategy.BINPACK, rnd)))
        few = dict(list(wanted(INSTANCES, ROLES, Strategy.SPREAD, rnd).items())[:FEW])
        explained.append(rate(hosts, few, explain=True))
        print(f"   run {i + 1}: spread {spreads[-1]:,.0f}/s, binpack {packs[-1]:,.0f}/s, "
              f"explain {explained[-1]:,.0f}/s", flush=True)
    r.add("100k on 5k hosts, spread", "rackfire", spreads, "placements/s", higher_is_better=True)
    r.add("100k on 5k hosts, bin-pack", "rackfire", packs, "placements/s",
          higher_is_better=True)
    r.add(f"{FEW} on 5k hosts, spread", "rackfire --explain path", explained, "placements/s",
          higher_is_better=True)
    for case, samples in (("spread", spreads), ("bin-pack", packs)):
        worst = min(samples)
        r.targets.append(Target(f"{case}: >= {TARGET:,.0f} placements/s on one core",
                                worst >= TARGET, f"{worst:,.0f}/s (slowest run)"))
    r.notes.append("Peers: Nomad's scheduler is the model (feasibility, then ranking; spread "
                   "and bin-pack), but Nomad is not packaged for Debian and cannot be fetched "
                   "here, so there is no peer figure.")
    return r
