"""`rackfire agent`: a host joins a controller once with a join token, keeps the credential
it gets for it (`<data-dir>/credential.json`, 0600) and from then on reports its facts in a
heartbeat. Restarted, it carries on with the credential; the token is not needed again.

(Converging the host to the assignment the controller publishes comes with placement
across hosts; until then a joined host reports, and gets no instances.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from rackfire.agent.local import LocalAgent
from rackfire.errors import PrereqError

log = logging.getLogger("rackfire.agent")
CREDENTIAL = "credential.json"
BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Joined:
    url: str
    name: str
    credential: str


def load_credential(data_dir: Path) -> Joined | None:
    path = data_dir / CREDENTIAL
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return Joined(d["url"], d["name"], d["credential"])


def _save_credential(data_dir: Path, joined: Joined) -> None:
    tmp = data_dir / (CREDENTIAL + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": joined.url, "name": joined.name,
                   "credential": joined.credential}, f)
    os.replace(tmp, data_dir / CREDENTIAL)


def join(url: str | None, token: str | None, name: str | None, labels: dict[str, str],
         data_dir: Path, agent: LocalAgent, interval: float) -> Joined:
    """The credential this host joined with before, or a new one for the token."""
    known = load_credential(data_dir)
    if known is not None:
        if url and url.rstrip("/") != known.url:
            raise PrereqError(f"this agent joined {known.url}, not {url}",
                              hint=f"remove {data_dir / CREDENTIAL} to join another")
        return known
    if not url or not token:
        raise PrereqError("this host has not joined yet: give --join URL and --token",
                          hint="make a token on the controller with `rackfire token create`")
    host = name or default_name()
    r = httpx.post(f"{url.rstrip('/')}/v1/agent/join", timeout=30, json={
        "token": token, "name": host, "labels": labels,
        "facts": agent.facts(interval).to_json()})
    if r.status_code != 200:
        raise PrereqError(f"joining {url} failed: {_message(r)}",
                          hint="check the token (`rackfire token create` makes a new one)")
    joined = Joined(url.rstrip("/"), host, r.json()["credential"])
    _save_credential(data_dir, joined)
    return joined


def heartbeat_loop(joined: Joined, labels: dict[str, str], agent: LocalAgent,
                   interval: float, stop: threading.Event) -> None:
    """Report facts every `interval`; back off while the controller cannot be reached.
    Returns (an error) when the controller no longer knows this host's credential."""
    delay = interval
    with httpx.Client(base_url=joined.url, timeout=10, headers={
            "Authorization": f"Bearer {joined.credential}"}) as http:
        while not stop.is_set():
            try:
                r = http.post("/v1/agent/heartbeat", json={
                    "labels": labels, "facts": agent.facts(interval).to_json()})
            except httpx.TransportError as e:
                log.warning("controller %s unreachable (%s); retrying in %.0fs",
                            joined.url, type(e).__name__, delay)
                delay = min(BACKOFF_MAX, delay * 2)
            else:
                if r.status_code != 200:
                    raise PrereqError(f"the controller refused this host: {_message(r)}",
                                      hint="join again with a new token")
                delay = interval
            stop.wait(delay)


def default_name() -> str:
    return socket.gethostname().split(".")[0].lower()


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}"


def run(url: str | None, token: str | None, name: str | None, labels: dict[str, str],
        data_dir: Path, interval: float) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    known = load_credential(data_dir)
    agent = LocalAgent(data_dir, host=known.name if known else name or default_name())
    joined = join(url, token, agent.host, labels, data_dir, agent, interval)
    log.info("host %s joined %s; heartbeat every %.1fs", joined.name, joined.url, interval)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    heartbeat_loop(joined, labels, agent, interval, stop)
