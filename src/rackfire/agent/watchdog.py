"""The self-fencing watchdog: a small process beside the agent, not part of it, that kills
this host's fencing instances (roles that self-fence: model/stack.py HaPolicy) when the
agent stopped renewing their lease, whether it lost the controller, hung or died.

The agent feeds it (`Watchdog.feed`, after each answered heartbeat): `<data-dir>/watchdog/
feed.json`, written whole (tmp + rename), holds a deadline on CLOCK_MONOTONIC (one clock
for every process on the host, so the agent's and the watchdog's readings compare) and
how to kill each fencing instance without the agent: `{"kind": "runc", "root", "id"}` or
`{"kind": "pid", "pid", "start"}` (the runtimes say: `fence_target`). Past the deadline it
SIGKILLs each target once (no time for a graceful stop: the controller starts a
replacement elsewhere one FENCE_GRACE after it), logs it (`watchdog/log`) and records it
(`watchdog/fenced.json`). It never starts anything. A deadline of null means no fencing.
A floating address the host holds (`{"kind": "address", "dev", "address", "deadline"}`,
agent/vips.py) is removed past its own deadline, the lease's end: the controller gives it
to another host then, before any fence.

It is started detached (its own session) so an agent killed with SIGKILL leaves it
running; `watchdog/pid` lets a restarted agent find it rather than start a second. A
restarted agent does not feed before its first answered heartbeat: the feed the dead one
left stands, so one back within its lease keeps its instances running (0 restarts).

This module imports the standard library only (and runtime/runcstate.py, which does too):
the watchdog runs as `python -m rackfire.agent.watchdog` and must stay small and alive.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rackfire.runtime import runcstate

log = logging.getLogger("rackfire.agent")
DIR = "watchdog"
FEED = "feed.json"
FENCED = "fenced.json"
PID = "pid"
LOG = "log"
POLL = 0.1  # seconds between looks at the feed: a fence comes at most this late
RUNC_KILL_TIMEOUT = 2.0  # `runc kill` hung (its state dir on a stuck disk): kill it directly
MODULE = "rackfire.agent.watchdog"

Target = dict[str, Any]


# the feed file --------------------------------------------------------------------------

def write_feed(data_dir: Path, deadline: float | None, targets: list[Target]) -> None:
    d = data_dir / DIR
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / FEED, {"deadline": deadline, "targets": targets})


def read_feed(path: Path) -> tuple[float | None, list[Target]] | None:
    """(deadline, targets), or None if there is no feed or it is not one (a feed the
    watchdog cannot read never lifts the one it had)."""
    try:
        d = json.loads(path.read_text())
        deadline, targets = d["deadline"], d["targets"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (deadline is None or isinstance(deadline, (int, float))) \
            or not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        return None
    return (float(deadline) if deadline else None), targets


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# the agent's side -----------------------------------------------------------------------

class Watchdog:
    """The agent's handle on its host's watchdog: start it once, feed it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()  # it runs from /, and is found by this path
        self.fed = False  # not before this agent's first answered heartbeat
        self._deadline: float | None = None
        self._targets: list[Target] = []
        self._proc: subprocess.Popen[bytes] | None = None  # the one this process started

    def ensure_running(self) -> int:
        """The watchdog's pid: the one running for this data dir, or one started now."""
        d = self.data_dir / DIR
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "lock", "a") as lock:  # two agents starting at once start one
            fcntl.flock(lock, fcntl.LOCK_EX)
            pid = running_pid(self.data_dir)
            if pid is not None:
                return pid
            with open(d / LOG, "ab") as out:
                self._proc = proc = subprocess.Popen(
                    [sys.executable, "-m", MODULE, "--data-dir", str(self.data_dir)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/",
                    start_new_session=True)  # not in the agent's group: it outlives it
            _write_json(d / PID, proc.pid)
            # Its cmdline is empty for a moment after Popen returns (the exec is not done):
            # until it is there, the pid file would not be believed.
            end = time.monotonic() + 2.0
            while running_pid(self.data_dir) is None and proc.poll() is None \
                    and time.monotonic() < end:
                time.sleep(0.001)
            if proc.poll() is not None:
                log.error("the watchdog exited at once (%s): see %s", proc.returncode, d / LOG)
            else:
                log.info("watchdog started (pid %d)", proc.pid)
            return proc.pid

    def feed(self, deadline: float | None, targets: list[Target]) -> None:
        """Kill `targets` unless fed again before `deadline` (monotonic; None: never)."""
        try:
            write_feed(self.data_dir, deadline, targets)
            self.fed, self._deadline, self._targets = True, deadline, targets
            if running_pid(self.data_dir) is None:
                log.warning("this host's watchdog is gone: starting it again")
                self.ensure_running()
        except OSError as e:  # not fed, it fences at the last deadline: safe, and logged
            log.error("cannot feed this host's watchdog: %s", e)

    def stop(self) -> None:
        """Stop the watchdog (a test's or a bed's teardown; an agent leaves it running)."""
        stop(self.data_dir)
        if self._proc is not None:
            self._proc.wait(5)
            self._proc = None

    def refresh(self, targets: list[Target]) -> None:
        """The same deadline for what fences now (an instance started or stopped since the
        last beat), once this agent has fed it at all."""
        if self.fed and targets != self._targets:
            self.feed(self._deadline, targets)


def running_pid(data_dir: Path) -> int | None:
    """The pid in `watchdog/pid` if that process is this data dir's watchdog."""
    try:
        pid = int(json.loads((data_dir / DIR / PID).read_text()))
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, TypeError):
        return None
    args = [os.fsdecode(a) for a in argv]
    ours = MODULE in args or "watchdog" in args
    want = str(data_dir.absolute())
    mine = any(a == "--data-dir" and b == want for a, b in itertools.pairwise(args))
    return pid if ours and mine else None


def stop(data_dir: Path, timeout: float = 5.0) -> bool:
    """Stop this data dir's watchdog (a test bed's teardown), by its pid file; whether one
    was running."""
    pid = running_pid(data_dir)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while running_pid(data_dir) == pid and time.monotonic() < end:
        time.sleep(0.02)
    if running_pid(data_dir) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


# the watchdog itself --------------------------------------------------------------------

def watch(data_dir: Path, poll: float = POLL, clock: Callable[[], float] = time.monotonic,
          done: Callable[[], bool] = lambda: False) -> None:
    """Poll the feed; past its deadline kill each target not killed yet. Ends when `done`
    or when the data dir's watchdog dir is gone (the host was removed)."""
    d = data_dir / DIR
    deadline: float | None = None
    targets: list[Target] = []
    killed: set[str] = set()  # targets killed since their deadline passed
    while not done() and d.is_dir():
        try:
            fed = read_feed(d / FEED)
            if fed is not None:
                deadline, targets = fed
            now = clock()
            due = [t for t in targets if (end := _deadline(t, deadline)) is not None
                   and now > end]
            killed &= {_ident(t) for t in due}  # renewed: killed again after the next
            todo = [t for t in due if _ident(t) not in killed]
            if todo:
                killed.update(_ident(t) for t in todo)
                fence(d, todo, min(_deadline(t, deadline) or now for t in todo), now)
        except Exception as e:  # it must stay up: a full disk stops its record, not it
            with contextlib.suppress(Exception):
                sys.stderr.write(f"watchdog: {type(e).__name__}: {e}\n")
        time.sleep(poll)


def fence(d: Path, targets: list[Target], deadline: float, now: float) -> list[Target]:
    """SIGKILL each target at once (the runc ones side by side), then log and record it."""
    running = [(t, _start_runc_kill(t)) for t in targets]
    done = []
    for t, proc in running:
        try:
            result = _finish_runc_kill(t, proc) if t.get("kind") == "runc" else \
                _remove_address(t) if t.get("kind") == "address" else _kill_pid(t)
        except Exception as e:  # one bad target must not spare the others
            result = f"error: {type(e).__name__}: {e}"
        done.append({**t, "result": result})
    late = time.monotonic() - deadline  # when the last kill was sent
    _say(d, f"lease lapsed {late:.3f}s ago (deadline {deadline:.3f}): fenced "
            + ", ".join(f"{_describe(t)}: {t['result']}" for t in done))
    _write_json(d / FENCED, {"time": time.time(), "deadline": deadline, "seen": now,
                             "late": late, "targets": done})
    return done


def _deadline(t: Target, fed: float | None) -> float | None:
    """The target's own deadline (a floating address: the lease's end), or the feed's."""
    own = t.get("deadline")
    return float(own) if isinstance(own, (int, float)) else fed


def _ident(t: Target) -> str:
    return json.dumps(t, sort_keys=True)


def _describe(t: Target) -> str:
    if t.get("kind") == "runc":
        return f"container {t.get('id')} (runc root {t.get('root')})"
    if t.get("kind") == "address":
        return f"floating address {t.get('address')} on {t.get('dev')}"
    return f"pid {t.get('pid')}"


def _start_runc_kill(t: Target) -> subprocess.Popen[bytes] | None:
    """`runc kill`, not waited for; None if runc could not be started (killed directly)."""
    if t.get("kind") != "runc":
        return None
    # No --all: the container has its own pid namespace, which the kernel empties once its
    # init is gone; --all would freeze the cgroup first, a slower path to the same end.
    try:
        return subprocess.Popen(["runc", "--root", str(t["root"]), "kill", str(t["id"]),
                                 "KILL"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    except (OSError, KeyError):
        return None


def _finish_runc_kill(t: Target, proc: subprocess.Popen[bytes] | None) -> str:
    err = b"runc could not be started"
    if proc is not None:
        try:
            _, err = proc.communicate(timeout=RUNC_KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err = b"runc kill timed out"
        if proc.returncode == 0:
            return "killed"
    c = runcstate.container(Path(str(t["root"])), str(t["id"]))
    if c is None or c.status == "stopped" or c.pid is None:
        return "not running"
    # runc failed and its init still runs: kill that (runcstate checked its start time).
    os.kill(c.pid, signal.SIGKILL)
    return f"killed directly (runc: {err.decode(errors='replace').strip()[:200]})"


def _remove_address(t: Target) -> str:
    proc = subprocess.run(["ip", "-4", "addr", "del", f"{t['address']}/32", "dev",
                           str(t["dev"])], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=RUNC_KILL_TIMEOUT, check=False)
    return "removed" if proc.returncode == 0 else "not there"


def _kill_pid(t: Target) -> str:
    pid, start = int(t["pid"]), t.get("start")
    if start is None or _start_time(pid) != int(start):
        return "not running"  # gone, or the pid is another process's now: never killed
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)  # its own group (process.py): children too
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "not running"
    return "killed"


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, as runtime/process.py records it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _say(d: Path, line: str) -> None:
    text = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog: {line}\n"
    path = d / LOG
    with open(path, "a") as f:
        f.write(text)
    try:  # stderr too, unless it is that log (started by the agent)
        same = os.fstat(2).st_ino == path.stat().st_ino
    except OSError:
        same = False
    if not same:
        sys.stderr.write(text)
        sys.stderr.flush()


def main(data_dir: Path) -> None:
    d = data_dir / DIR
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # the last thing the kernel should kill for memory
        Path("/proc/self/oom_score_adj").write_text("-1000")
    stopping = [False]

    def on_term(*_: Any) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is no reason to stop
    _say(d, f"watching {d / FEED} (pid {os.getpid()})")
    watch(data_dir, done=lambda: stopping[0])
    _say(d, "stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="rackfire watchdog")
    parser.add_argument("--data-dir", type=Path, required=True)
    main(parser.parse_args().data_dir.absolute())
