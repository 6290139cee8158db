"""A fresh test bed for a benchmark: simulated hosts (a netns each on an underlay bridge, a
real agent in each), a server with `--no-local-host`, a host killed as the chaos suite kills
one, and everything removed at the end. What bench/failover.py does with its own constants,
here with a root directory, an API port and a subnet pool of the caller's (bench/dbfailover.py
uses it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.rfserver import BenchServer

INTERVAL = 0.5  # agents' heartbeat, as the bed starts them


class Api:
    """The server's HTTP API, as the CLI's token reaches it."""

    def __init__(self, data: Path, port: int) -> None:
        token = (data / "token").read_text().strip()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 trust_env=False,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, route: str, **params: str) -> Any:
        r = self.http.get(route, params=params)
        r.raise_for_status()
        return r.json()

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.get("/v1/hosts")}

    def instances(self, stack: str) -> dict[str, dict[str, Any]]:
        """`role/index` -> the server's row of it."""
        return {f"{r['role']}/{r['index']}": r for r in self.get("/v1/instances", stack=stack)}

    def events_since(self, t0: float, limit: int = 500) -> list[dict[str, Any]]:
        return [e for e in self.get("/v1/events", limit=str(limit)) if e["time"] >= t0]


def wait(fn: Callable[[], Any], timeout: float, what: str,
         explain: Callable[[], str] = lambda: "", every: float = 0.2) -> Any:
    """What `fn` returns once it is true, tried every `every` seconds; RuntimeError (with
    `explain()` appended) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}" + explain())


class BedRun:
    """The bed, its server and agents, kept in a state file `testbed down` reads."""

    def __init__(self, root: Path, port: int, pool: str, hosts: int = 3) -> None:
        from rackfire.testbed.bed import Bed

        self.root, self.port, self.n = root, port, hosts
        self.data = root / "data"  # `testbed down` removes it whole: the state file stays out
        self.state = root / "bed.json"
        self.logs = root / "logs"
        self.bed = Bed(hosts)
        self.server = BenchServer(self.data, pool, port=port,
                                  args=("--listen", "0.0.0.0", "--no-local-host"))
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self.api: Api | None = None

    def agent_dir(self, host: str) -> Path:
        return self.data / f"agent-{host}"

    def ip(self, host: str) -> str:
        return self.bed.host(host).ip

    def save(self) -> None:
        state = {"bed": self.bed.id, "n": self.n, "subnet": str(self.bed.subnet),
                 "hosts": [h.name for h in self.bed.hosts],
                 "server": self.server.proc.pid if self.server.proc else 0,
                 "agents": [p.pid for p in self.agents.values()],
                 "data_dir": str(self.data), "port": self.port}
        self.state.write_text(json.dumps(state))

    def up(self) -> Api:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bed.create()
        self.save()
        self.server.start()
        self.save()
        out = self.server.cli("token", "create", "--uses", str(self.n))
        if out.returncode != 0:
            raise RuntimeError(f"token create: {out.stderr}")
        self.token = out.stdout.split()[0]
        for h in self.bed.hosts:
            self.start_agent(h.name)
        self.api = api = Api(self.data, self.port)
        wait(lambda: sum(1 for h in api.hosts().values() if h["state"] == "ready"
                         and h["address"]) == self.n, 60, "the agents to join")
        return api

    def start_agent(self, host: str) -> None:
        rack = {h.name: f"r{n}" for n, h in enumerate(self.bed.hosts, 1)}[host]
        d = self.agent_dir(host)
        d.mkdir(parents=True, exist_ok=True)
        self.agents[host] = self.bed.start_agent(
            host, f"http://{self.bed.controller_ip}:{self.port}", self.token, str(d),
            {"rack": rack}, interval=INTERVAL, log=str(d / "agent.log"))
        self.save()

    def kill_host(self, host: str) -> float:
        """As the chaos suite's kill_host: link, agent, watchdog, HAProxy, containers; the
        time.time() its link was down (nothing reaches it from then on)."""
        self.bed.cut(host)
        cut = time.time()
        proc = self.agents.pop(host)
        proc.kill()
        proc.wait(10)
        self.save()
        self.bed.kill_all(host)
        root = self.bed.runc_root(host)
        ids = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True,
                             text=True, timeout=60, check=False).stdout.split()
        for cid in ids:
            subprocess.run(["runc", "--root", root, "kill", cid, "KILL"],
                           capture_output=True, timeout=60, check=False)
        return cut

    def revive(self, host: str) -> None:
        """The killed host back: its link up, its agent started again."""
        self.bed.cut(host, up=True)
        self.start_agent(host)

    def exec(self, host: str, instance_id: str, *cmd: str,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`cmd` inside a container of the host's agent (runc exec)."""
        return subprocess.run(["runc", "--root", self.bed.runc_root(host), "exec",
                               instance_id, *cmd], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def copies(self) -> dict[str, list[tuple[str, str]]]:
        """Instance id -> (host, runc status) of every container of it on the bed."""
        from rackfire.runtime import runcstate

        out: dict[str, list[tuple[str, str]]] = {}
        for h in self.bed.hosts:
            for cid, c in runcstate.containers(Path(self.bed.runc_root(h.name))).items():
                out.setdefault(cid, []).append((h.name, c.status))
        return out

    def keep_logs(self, extra: dict[str, str] | None = None) -> Path:
        """The server's, agents' and watchdogs' logs (and `extra`: name -> text) copied
        out of the data dir, which `down` removes."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for src in [self.data / "server.log", *self.data.glob("agent-*/agent.log"),
                    *self.data.glob("agent-*/watchdog/log")]:
            if src.exists():
                shutil.copyfile(src, self.logs / "_".join(src.relative_to(self.data).parts))
        for name, text in (extra or {}).items():
            (self.logs / name).write_text(text)
        return self.logs

    def down(self) -> None:
        from rackfire.testbed import cluster

        try:
            cluster.down(str(self.state))
        except SystemExit as e:  # it names what it could not remove, and keeps the state
            raise RuntimeError(f"testbed down failed ({e.code}): see above; run "
                               f"`python -m rackfire.testbed down --state {self.state}` "
                               "again") from None
        finally:
            for p in self.agents.values():  # reaped: `down` ended them by pid
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            self.server.stop()  # gone already; this reaps it
            self.bed.destroy()  # no-op but for reaping what it started

    def left(self) -> list[str]:
        """What of this bed is still on the machine: its links and netns, its runc roots,
        HAProxy or rackfire processes of its data dir, the server."""
        left = list(self.bed.leftovers())
        for h in self.bed.hosts:
            root = Path(self.bed.runc_root(h.name))
            if root.exists():
                left.append(f"runc root {root}")
        for pattern, what in (("haproxy", "haproxy"), ("rackfire", "process")):
            out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True,
                                 check=False).stdout
            left += [f"{what} {line}" for line in out.splitlines() if str(self.data) in line]
        if self.server.proc is not None and self.server.proc.poll() is None:
            left.append(f"server pid {self.server.proc.pid}")
        return sorted(set(left))
