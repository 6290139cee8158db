"""A real rackfire server in a subprocess, driven through the real CLI, as a user would.

Each test gets its own data dir, API port and stack network pool; stack names are unique
per test so that leftovers, if any, name the test that made them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RUNC_ROOT = "/run/rackfire/runc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@dataclass
class Server:
    data_dir: Path
    port: int = field(default_factory=free_port)
    # several suites may run side by side on one machine, each with a pool of its own
    pool: str = field(default_factory=lambda: os.environ.get("RACKFIRE_TEST_POOL", "10.89.0.0/16"))
    runtime: str | None = None
    listen: str = "127.0.0.1"  # the test bed's agents reach it on the underlay: 0.0.0.0
    args: tuple[str, ...] = ()  # more `rackfire server` options
    server_env: dict[str, str] = field(default_factory=dict)  # e.g. RACKFIRE_FAILPOINTS
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is not None:
            self.proc.wait(30)  # a server told to stop over the API must be gone first
        args = [sys.executable, "-m", "rackfire", "server", "--data-dir", str(self.data_dir),
                "--port", str(self.port), "--subnet-pool", self.pool, "--listen", self.listen]
        if self.runtime:
            args += ["--runtime", self.runtime]
        args += self.args
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.server_env})
        log.close()
        wait_for(lambda: self._alive(), 30, "server to answer")

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {(self.data_dir / 'server.log').read_text()}")
        try:
            return httpx.get(self.url + "/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def cli(self, *args: str, check: bool = True, timeout: float = 180,
            input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`env`: more variables for the CLI (a repository's keys, say)."""
        proc = subprocess.run([sys.executable, "-m", "rackfire", *args],
                              env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, input=input,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"rackfire {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def env(self) -> dict[str, str]:
        """What the CLI needs to reach this server: its URL, and its data dir for the token."""
        return {**os.environ, "RACKFIRE_URL": self.url, "COLUMNS": "200",
                "RACKFIRE_DATA_DIR": str(self.data_dir)}

    def ps(self, stack: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("ps", stack, "--json").stdout)
        return rows

    def api(self, path: str) -> Any:
        return httpx.get(self.url + path, headers=self.auth, timeout=10).json()

    @property
    def auth(self) -> dict[str, str]:
        token = (self.data_dir / "token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}


def wait_for(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_stack(tmp: Path, text: str, name: str = "stack.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def runc_ids() -> set[str]:
    proc = subprocess.run(["runc", "--root", RUNC_ROOT, "list", "--format", "json"],
                          capture_output=True, text=True, check=False)
    return {c["id"] for c in (json.loads(proc.stdout or "null") or [])}


def runc_exec(instance_id: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runc", "--root", RUNC_ROOT, "exec", instance_id, *cmd],
                          capture_output=True, text=True, timeout=60, check=False)


def host_traces(stack: str) -> list[str]:
    """Everything on this host that carries the stack's name: must be empty after destroy."""
    from rackfire.net import links, names

    found = []
    found += [f"netns {n}" for n in links.owned_netns()
              if n.startswith(f"rf-{stack}.") or f"_{stack}." in n]  # (a bed agent: scoped)
    found += [f"link {n}" for n in links.owned_links() if n == names.bridge_name(stack)]
    from rackfire.net import mesh  # the host's own address in the stack's subnet

    found += [f"link {n}" for n in links.owned_links() if n in mesh.mesh_names(stack)]
    found += [f"rule {r}" for r in mesh.owned_mesh_rules()
              if r.endswith(f" lookup {mesh.mesh_table(stack)}")]
    found += [f"container {c}" for c in runc_ids() if c.startswith(f"{stack}.")]
    for ctrl in ("memory", "cpu", "pids", "cpuacct", "blkio", "devices", "freezer", "cpuset"):
        parent = Path("/sys/fs/cgroup") / ctrl / "rackfire"
        if parent.is_dir():
            found += [f"cgroup {ctrl}/{p.name}" for p in parent.iterdir()  # (bed: scoped)
                      if p.is_dir() and (p.name.startswith(f"{stack}.") or f"_{stack}." in p.name)]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines()
              if f"/{stack}." in line.split()[4]]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines()
              if f"/{stack}." in line or f"/volumes/{stack}/" in line]
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [f"process {line.strip()}" for line in procs.splitlines()
              if f"stacks/{stack}/" in line]
    found += [f"nft table {t}" for t in nft_tables(stack)]
    return found


def nft_tables(stack: str) -> list[str]:
    """The stack's nftables table (net/egress.py) in this netns and in every test bed host's
    (`rfh-*`, where bed agents run the stack), as `[<netns>:]inet <table>`."""
    from rackfire.net import egress
    from rackfire.testbed.bed import HOST_NETNS_PREFIX, nsenter_argv

    if shutil.which("nft") is None:
        return []
    table = egress.table_name(stack)
    found = [f"inet {table}" for t in egress.owned_tables() if t == table]
    spaces = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    for ns in sorted(n for n in spaces if n.startswith(HOST_NETNS_PREFIX)):
        out = subprocess.run(nsenter_argv(ns, ["nft", "-j", "list", "tables", "inet"]),
                             capture_output=True, text=True, timeout=30, check=False).stdout
        names = [t["table"]["name"] for t in json.loads(out or '{"nftables": []}')["nftables"]
                 if "table" in t]
        found += [f"{ns}: inet {table}" for n in names if n == table]
    return found


def start_agent(data_dir: Path, *args: str,
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A `rackfire agent` process on this machine (a heartbeat every 0.5 s), its log beside
    its data dir (`<data_dir>.log`); the test stops it, by its pid."""
    with open(data_dir.parent / f"{data_dir.name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "rackfire", "agent", "--data-dir",
                                 str(data_dir), "--interval", "0.5", *args],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})


def reported_address(server: Server, name: str) -> str:
    """The API address the host `name` reported in its heartbeats, once it has."""
    def address() -> str:
        rows = json.loads(server.cli("hosts", "--json").stdout)
        return next((h["address"] for h in rows if h["name"] == name), "")
    return str(wait_for(address, 30, f"{name} to join and report"))


def _epoch(data_dir: Path) -> int:
    try:
        return int((data_dir / "epoch").read_text())
    except (OSError, ValueError):
        return 0


def agent_client(name: str, address: str, data_dir: Path) -> Any:
    """The agent that joined with `data_dir`, as the controller calls it (with the agent
    key it keeps there), once its API answers. A RemoteAgent; the test closes it."""
    from rackfire.agent.remote import RemoteAgent
    from rackfire.errors import RackfireError

    key = json.loads((data_dir / "credential.json").read_text())["agent_key"]
    # As the controller does: stamped with the epoch the agent was last told.
    remote = RemoteAgent(name, address, key, epoch=lambda: _epoch(data_dir))

    def answers() -> bool:
        try:
            remote.info()
        except RackfireError:
            return False
        return True

    wait_for(answers, 30, f"{name}'s agent API")
    return remote
