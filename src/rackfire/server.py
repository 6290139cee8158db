"""`rackfire server`: the composition root. Wires the store, the local agent, the controller
and the API together, and runs them until asked to stop. Instances keep running after it."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from dataclasses import replace
from pathlib import Path

import uvicorn

from rackfire.agent.hostside import HostSide
from rackfire.agent.inprocess import InProcessLink
from rackfire.agent.local import LocalAgent
from rackfire.agent.remote import RemoteAgent
from rackfire.agent.streams import InProcessStreams
from rackfire.api.app import create_app
from rackfire.control.controller import Controller
from rackfire.control.fleet import Fleet
from rackfire.control.hosts import DEFAULT_LIVENESS, Liveness
from rackfire.errors import PrereqError
from rackfire.model.stack import RuntimeKind
from rackfire.plan.ipam import DEFAULT_POOL
from rackfire.store import Store


def ensure_token(data_dir: Path) -> str:
    """The API's bearer token, made once (0600): whoever can read it may drive the server,
    which runs as root; the CLI run by root reads it from here."""
    path = data_dir / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 7480,
          subnet_pool: str = DEFAULT_POOL, runtime: RuntimeKind | None = None,
          local_host: bool = True, liveness: Liveness = DEFAULT_LIVENESS) -> None:
    """`local_host`: this machine runs instances too (else only the joined hosts do)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # rendered config, env values, logs, disks: root's only
    token = ensure_token(data_dir)
    lock = open(data_dir / "server.lock", "w")  # noqa: SIM115 - held for the process' life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PrereqError(f"another rackfire server is running on {data_dir}",
                          hint="stop it with `rackfire server stop`") from None
    lock.write(str(os.getpid()))
    lock.flush()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(data_dir / "rackfire.db")
    agent = LocalAgent(data_dir, runtimes=(runtime,) if runtime else None)
    # The server's own host through the same call table as a joined one, in-process.
    home = InProcessLink(HostSide(agent, data_dir), streams=InProcessStreams(agent))
    fleet = Fleet(home, agent, store, RemoteAgent, local_pool=local_host,
                  liveness=replace(liveness, since=time.time()))
    controller = Controller(store, fleet, subnet_pool=subnet_pool)
    stopping = threading.Event()
    app = create_app(controller, stopping.set, data_dir / "uploads", token)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="off"))

    def shutdown_when_asked() -> None:
        stopping.wait()
        server.should_exit = True

    threading.Thread(target=shutdown_when_asked, daemon=True).start()
    controller.start()
    try:
        server.run()
    finally:
        controller.stop()
        store.close()
        lock.close()
