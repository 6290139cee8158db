"""FakeRuntime: a runtime for tests, without root, processes or links. Deterministic.

Its instances' runs (running or not, pid, start time, exit code) are held in memory; what
the agent reads of an instance (meta.json, the console log) is in its instance dir, laid out
as the real runtimes lay it out, so a LocalAgent drives it as any other (dedupe by action id,
observe, stats) and the same contract suite holds for it. A new FakeRuntime on the same dir
finds the instances stopped, as after a host reboot.

What a test sets:
- `exits[command] = Exit(after, code)`: an instance running `command` ends `after` seconds
  (of `clock`) after each start, with `code`; any other command runs until stopped.
- `fail(verb, key, error, times)`: the next `times` calls of `verb` (for `key`, or any)
  raise `error`. A create, restart or reconfigure fails where a real one would fail to
  start its process: a create leaves a PARTIAL instance, the others a STOPPED one. Any
  other verb fails before it changes anything.
- `crash(key, code, oom)`: a running instance ends now.
- `exec_results[argv] = (code, stdout)`: what `exec` of `argv` answers (default 0, "").
- `caps`: what it declares it can do; it refuses what they lack, as a real runtime would.

And what it reports besides: `calls` (verb, key) in order, `reloads` per key, `files(key)`.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rackfire.errors import ExecError, NotFound, PrereqError, RackfireError
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, InstanceState
from rackfire.model.runtime import Capabilities, Need, describe, missing
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RuntimeKind
from rackfire.net.attach import Attachment
from rackfire.runtime.base import ExecHandle, RootFs
from rackfire.runtime.layout import (
    InstanceDir,
    instance_dir,
    list_instance_dirs,
    read_meta,
    remove_instance_dir,
    rendered_paths,
    resources_of,
    run_of,
    update_meta,
    write_meta,
)
from rackfire.runtime.logshim import encode, timestamp
from rackfire.runtime.reload import begin as begin_reload

# Everything but isolation, limits and moves: what a controller test needs to exercise.
FAKE_CAPS = Capabilities(disks=True, app_layers=True, reload=True, exec=True,
                         live_resize=True)

_FIRST_PID = 1000
# exec's answer, from a process of its own (an ExecHandle is a Popen): argv, not code.
_ANSWER = "import sys; sys.stdout.write(sys.argv[1]); sys.exit(int(sys.argv[2]))"
_STARTING = ("create", "restart", "reconfigure")


@dataclass(frozen=True, slots=True)
class Exit:
    after: float  # seconds after each start
    code: int = 0


@dataclass(slots=True)
class _Run:
    pid: int
    ends_at: float | None
    code: int
    exit_code: int | None = None  # once it ended by itself
    exit_signal: int | None = None
    running: bool = True
    oom_killed: bool = False


@dataclass(slots=True)
class _Failure:
    verb: str
    key: InstanceKey | None
    error: RackfireError
    times: int


class FakeRuntime:
    kind = RuntimeKind.FAKE

    def __init__(self, base: Path, host: str, caps: Capabilities = FAKE_CAPS,
                 clock: Callable[[], float] = time.time) -> None:
        self.base = base
        self.host = host
        self.caps = caps
        self.clock = clock
        self.exits: dict[tuple[str, ...], Exit] = {}
        self.cpu: dict[str, float] = {}  # role -> the cpu % its running instances show
        self.exec_results: dict[tuple[str, ...], tuple[int, str]] = {}
        self.calls: list[tuple[str, InstanceKey]] = []
        self.reloads: Counter[InstanceKey] = Counter()
        self._runs: dict[InstanceKey, _Run] = {}
        self._files: dict[InstanceKey, dict[str, str]] = {}
        self._failures: list[_Failure] = []
        self._next_pid = _FIRST_PID
        self._lock = threading.RLock()  # the agent calls from API, health and reconcile threads
        base.mkdir(parents=True, exist_ok=True)

    # what tests set -----------------------------------------------------------------------

    def fail(self, verb: str, key: InstanceKey | None = None,
             error: RackfireError | None = None, times: int = 1) -> None:
        with self._lock:
            self._failures.append(_Failure(
                verb, key, error or ExecError(f"fake runtime: {verb} failed"), times))

    def crash(self, key: InstanceKey, code: int = 1, oom: bool = False,
              signal: int | None = None) -> None:
        """It ends by itself: with `code`, or killed by `signal` (an OOM kill: SIGKILL)."""
        with self._lock:
            run = self._runs.get(key)
            if run is None or not self._running(run):
                raise PrereqError(f"instance {key} is not running")
            sig = signal if signal is not None else (9 if oom else None)
            run.running, run.oom_killed = False, oom
            run.exit_code, run.exit_signal = (None, sig) if sig is not None else (code, None)

    def files(self, key: InstanceKey) -> dict[str, str]:
        """The rendered files the instance has now (a reload's new contents included)."""
        with self._lock:
            return dict(self._files.get(key, {}))

    # the Runtime protocol -----------------------------------------------------------------

    def create(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        with self._lock:
            self._call("create", req.key, starting=True)
            self._refuse(req, rootfs)
            d = instance_dir(self.base, req.key)
            if d.root.exists():
                self.destroy(req.key)  # a half-made earlier try: start clean
            write_meta(d, req, phase="creating")
            self._start(d, req, "create")
            update_meta(d, phase="created")

    def reconfigure(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        with self._lock:
            self._call("reconfigure", req.key, starting=True)
            self._refuse(req, rootfs)
            d = self._existing(req.key)
            self._stop(req.key)
            update_meta(d, config_hash=req.config_hash, files=rendered_paths(req),
                        files_layout=req.files_layout)
            self._start(d, req, "reconfigure")

    def restart(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        with self._lock:
            self._call("restart", req.key, starting=True)
            self._refuse(req, rootfs)
            d = self._existing(req.key)
            self._stop(req.key)
            self._start(d, req, "restart")

    def reload(self, req: InstanceRequest) -> None:
        with self._lock:
            self._call("reload", req.key)
            if not self.caps.reload:
                raise PrereqError(f"{req.key}: the fake runtime was made without reloads")
            d = instance_dir(self.base, req.key)
            meta, _ = begin_reload(read_meta(d), req, self.host)
            update_meta(d, config_hash=req.config_hash, files_layout=req.files_layout)
            self._files[req.key] = dict(req.files)
            run = self._runs.get(req.key)
            if meta.get("phase") == "created" and run is not None and self._running(run):
                self.reloads[req.key] += 1

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        with self._lock:
            self._call("destroy", key)
            self._runs.pop(key, None)
            self._files.pop(key, None)
            remove_instance_dir(instance_dir(self.base, key))

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        with self._lock:
            self._call("stop", key)
            self._stop(key)

    def check_resize(self, req: InstanceRequest) -> None:
        with self._lock:
            self._call("check_resize", req.key)
            meta = read_meta(instance_dir(self.base, req.key))
            if meta is None:
                raise NotFound(f"instance {req.key} does not exist on host {self.host}")
            old = resources_of(meta)
            if old is not None and req.resources.disk < old.disk:
                raise PrereqError(f"{req.key}: a disk never shrinks "
                                  f"({old.disk} → {req.resources.disk} bytes)")
            size = (meta.get("data") or {}).get("size")
            if req.data is not None and isinstance(size, int) and req.data.size < size:
                raise PrereqError(f"{req.key}: a data disk never shrinks "
                                  f"({size} → {req.data.size} bytes)")

    def resize(self, req: InstanceRequest) -> None:
        with self._lock:
            self.check_resize(req)
            self._call("resize", req.key)
            update_meta(instance_dir(self.base, req.key), resources=asdict(req.resources),
                        spec_hash=req.spec_hash,
                        spec_fields=[list(p) for p in req.spec_fields],
                        **({"data": asdict(req.data)} if req.data else {}))

    def stats(self, keys: list[InstanceKey]) -> list[InstanceStats]:
        with self._lock:
            out = []
            for key in keys:
                meta = read_meta(instance_dir(self.base, key))
                if meta is None or meta.get("runtime") != self.kind.value:
                    continue
                run = self._runs.get(key)
                up = run is not None and self._running(run)
                r = resources_of(meta)
                out.append(InstanceStats(key, self.cpu.get(key.role, 0.0) if up else 0.0, 0,
                                         r.memory if r else None, 0,
                                         r.disk if r else None, 0, 0, 1 if up else 0))
            return out

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        with self._lock:
            self._call("exec", key)
            if read_meta(instance_dir(self.base, key)) is None:
                raise NotFound(f"no instance {key}", hint="`rackfire ps` lists the instances")
            run = self._runs.get(key)
            if run is None or not self._running(run):
                raise PrereqError(f"instance {key} is not running",
                                  hint=f"`rackfire ps {key.stack}` shows its state")
            if not self.caps.exec:
                raise PrereqError(f"{key}: the fake runtime was made without exec")
            code, out = self.exec_results.get(tuple(argv), (0, ""))
        return ExecHandle(subprocess.Popen(
            [sys.executable, "-c", _ANSWER, out, str(code)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))

    def observe(self) -> list[InstanceFacts]:
        with self._lock:
            facts = []
            for key, d in list_instance_dirs(self.base):
                meta = read_meta(d)
                if meta is None or meta.get("runtime") != self.kind.value:
                    continue
                run = self._runs.get(key)
                up = run is not None and self._running(run)
                if meta.get("phase") != "created":
                    state = InstanceState.PARTIAL
                else:
                    state = InstanceState.RUNNING if up else InstanceState.STOPPED
                facts.append(InstanceFacts(
                    key=key, state=state, runtime=self.kind, host=self.host,
                    ip=meta.get("ip"), spec_hash=meta.get("spec_hash", ""),
                    spec_fields=tuple((a, b) for a, b in meta.get("spec_fields", ())),
                    config_hash=meta.get("config_hash", ""),
                    files_layout=meta.get("files_layout", ""),
                    started_at=meta.get("started_at"), resources=resources_of(meta),
                    pid=run.pid if run is not None and up else None,
                    exit_code=run.exit_code if run is not None and not up else None,
                    exit_signal=run.exit_signal if run is not None and not up else None,
                    oom_killed=run is not None and not up and run.oom_killed,
                    **run_of(meta)))
            return facts

    def netns(self, key: InstanceKey) -> str | None:
        return None

    def log_path(self, key: InstanceKey) -> Path:
        return instance_dir(self.base, key).log

    # parts ------------------------------------------------------------------------------

    def _call(self, verb: str, key: InstanceKey, starting: bool = False) -> None:
        """Record the call; raise a failure set for it now, unless it is one for the start
        step of a starting verb (raised there, by `_start`)."""
        self.calls.append((verb, key))
        if not starting:
            self._fail_if_set(verb, key)

    def _fail_if_set(self, verb: str, key: InstanceKey) -> None:
        for f in self._failures:
            if f.verb == verb and f.key in (None, key) and f.times > 0:
                f.times -= 1
                if f.times == 0:
                    self._failures.remove(f)
                raise f.error

    def _refuse(self, req: InstanceRequest, rootfs: RootFs) -> None:
        """What its capabilities lack, and a release layer `rootfs` does not have, refused
        before any change."""
        asked = {Need.DISKS} if req.data is not None else set()
        if req.app_digest:
            asked.add(Need.APP_LAYERS)
        lacking = missing(self.caps, asked)
        if lacking:
            raise PrereqError(f"{req.key}: the fake runtime was made without "
                              f"{describe(lacking)}")
        if req.app_digest and rootfs.layer(req.app_digest) is None:
            raise NotFound(f"release layer {req.app_digest[:12]} is not on host {self.host}")

    def _existing(self, key: InstanceKey) -> InstanceDir:
        d = instance_dir(self.base, key)
        if read_meta(d) is None:
            raise NotFound(f"instance {key} does not exist on host {self.host}")
        return d

    def _start(self, d: InstanceDir, req: InstanceRequest, verb: str) -> None:
        self._files[req.key] = dict(req.files)
        update_meta(d, warm=req.warm)
        if req.warm:  # made, not started (as the container runtime's warm instances)
            self._runs.pop(req.key, None)
            return
        now = self.clock()
        _log(d, f"--- rackfire: starting {req.key} (fake)", now)
        self._fail_if_set(verb, req.key)  # where runc or Popen would fail
        end = self.exits.get(req.command)
        self._runs[req.key] = _Run(self._next_pid, now + end.after if end else None,
                                   end.code if end else 0)
        self._next_pid += 1
        update_meta(d, started_at=now, exit_code=None)

    def _stop(self, key: InstanceKey) -> None:
        run = self._runs.get(key)
        if run is not None and self._running(run):
            run.running = False  # stopped, not ended by itself: no exit code

    def _running(self, run: _Run) -> bool:
        if run.running and run.ends_at is not None and self.clock() >= run.ends_at:
            run.running, run.exit_code = False, run.code
        return run.running


def _log(d: InstanceDir, line: str, now: float) -> None:
    """A record in the console log's own format, as the log writer writes them."""
    d.root.mkdir(parents=True, exist_ok=True)
    with open(d.log, "ab") as f:
        f.write(encode(timestamp(int(now * 1e9)), b"stdout", line.encode()))
