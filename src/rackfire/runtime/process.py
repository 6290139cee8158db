"""The process runtime: plain processes for a machine without root or runc.

Not isolated: no namespaces, no limits, the host's network (IP 127.0.0.1). Each instance has
its own working dir (its rendered files land under it, at their paths relative to `/`), its
environment, and its log. `rackfire ps` marks these instances `not isolated`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, InstanceState
from rackfire.model.runtime import Capabilities, NetworkMode
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RuntimeKind
from rackfire.net.attach import Attachment
from rackfire.runtime import logwriter, stats
from rackfire.runtime.base import ExecHandle, RootFs
from rackfire.runtime.execproc import ExecProcess, start_on_pty
from rackfire.runtime.layout import (
    InstanceDir,
    instance_dir,
    list_instance_dirs,
    read_meta,
    remove_instance_dir,
    resources_of,
    run_of,
    swap_config,
    update_meta,
    write_config_layer,
    write_meta,
)
from rackfire.runtime.reload import (
    begin as begin_reload,
)
from rackfire.runtime.reload import (
    changed_files,
    mode_of,
    trigger,
    write_beneath,
)


class ProcessRuntime:
    kind = RuntimeKind.PROCESS
    # A resize records what was asked (there is no limit to apply): live, as far as it goes.
    caps = Capabilities(network=NetworkMode.HOST, reload=True, exec=True, live_resize=True)

    def __init__(self, base: Path, host: str) -> None:
        self.base = base
        self.host = host
        self._cpu = stats.CpuSampler()
        base.mkdir(parents=True, exist_ok=True)

    # Its root is the host's: the RootFs is not used, nor the attachment (the host network).

    def create(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        _refuse_unsupported(req)
        d = instance_dir(self.base, req.key)
        if d.root.exists():
            self.destroy(req.key)
        write_meta(d, req, phase="creating")
        write_config_layer(d.workdir, req.files, req.key.name)
        self._start(d, req)
        update_meta(d, phase="created")

    def reconfigure(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        _refuse_unsupported(req)
        d = instance_dir(self.base, req.key)
        self._stop(d, req.stop_timeout)
        # Its working dir holds its data too: swap only the rendered files.
        swap_config(d, d.workdir, req, replace_all=False)
        self._start(d, req)

    def restart(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        _refuse_unsupported(req)
        d = instance_dir(self.base, req.key)
        self._stop(d, req.stop_timeout)
        self._start(d, req)

    def reload(self, req: InstanceRequest) -> None:
        """New contents for its rendered files in its working dir, then its `reload`: a
        signal to its main process, or the command run as `exec` runs one."""
        d = instance_dir(self.base, req.key)
        meta, sig = begin_reload(read_meta(d), req, self.host)
        for path, content in changed_files(d.workdir, req):
            write_beneath(d.workdir, path, content, mode_of(d.workdir / path.lstrip("/")))
        update_meta(d, config_hash=req.config_hash, files_layout=req.files_layout)
        pid = _poll(meta.get("pid"), meta.get("pid_start"))
        if not pid or meta.get("phase") != "created":
            return  # it reads the new files when it starts


        def send(sig: signal.Signals) -> None:
            try:
                os.kill(pid, sig)  # its main process, as a container's init gets it
            except ProcessLookupError:
                raise ExecError(f"{req.key} exited before its reload") from None

        trigger(d, meta, req, sig, send, lambda argv: self.exec(req.key, argv, tty=False))

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        d = instance_dir(self.base, key)
        self._stop(d, timeout=stop_timeout)
        remove_instance_dir(d)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._stop(instance_dir(self.base, key), timeout=stop_timeout)

    def check_resize(self, req: InstanceRequest) -> None:
        """Nothing to refuse: a process instance has no limits or disk of its own."""

    def resize(self, req: InstanceRequest) -> None:
        # Not isolated: no limit to apply. Recorded, so observe() shows what was asked.
        d = instance_dir(self.base, req.key)
        if read_meta(d) is None:
            raise NotFound(f"instance {req.key} does not exist on host {self.host}")
        logwriter.write_limits(d.log, req.logs)  # its writer takes them within a second
        update_meta(d, resources=asdict(req.resources), spec_hash=req.spec_hash,
                    spec_fields=[list(p) for p in req.spec_fields])

    def stats(self, keys: list[InstanceKey]) -> list[InstanceStats]:
        found = []  # (key, dir, pid if it runs, token of this run)
        for key in keys:
            d = instance_dir(self.base, key)
            meta = read_meta(d)
            if meta is None or meta.get("runtime") != self.kind.value:
                continue
            pid = _poll(meta.get("pid"), meta.get("pid_start"))
            found.append((key, d, pid, f"{key.id}@{pid}@{meta.get('pid_start')}"))
        cpu = self._cpu.percents({token: partial(_session_cpu_ns, pid)
                                  for _, _, pid, token in found if pid})
        return [_stats_of(key, d, pid, cpu.get(token)) for key, d, pid, token in found]

    def observe(self) -> list[InstanceFacts]:
        facts = []
        for key, d in list_instance_dirs(self.base):
            meta = read_meta(d)
            if meta is None or meta.get("runtime") != self.kind.value:
                continue
            pid = _poll(meta.get("pid"), meta.get("pid_start"))
            if meta.get("phase") != "created":
                state = InstanceState.PARTIAL
            else:
                state = InstanceState.RUNNING if pid else InstanceState.STOPPED
            ended = (logwriter.read_exit(d.log, meta.get("pid"))
                     if state is InstanceState.STOPPED else None)
            facts.append(InstanceFacts(
                key=key, state=state, runtime=self.kind, host=self.host, ip="127.0.0.1",
                spec_hash=meta.get("spec_hash", ""),
                spec_fields=tuple((a, b) for a, b in meta.get("spec_fields", ())),
                config_hash=meta.get("config_hash", ""), started_at=meta.get("started_at"),
                files_layout=meta.get("files_layout", ""),
                resources=resources_of(meta),
                pid=pid, exit_code=ended.code if ended else None,
                exit_signal=ended.signal if ended else None,
                **run_of(meta),
            ))
        return facts

    def fence_target(self, key: InstanceKey) -> dict[str, Any] | None:
        """For the watchdog: its session's pid with its start time (a reused pid is not it)."""
        d = instance_dir(self.base, key)
        meta = read_meta(d) or {}
        pid = _poll(meta.get("pid"), meta.get("pid_start"))
        if not pid or meta.get("pid_start") is None:
            return None
        return {"kind": "pid", "pid": pid, "start": meta["pid_start"]}

    def netns(self, key: InstanceKey) -> str | None:
        return None

    def log_path(self, key: InstanceKey) -> Path:
        return instance_dir(self.base, key).log

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        """Run `argv` in the instance's working dir with the environment its running process
        started with (/proc/PID/environ: the rendered env is not kept anywhere else)."""
        d = instance_dir(self.base, key)
        meta = read_meta(d)
        if meta is None:
            raise NotFound(f"no instance {key}", hint="`rackfire ps` lists the instances")
        pid = _poll(meta.get("pid"), meta.get("pid_start"))
        if not pid or meta.get("phase") != "created":
            raise PrereqError(f"instance {key} is not running",
                              hint=f"`rackfire ps {key.stack}` shows its state")
        env = _environ(pid)
        if not tty:
            try:
                return ExecHandle(ExecProcess(
                    argv, cwd=d.workdir, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
            except OSError as e:
                raise ExecError(f"cannot run {argv[0]!r} in {key}: {e.strerror or e}") from None
        env.setdefault("TERM", "xterm")
        # setsid -c: a new session whose controlling terminal is the pty, for job control and
        # Ctrl-C (Popen cannot make one without a preexec_fn).
        return start_on_pty(lambda pty: ExecProcess(
            ["setsid", "--ctty", "--wait", *argv], cwd=d.workdir, env=env, stdin=pty,
            stdout=pty, stderr=pty))

    def _start(self, d: InstanceDir, req: InstanceRequest) -> None:
        update_meta(d, warm=req.warm)
        if req.warm:  # nothing to make ready: started when it is wanted
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d.workdir),
            "RACKFIRE_STACK": req.key.stack, "RACKFIRE_ROLE": req.key.role,
            "RACKFIRE_INDEX": str(req.key.index), "RACKFIRE_IP": "127.0.0.1",
            "RACKFIRE_ROOT": str(d.workdir), **dict(req.env),
        }
        # Its log writer starts it, with its stdout and stderr pipes to the writer, which
        # stamps and rotates the console log and records how it ends (runtime/logwriter.py).
        writer = logwriter.launch(d.log, req.logs,
                                  f"--- rackfire: starting {req.key} at {time.ctime()}",
                                  logwriter.Launch(tuple(req.command), env, cwd=d.workdir))
        if writer.main is None:
            raise ExecError(f"cannot start {req.key}: {writer.error}")
        update_meta(d, pid=writer.main, pid_start=_start_time(writer.main),
                    started_at=time.time())

    def _stop(self, d: InstanceDir, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        meta = read_meta(d) or {}
        pid = _poll(meta.get("pid"), meta.get("pid_start"))
        if not pid:
            return
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _poll(pid, meta.get("pid_start")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _poll(pid, meta.get("pid_start")) and time.monotonic() < deadline:
            time.sleep(0.02)


def _refuse_unsupported(req: InstanceRequest) -> None:
    """What only a container can have, refused before any change."""
    needs = [what for what, asked in (("a data disk", req.data is not None),
                                      ("an app release layer", bool(req.app_digest))) if asked]
    if needs:
        raise PrereqError(f"{req.key}: {' and '.join(needs)} needs the container runtime "
                          "(the process runtime has no disk or root filesystem of its own)",
                          hint="use runtime: container (root and runc) for this role")


def _session_cpu_ns(sid: int) -> int | None:
    usage = stats.session_usage(sid)
    return usage.cpu_ns if usage.pids else None


def _stats_of(key: InstanceKey, d: InstanceDir, pid: int | None,
              cpu: float | None) -> InstanceStats:
    """Its session's processes (no cgroup of its own); its working dir is its disk."""
    usage = stats.session_usage(pid) if pid else stats.ProcUsage(0, 0, 0)
    return InstanceStats(key, cpu if pid else 0.0, usage.rss, None,
                         stats.tree_size(d.workdir), None, None, None, usage.pids)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as e:
        raise PrereqError(f"cannot read the environment of pid {pid}: {e.strerror}") from None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {os.fsdecode(k): os.fsdecode(v) for k, _, v in pairs}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # its own session: the whole group, children included


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat tells a PID apart from a later process reusing it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _poll(pid: int | None, started: int | None) -> int | None:
    """Its pid if it still runs: /proc still shows the same process (its writer reaps it)."""
    if not pid or started is None or _start_time(pid) != started:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None
    return None if state in ("Z", "X") else pid
