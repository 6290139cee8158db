"""Where the CPU of 50 starts at once goes: `python -m bench.start_profile [REPS]` (root).

A rackfire server of its own (as `bench start` makes it), then REPS times a stack of 50
instances applied and destroyed; for each, from /proc: the machine's CPU, the server's
(user and system apart), the instances' log writers', kernel threads', the polling
client's. Printed, not kept: it is for finding the next thing to fix (run py-spy on the
server's pid alongside it for the Python part). Everything is removed at the end.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from bench import peers
from bench.start import MANY, Rackfire, host_leftovers

TICK = os.sysconf("SC_CLK_TCK")
KERNEL_THREADS = ("kworker", "ksoftirq", "kswapd", "jbd2", "loop", "rcu")


def machine_cpu() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK  # not idle, not iowait


def cpu(pid: int | str) -> tuple[float, float]:
    """(user, system) seconds of a process; (0, 0) once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def total(match: str, *, comm: tuple[str, ...] = ()) -> float:
    """CPU of every process whose command line holds `match` (or name starts with `comm`)."""
    out = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            hit = (Path(f"/proc/{pid}/comm").read_text().startswith(comm) if comm
                   else match.encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
        if hit:
            out += sum(cpu(pid))
    return out


def main(reps: int) -> None:
    ws = peers.Workspace("rfs" + secrets.token_hex(3))
    host, rf = peers.HostPaths(), Rackfire(ws)
    try:
        ws.create()
        rf.setup()
        rf.start_one(0)
        rf.clear()
        server = rf.server.pid
        for _ in range(reps):
            m0, (u0, s0), c0, k0 = machine_cpu(), cpu(server), sum(cpu(os.getpid())), \
                total("", comm=KERNEL_THREADS)
            elapsed = rf.start_many(MANY)
            (u1, s1), writers = cpu(server), total("logshim")
            print(f"{MANY} at once {elapsed:.2f} s: machine {machine_cpu() - m0:.2f} s CPU; "
                  f"server {u1 - u0:.2f} user + {s1 - s0:.2f} system; log writers "
                  f"{writers:.2f}; kernel threads {total('', comm=KERNEL_THREADS) - k0:.2f}; "
                  f"this client {sum(cpu(os.getpid())) - c0:.2f}", flush=True)
            rf.clear()
    finally:
        rf.teardown()
        ws.remove()
        host.tidy()
        left = host_leftovers(ws, host)
        if left:
            print(f"LEFT ON THE HOST: {left}", file=sys.stderr)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
