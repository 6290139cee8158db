"""Cold migration on the test bed: how long `rackfire migrate` takes (the instance is down
for all of it) as the data on its disks grows, and how fast the disks cross.

Two simulated hosts (network namespaces on an underlay bridge, `rackfire.testbed`), a real
agent in each, a server that runs no instances itself. One instance with a 2 GiB data disk;
for each size, that much is written into the data disk (random bytes: nothing to compress
or skip), then the instance is moved to the other host and back. Run as root:

    python -m bench.migrate [--sizes 0,64,256,1024] [--out bench/results/migrate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.rfserver import BenchServer
from rackfire.testbed.bed import Bed

STACK = """\
stack: mig
images: {base: {from: host}}
roles:
  db:
    image: base
    command: [sleep, "100000"]
    resources: {memory: 64M, disk: 64M}
    data: {path: /data, size: 2G}
    stop_timeout: 1s
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,64,256,1024", help="MiB written, comma-separated")
    parser.add_argument("--out", default="bench/results/migrate.json")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="rf-bench-mig-"))
    bed = Bed(2).create()
    srv = BenchServer(tmp / "data", "10.93.0.0/16", args=("--listen", "0.0.0.0",
                                                          "--no-local-host"))
    rows = []
    try:
        srv.start()
        token = srv.cli("token", "create", "--uses", "2").stdout.split()[0]
        join = f"http://{bed.controller_ip}:{srv.port}"
        for n, h in enumerate(bed.hosts, 1):
            bed.start_agent(h, join, token, str(tmp / f"agent-{h.name}"), {"rack": f"r{n}"})
        _wait(lambda: sum(1 for h in json.loads(srv.cli("hosts", "--json").stdout)
                          if h["address"] and h["state"] == "ready") == 2, "agents")
        (tmp / "stack.yaml").write_text(STACK)
        out = srv.cli("apply", "-f", str(tmp / "stack.yaml"), "-y")
        assert out.returncode == 0, out.stderr
        written = 0
        for size in sizes:
            [row] = json.loads(srv.cli("ps", "mig", "--json").stdout)
            host = row["host"]
            if size > written:
                _runc(bed, host, "sh", "-c", f"dd if=/dev/urandom of=/data/fill bs=1M "
                      f"count={size} conv=fsync status=none")
                written = size
            other = next(h.name for h in bed.hosts if h.name != host)
            t0 = time.monotonic()
            res = srv.cli("migrate", "mig/db/0", "--to", other)
            took = time.monotonic() - t0
            assert res.returncode == 0, res.stderr
            check = _runc(bed, other, "sh", "-c", "ls -l /data/fill 2>/dev/null | wc -l")
            rows.append({"written_mib": size, "seconds": round(took, 2),
                         "mib_per_s": round(size / took, 1) if size else None,
                         "data_arrived": check.strip() == ("1" if size else "0")})
            print(rows[-1], flush=True)
        srv.cli("destroy", "mig", "-y")
    finally:
        srv.stop()
        bed.destroy()
        for h in bed.hosts:
            shutil.rmtree(bed.runc_root(h), ignore_errors=True)
        subprocess.run(["rm", "-rf", "--", str(tmp)], check=False)
    result = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows,
              "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _runc(bed: Bed, host: str, *argv: str) -> str:
    r = subprocess.run(["runc", "--root", bed.runc_root(host), "exec", "mig.db.0", *argv],
                       capture_output=True, text=True, timeout=600, check=True)
    return r.stdout


def _wait(fn: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not fn():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


if __name__ == "__main__":
    main()
