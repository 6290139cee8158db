"""`python -m bench [MEASURE ...] [--runs N]`: run measurements, keep each result in
bench/results/MEASURE.json, and rewrite the generated part of docs/benchmarks.md from every
result kept there (so one measurement can be run again alone)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from bench import report

MEASURES = {
    "start": "instance start: rackfire vs bare runc, LXC, podman, docker",
    "bringup": "stack bring-up: the shop stack, the hello stack with 50 web instances",
    "plan": "planning 10,000 instances on 1,000 hosts with 1% drift",
    "schedule": "placements per second: 100,000 instances on 5,000 simulated hosts",
    "footprint": "controller and agent memory, idle and with 500 instances",
    "agent_calls": "agent calls per second at rest (3 bed hosts, 10 stacks), per reconcile",
    "cli_start": "CLI start time: `rackfire --help`, `rackfire ps` against a server",
    "failover": "host death to the replacement serving (3 bed hosts): stateless, singleton",
    "snapshot": "snapshot of the shop (db 512 MiB) on XFS reflinks, freezes; clone to serving",
    "dbfailover": "replicated PostgreSQL (3 bed hosts): its primary's host killed, no write lost",
    "autoscale": "the shop under a spike: to new app instances serving, cold, warm, HPA's 15 s",
    "ssh": "20 bed hosts with real sshd: from nothing to joined and ready over SSH",
}
# The issues ask for at least 10 and 20 runs; a spike and its cooldown take a minute or two.
RUNS = {"failover": 10, "dbfailover": 20, "autoscale": 3, "ssh": 3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("measures", nargs="*", metavar="MEASURE",
                   help="any of: " + ", ".join(MEASURES) + " (default: all)")
    p.add_argument("--runs", type=int, default=None,
                   help="repetitions of each measurement (default 5; failover 10, "
                   "dbfailover 20)")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = p.parse_args(argv)
    unknown = [m for m in args.measures if m not in MEASURES]
    if unknown:
        p.error(f"unknown measure(s): {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if args.runs is not None and args.runs < 1:
        p.error("--runs must be at least 1")
    chosen = args.measures or list(MEASURES)
    privileged = {"start", "bringup", "footprint", "agent_calls", "failover",
                  "snapshot", "dbfailover", "autoscale", "ssh"} & set(chosen)
    if privileged and os.geteuid() != 0:
        p.error(f"{', '.join(sorted(privileged))} need root (containers, netns, cgroups)")
    machine = report.machine()
    failed = []
    for name in chosen:
        print(f"== {name}: {MEASURES[name]}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        t0, load0, started = time.monotonic(), report.loadavg(), report.now()
        try:
            runs = args.runs or RUNS.get(name, 5)
            result: report.Result = module.run(runs)
        except Exception as e:  # one failed measurement must not lose the others
            print(f"   {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        result.command = f"python -m bench {name} --runs {runs}"
        result.started, result.machine = started, machine
        result.seconds, result.load = time.monotonic() - t0, (load0, report.loadavg())
        print(f"   kept in {result.save().relative_to(report.ROOT)}", flush=True)
        print("\n".join(report.render_result(result)), flush=True)
    if not args.no_doc:
        report.write_doc(report.load_all())
        print(f"wrote {report.DOC.relative_to(report.ROOT)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
