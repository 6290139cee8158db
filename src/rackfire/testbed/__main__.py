"""`python -m rackfire.testbed up|down`: a demo cluster (cluster.py); `reap` is what `down`
runs inside a host's netns (sweep.py).
"""

from __future__ import annotations

import argparse
import os

from rackfire.testbed.cluster import CLUSTER_DATA, CLUSTER_PORT, STATE, down, up
from rackfire.testbed.sweep import reap


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rackfire.testbed")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--hosts", type=int, default=3)
    p_up.add_argument("--data-dir", default=CLUSTER_DATA)
    p_up.add_argument("--port", type=int, default=CLUSTER_PORT)
    p_up.add_argument("--subnet-pool", default=None, help="the server's stack networks")
    p_up.add_argument("--state", default=STATE, help="where `down` finds what was made")
    sub.add_parser("down").add_argument("--state", default=STATE)
    p_reap = sub.add_parser("reap", help="(run by `down` inside a host's netns)")
    for a in ("agent_dir", "host", "runc_root"):
        p_reap.add_argument(a)
    args = parser.parse_args()
    if args.cmd == "up":
        up(args.hosts, data_dir=os.path.realpath(args.data_dir), port=args.port,
           pool=args.subnet_pool, state_path=args.state)
    elif args.cmd == "down":
        down(args.state)
    else:
        for problem in reap(args.agent_dir, args.host, args.runc_root):
            print(problem)


if __name__ == "__main__":
    main()
