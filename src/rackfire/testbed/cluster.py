"""`make demo-cluster`: `up` leaves a bed running with a server of its own and a real agent
in each host, joined to it; `down` removes it and everything its stacks made (what the
server and the agents cannot remove, sweep.py does).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from rackfire.errors import RackfireError
from rackfire.net.names import SCOPE_ENV, netns_name
from rackfire.net.nsenter import is_netns, netns_path, remove_netns
from rackfire.runtime import mounts, runcstate
from rackfire.testbed.bed import HOST_NETNS_PREFIX, Bed, Host, run_in_netns
from rackfire.testbed.sweep import bed_processes, instance_ids, ours, remove_cgroups, terminate

STATE = "/run/rackfire/testbed.json"  # what `up` made, for `down`
CLUSTER_DATA = "/var/lib/rackfire-cluster"
CLUSTER_PORT = 7490


def _cli(url: str, data_dir: str, *args: str,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RACKFIRE_URL": url, "RACKFIRE_DATA_DIR": data_dir}
    return subprocess.run([sys.executable, "-m", "rackfire", *args], env=env, text=True,
                          capture_output=True, check=True, timeout=timeout)


def up(n: int, *, data_dir: str = CLUSTER_DATA, port: int = CLUSTER_PORT,
       pool: str | None = None, state_path: str = STATE) -> None:
    """A bed of `n` hosts, a server listening on every address (port 7490, its own data
    dir) and an agent in each host (label rack=r<i>), left running until `down`."""
    if os.path.exists(state_path):
        raise SystemExit(f"a demo cluster is up already ({state_path}); "
                         "`make clean-cluster` first")
    data_dir = os.path.realpath(data_dir)  # as `down` compares it with command lines
    bed = Bed(n).create()
    atexit.unregister(bed.destroy)  # it outlives this process; `down` removes it
    url = f"http://127.0.0.1:{port}"
    os.makedirs(data_dir, exist_ok=True)
    args = [sys.executable, "-m", "rackfire", "server", "--data-dir", data_dir,
            "--listen", "0.0.0.0", "--port", str(port), "--no-local-host"]
    if pool:
        args += ["--subnet-pool", pool]
    with open(os.path.join(data_dir, "server.log"), "ab") as log:
        server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    state: dict[str, Any] = {"bed": bed.id, "n": n, "subnet": str(bed.subnet),
                             "hosts": [h.name for h in bed.hosts], "server": server.pid,
                             "agents": [], "data_dir": data_dir, "port": port}
    _save(state, state_path)
    for _ in range(100):
        if _cli_ok(url, data_dir, "hosts"):
            break
        time.sleep(0.3)
    token = _cli(url, data_dir, "token", "create", "--uses", str(n)).stdout.split()[0]
    join = f"http://{bed.controller_ip}:{port}"
    for i, h in enumerate(bed.hosts, 1):
        agent_dir = os.path.join(data_dir, f"agent-{h.name}")
        os.makedirs(agent_dir, exist_ok=True)
        proc = bed.start_agent(h, join, token, agent_dir, {"rack": f"r{i}"}, interval=2.0,
                               log=os.path.join(agent_dir, "agent.log"))
        state["agents"].append(proc.pid)
        _save(state, state_path)
    for _ in range(100):
        hosts = json.loads(_cli(url, data_dir, "hosts", "--json").stdout)
        if sum(1 for h in hosts if not h["local"] and h["state"] == "ready") == n:
            break
        time.sleep(0.3)
    print(_cli(url, data_dir, "hosts").stdout)
    print(f"{n} simulated hosts joined the server at {url}.\n"
          f"  export RACKFIRE_URL={url} RACKFIRE_DATA_DIR={data_dir}\n"
          "  rackfire hosts; rackfire capacity\n"
          "Stacks applied to it run on those hosts only (the server runs --no-local-host). "
          "`make clean-cluster` removes it all.")


def down(state_path: str = STATE) -> None:
    """Remove the demo cluster and everything its stacks made, in the order that leaves
    nothing behind: (1) every stack destroyed through the server, as a user would; (2) the
    agents and the server stopped; (3) on each host, whatever an instance or stack still
    has (a destroy that failed, an agent that had died) removed by the agent's own code;
    (4) any process of the bed still running (each host's HAProxies, an instance's), its
    runc state and cgroups; (5) the hosts' namespaces and links; (6) the data dirs and
    runc roots, unmounted before they are removed, never deleted through a mount.

    Exits non-zero, naming them, if some parts could not be removed; the state file is
    then kept, so `down` can be run again."""
    if not os.path.exists(state_path):
        print("no demo cluster is up")
        return
    with open(state_path) as f:
        state = json.load(f)
    data_dir = os.path.realpath(state.get("data_dir", CLUSTER_DATA))
    port = int(state.get("port", CLUSTER_PORT))
    bed = Bed(state["n"], id=state["bed"])
    bed.hosts = [Host(name, f"{HOST_NETNS_PREFIX}{state['bed']}-{i}", "")
                 for i, name in enumerate(state["hosts"], 1)]
    runc_roots = [bed.runc_root(h) for h in bed.hosts]
    problems: list[str] = []

    if ours(state["server"], data_dir):
        # A failure here is not fatal: step (3) removes what a host's agent could not (its
        # agent had died, say); what is really left is judged at the end.
        for note in _destroy_stacks(f"http://127.0.0.1:{port}", data_dir):
            print(f"{note}\n  (removing it on the hosts instead)", file=sys.stderr)
    terminate([p for p in [*state["agents"], state["server"]] if ours(p, data_dir)])

    for h in bed.hosts:
        agent_dir = os.path.join(data_dir, f"agent-{h.name}")
        if os.path.isdir(agent_dir) and is_netns(netns_path(h.netns)):
            os.environ[SCOPE_ENV] = bed.netns_scope(h)  # as its agent names netns
            try:
                result = run_in_netns(h.netns, [sys.executable, "-m", "rackfire.testbed",
                                                "reap", agent_dir, h.name, bed.runc_root(h)],
                                      check=False, timeout=300)
            finally:
                os.environ.pop(SCOPE_ENV, None)
            problems += [f"{h.name}: {line}" for line in result.stdout.splitlines()]
            if result.returncode != 0 and not result.stdout:
                problems.append(f"{h.name}: reap failed: {result.stderr.strip()[-500:]}")

    ids = instance_ids(data_dir, runc_roots)
    spaces = [netns_path(h.netns) for h in bed.hosts]
    spaces += [netns_path(netns_name(i, bed.netns_scope(h))) for i in ids for h in bed.hosts]
    # Short grace: an instance's PID 1 without a handler never acts on SIGTERM.
    terminate(bed_processes(spaces, data_dir, runc_roots), timeout=2)
    for root in runc_roots:
        for cid in runcstate.containers(Path(root)):
            subprocess.run(["runc", "--root", root, "delete", "--force", cid],
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
    for i in ids:
        problems += remove_cgroups(i)
        remove_netns(netns_name(i))
    bed.destroy()

    # Every mount under the dirs, deepest first (an overlay root before the disk under its
    # upper dir), then the disks of images under the data dir wherever else they are
    # mounted; only then the dirs' removal, which refuses while anything is mounted there.
    for d in [data_dir, *runc_roots]:
        for target in mounts.mounts_under(Path(d)):
            with contextlib.suppress(RackfireError):
                mounts.unmount(Path(target))
    try:
        mounts.release_under(Path(data_dir))
    except RackfireError as e:
        problems.append(str(e))
    for d in [data_dir, *runc_roots]:
        try:
            mounts.remove_tree(Path(d))
        except (RackfireError, OSError) as e:
            problems.append(str(e))
    problems += [f"left over: {x}" for x in bed.leftovers()]
    if problems:
        print("demo cluster not wholly removed:\n  " + "\n  ".join(problems), file=sys.stderr)
        print(f"(kept {state_path}: fix what is named above, then `make clean-cluster` again)",
              file=sys.stderr)
        raise SystemExit(1)
    os.unlink(state_path)
    print("demo cluster removed")


def _destroy_stacks(url: str, data_dir: str) -> list[str]:
    """Destroy every stack the server holds, each waited for (the CLI's own destroy)."""
    try:
        token = Path(data_dir, "token").read_text().strip()
        resp = httpx.get(url + "/v1/stacks", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        resp.raise_for_status()
        stacks = [str(s["name"]) for s in resp.json()]
    except (OSError, httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        return [f"could not list the server's stacks: {e}"]
    problems = []
    for name in stacks:
        print(f"destroying stack {name}", flush=True)
        try:
            _cli(url, data_dir, "destroy", name, "-y", timeout=300)
        except subprocess.CalledProcessError as e:
            said = [ln for ln in (e.stderr or e.stdout or "").splitlines() if ln.strip()]
            error = next((ln for ln in said if ln.startswith("error:")), said[-1] if said else "")
            problems.append(f"the server could not destroy {name}: {error.removeprefix('error: ')}")
        except subprocess.TimeoutExpired:
            problems.append(f"the server did not finish destroying {name} in 300 s")
    return problems


def _cli_ok(url: str, data_dir: str, *args: str) -> bool:
    try:
        _cli(url, data_dir, *args)
    except subprocess.CalledProcessError:
        return False
    return True


def _save(state: dict[str, Any], path: str = STATE) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as f:
        json.dump(state, f)
    os.replace(path + ".new", path)

