"""What `down` (cluster.py) removes by hand, once the server and the agents are stopped:
on each host, what the agent's data dir still holds (`reap`, run inside the host's netns,
with the agent's own code); then the bed's processes, its instances and their cgroups,
found by what they are (a netns, a path of the bed's dirs), never by a name alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from rackfire.errors import RackfireError
from rackfire.model.instance import InstanceKey
from rackfire.net.nsenter import is_netns
from rackfire.runtime import mounts, runcstate

CGROUP_ROOT = "/sys/fs/cgroup"


def reap(agent_dir: str, host: str, runc_root: str) -> list[str]:
    """Run inside a host's netns: destroy every instance the agent's data dir still holds
    and tear down every stack it has parts of, with the agent's own code (so its veths,
    bridges, nftables tables, netns, mounts, disks, cgroups and HAProxy go as a destroy
    removes them)."""
    from rackfire.agent.local import LocalAgent

    agent = LocalAgent(Path(agent_dir), host=host, runc_root=Path(runc_root))
    problems = []
    for f in agent.observe():
        try:
            agent.destroy(f.key, stop_timeout=2.0)
        except (RackfireError, OSError) as e:
            problems.append(f"destroy {f.key}: {e}")
    stacks = {p.name for sub in ("stacks", "volumes") if (Path(agent_dir) / sub).is_dir()
              for p in (Path(agent_dir) / sub).iterdir()}
    for stack in sorted(stacks):
        try:
            agent.teardown_stack(stack)
        except (RackfireError, OSError) as e:
            problems.append(f"teardown {stack}: {e}")
    return problems


def ours(pid: int, data_dir: str) -> bool:
    """Whether `pid` is still the rackfire process `up` started (pids are reused)."""
    args = _cmdline(pid)
    return "rackfire" in args and any(_under(a, data_dir) for a in args)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def bed_processes(spaces: list[str], data_dir: str, runc_roots: list[str]) -> list[int]:
    """Processes of the bed: in one of its hosts' or instances' network namespaces, or a
    HAProxy or rackfire process named with a path of its data dir or runc roots (an
    HAProxy left by an earlier run, whose host's netns is gone, is still found so)."""
    inodes = set()
    for path in spaces:
        with contextlib.suppress(OSError):
            if is_netns(path):
                inodes.add(os.stat(path).st_ino)
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:  # never ourselves, nor what runs us
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            mine.add(pid)
            continue
        break
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        pid = int(entry)
        try:
            in_bed = os.stat(f"/proc/{pid}/ns/net").st_ino in inodes
        except OSError:
            continue
        args = _cmdline(pid)
        named = bool(args) and (os.path.basename(args[0]) == "haproxy"
                                or "rackfire" in " ".join(args)) and any(
            _under(a, d) for a in args for d in (data_dir, *runc_roots))
        if in_bed or named:
            found.append(pid)
    return found


def terminate(pids: list[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL for what is left after `timeout`; waits until they are gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"  # a zombie is gone but for its reaper (PID 1 here, and late)
    return False


def instance_ids(data_dir: str, runc_roots: list[str]) -> set[str]:
    """Every instance the bed's agents made that may have parts left: by its dir under an
    agent's data dir, its runc state, or a mount of it whose dir is already gone."""
    ids = set()
    for d in Path(data_dir).glob("agent-*/instances/*"):
        ids.add(d.name)
    for root in runc_roots:
        ids.update(runcstate.containers(Path(root)))
    for target in mounts.mounts_under(Path(data_dir)):
        rel = Path(target).relative_to(data_dir).parts
        if len(rel) > 2 and rel[1] == "instances":
            ids.add(rel[2])
    out = set()
    for i in ids:
        with contextlib.suppress(ValueError):
            out.add(InstanceKey.parse_id(i).id)
    return out


def remove_cgroups(instance_id: str) -> list[str]:
    """The instance's cgroup (`/rackfire/<id>`, or `/rackfire/<scope>_<id>` of a bed host)
    in every hierarchy, its processes killed."""
    problems = []
    for cg in [*Path(CGROUP_ROOT).glob(f"*/rackfire/{instance_id}"),
               *Path(CGROUP_ROOT).glob(f"*/rackfire/*_{instance_id}"),
               Path(CGROUP_ROOT, "rackfire", instance_id)]:
        if not cg.is_dir():
            continue
        procs = cg / "cgroup.procs"
        with contextlib.suppress(OSError, ValueError):
            terminate([int(p) for p in procs.read_text().split()], timeout=2)
        try:
            cg.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cgroup {cg}: {e.strerror}")
    return problems

