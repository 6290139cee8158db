"""`rackfire agent`: a host joins a controller once with a join token, keeps the credential
and agent key it gets for it (`<data-dir>/credential.json`, 0600) and from then on reports
its facts and its instances' in a heartbeat (at once when an instance changed), and serves
the call table (agent/rpc.py) to whoever presents the agent key: the controller. Restarted,
it carries on with the credential (the token is not needed again) and with the epoch it was
last told (`<data-dir>/epoch`: agent/hostside.py). Image layers it is asked to ensure come
from the controller (`GET /v1/agent/layers/<digest>`, the credential as bearer), verified
by their digest; a fetched layer that no instance uses is kept for `RACKFIRE_LAYER_GRACE`
seconds (default 600) before `collect_layers` may remove it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from rackfire.agent.hostside import HostSide
from rackfire.agent.local import LAYER_GRACE, LocalAgent
from rackfire.agent.rpc import serve_agent
from rackfire.agent.watchdog import Watchdog
from rackfire.errors import ExecError, NotFound, PrereqError
from rackfire.model.agent import Observed
from rackfire.model.instance import InstanceKey
from rackfire.model.wire import encode
from rackfire.runtime.container import RUNC_ROOT

log = logging.getLogger("rackfire.agent")
CREDENTIAL = "credential.json"
# Retries back off only this far: a heartbeat renews the lease, and a host whose link is
# back must be heard again within about a lease (its replaced copies go at that beat).
BACKOFF_MAX = 2.0
# A heartbeat's answer takes milliseconds. One not answered within this is given up and sent
# again at once on a new connection: a request stuck on a link that was down is retransmitted
# by TCP only seconds after the link is back, and the lease would wait on it.
BEAT_TIMEOUT = httpx.Timeout(2.0, connect=1.0)
WATCH = 0.5  # seconds between looks at this host's instances
HOLD_INTERVAL = 10.0  # a planned restart's last beat: the next within this (a lease of 30 s)


@dataclass(frozen=True, slots=True)
class Joined:
    url: str
    name: str
    credential: str
    agent_key: str


def load_credential(data_dir: Path) -> Joined | None:
    path = data_dir / CREDENTIAL
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    return Joined(d["url"], d["name"], d["credential"], d["agent_key"])


def _save_credential(data_dir: Path, joined: Joined) -> None:
    tmp = data_dir / (CREDENTIAL + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": joined.url, "name": joined.name, "credential": joined.credential,
                   "agent_key": joined.agent_key}, f)
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
    body = r.json()
    joined = Joined(url.rstrip("/"), host, body["credential"], body["agent_key"])
    _save_credential(data_dir, joined)
    return joined


def heartbeat_loop(joined: Joined, labels: dict[str, str], side: HostSide, agent: LocalAgent,
                   interval: float, stop: threading.Event, address: str = "",
                   watchdog: Watchdog | None = None,
                   hold: threading.Event | None = None) -> None:
    """Report the host's facts every `interval`, and its instances' at once when they
    changed (looked at every WATCH seconds: a crash is known within about that); a beat
    with nothing new says its instances are `unchanged`, unless the controller wants them
    all again (it restarted). Adopt the epoch the controller answers with. Back off while
    it cannot be reached. Returns (an error) when it no longer knows this credential."""
    delay = interval
    contact = Contact(joined.url)
    told: Observed | None = None  # what the controller last accepted of its instances
    want_all = True
    next_beat = 0.0
    with httpx.Client(base_url=joined.url, timeout=BEAT_TIMEOUT, headers={
            "Authorization": f"Bearer {joined.credential}"}) as http:
        while not stop.is_set():
            observed = side.observed()
            new = want_all or told is None or (observed.boot, observed.done, observed.facts) \
                != (told.boot, told.done, told.facts)
            if (new and delay == interval) or time.monotonic() >= next_beat:
                body = {"labels": labels, "facts": agent.facts(interval).to_json(),
                        "address": address}
                body |= {"observed": encode(observed)} if new else {"unchanged": True}
                sent = time.monotonic()
                try:
                    r = http.post("/v1/agent/heartbeat", json=body)
                except httpx.TimeoutException as e:  # it waited already: again, now
                    contact.missed(sent, f"{type(e).__name__}; retrying")
                    next_beat = time.monotonic()
                except httpx.TransportError as e:
                    contact.missed(sent, f"{type(e).__name__}; retrying in {delay:.1f}s")
                    next_beat = time.monotonic() + delay
                    delay = min(max(interval, BACKOFF_MAX), delay * 2)
                else:
                    if r.status_code != 200:
                        raise PrereqError(f"the controller refused this host: {_message(r)}",
                                          hint="join again with a new token")
                    answer = r.json()
                    side.adopt(int(answer.get("epoch", 0)))
                    side.replaced(_runs(answer.get("replaced", ())))
                    if side.sweep():  # gone before anything else: they must not serve
                        want_all = True
                    fence_after = float(answer.get("fence_after", 0) or 0)
                    contact.renewed(sent, fence_after, float(answer.get("lease", 0) or 0))
                    if watchdog is not None:  # from `sent`: never later than the controller's
                        watchdog.feed(sent + fence_after if fence_after else None,
                                      contact.targets(agent))
                    told = observed if new else told
                    want_all = want_all or bool(answer.get("want_observed", False))
                    delay, next_beat = interval, time.monotonic() + interval
            if watchdog is not None:  # what started or stopped since the beat is fed now
                watchdog.refresh(contact.targets(agent))
            stop.wait(min(WATCH, interval))
        if hold is not None and hold.is_set():
            _hold_lease(http, labels, address, agent, watchdog, contact)


def _hold_lease(http: httpx.Client, labels: dict[str, str], address: str, agent: LocalAgent,
                watchdog: Watchdog | None, contact: Contact) -> None:
    """A last heartbeat before a planned restart (SIGUSR1: an upgrade, new labels), saying
    the next comes within HOLD_INTERVAL: the controller holds the lease that much longer,
    and the watchdog's deadline with it, so the instances neither fail over nor are fenced
    while the next agent starts. Unanswered: nothing held, as after a crash."""
    body = {"labels": labels, "facts": agent.facts(HOLD_INTERVAL).to_json(),
            "address": address, "unchanged": True}
    sent = time.monotonic()
    try:
        r = http.post("/v1/agent/heartbeat", json=body)
    except httpx.TransportError as e:
        log.warning("the lease could not be held for the restart: %s", e)
        return
    if r.status_code == 200:
        fence_after = float(r.json().get("fence_after", 0) or 0)
        if watchdog is not None and fence_after:
            watchdog.feed(sent + fence_after, contact.targets(agent))
        log.info("lease held %.0fs for the restart", fence_after)


class Contact:
    """The agent's own view of its lease: renewed by each answered heartbeat, lost once one
    went unanswered for longer than the controller's lease would hold. Each change is
    logged (the controller records its side as host events)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_ok: float | None = None  # monotonic: when the last answered beat was sent
        self.fence_after = self.lease = 0.0
        self.lost = False

    def renewed(self, sent: float, fence_after: float, lease: float = 0.0) -> None:
        if self.lost and self.last_ok is not None:
            log.warning("controller %s reached again after %.1fs", self.url, sent - self.last_ok)
        self.last_ok, self.fence_after, self.lease, self.lost = sent, fence_after, lease, False

    def targets(self, agent: LocalAgent) -> list[dict[str, Any]]:
        """What the watchdog stops unless fed again: the fencing instances (at the feed's
        deadline) and the floating addresses held here (at the lease's end)."""
        ends = self.last_ok + self.lease if self.last_ok is not None and self.lease else None
        return agent.fence_targets() + (agent.vips.targets(ends) if ends else [])

    def missed(self, now: float, why: str) -> None:
        silent = now - self.last_ok if self.last_ok is not None else 0.0
        if not self.lost:
            log.warning("controller %s unreachable (%s)", self.url, why)
        if not self.lost and self.fence_after and silent > self.fence_after:
            log.warning("lease not renewed for %.1fs: this host's watchdog stops what "
                        "fences (it is replaced elsewhere)", silent)
            self.lost = True


def _runs(items: Iterable[Any]) -> list[tuple[InstanceKey, int]]:
    """A heartbeat answer's replaced runs; a malformed entry is skipped (logged)."""
    out = []
    for item in items:
        try:
            stack, role, index = str(item["instance"]).split("/")
            out.append((InstanceKey(stack, role, int(index)), int(item["incarnation"])))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed replaced entry in a heartbeat answer: %r", item)
    return out


def fetch_layer(data_dir: Path, digest: str) -> Iterator[bytes]:
    """Image layer `digest` from the controller this host joined, as it streams in (the
    receiver verifies it). NotFound if the controller has no such layer, PrereqError if it
    refuses this host, ExecError if the fetch fails on the way. Not AgentOffline: this
    host's agent was reached; it is the controller it could not fetch from."""
    joined = load_credential(data_dir)
    if joined is None:
        raise PrereqError("this host has not joined a controller: it has no layers to fetch")
    what = f"image layer {digest[:12]} from {joined.url}"
    try:
        with httpx.stream("GET", f"{joined.url}/v1/agent/layers/{digest}",
                          headers={"Authorization": f"Bearer {joined.credential}"},
                          timeout=httpx.Timeout(30.0, read=300.0)) as r:
            if r.status_code != 200:
                r.read()
                if r.status_code == 404:
                    raise NotFound(f"the controller has no {what}: {_message(r)}")
                if 400 <= r.status_code < 500:
                    raise PrereqError(f"the controller refused to send {what}: {_message(r)}",
                                      hint="join again with a new token")
                raise ExecError(f"fetching {what} failed: {_message(r)}")
            yield from r.iter_bytes(1 << 20)
    except httpx.TransportError as e:
        raise ExecError(f"fetching {what} failed: {type(e).__name__} {e}".rstrip(),
                        hint="check that this host reaches the controller; the next "
                             "attempt fetches the layer again") from None


def _layer_grace() -> float:
    raw = os.environ.get("RACKFIRE_LAYER_GRACE", "")
    try:
        grace = float(raw) if raw else LAYER_GRACE
    except ValueError:
        grace = -1.0
    if not grace >= 0:
        raise PrereqError(f"RACKFIRE_LAYER_GRACE={raw!r} is not a number of seconds")
    return grace


def default_name() -> str:
    return socket.gethostname().split(".")[0].lower()


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}"


def advertised(listen: str, controller_url: str) -> str:
    """HOST:PORT the controller should call: the listen address, or, when it listens on
    every address, the one this host reaches the controller from."""
    host, _, port = listen.rpartition(":")
    if host not in ("", "0.0.0.0", "::"):
        return listen
    target = httpx.URL(controller_url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target.host, target.port or 80))  # no packet: only picks the route
        return f"{s.getsockname()[0]}:{port}"


def run(url: str | None, token: str | None, name: str | None, labels: dict[str, str],
        data_dir: Path, interval: float, listen: str = "0.0.0.0:7481",
        runc_root: Path = RUNC_ROOT) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    known = load_credential(data_dir)
    agent = LocalAgent(data_dir, host=known.name if known else name or default_name(),
                       runc_root=runc_root, layer_grace=_layer_grace(),
                       # The credential is read at each fetch: join() writes it below.
                       layer_source=lambda digest: fetch_layer(data_dir, digest))
    joined = join(url, token, agent.host, labels, data_dir, agent, interval)
    address = advertised(listen, joined.url)
    agent.vips.address = address.rpartition(":")[0].strip("[]")  # floating ones go beside it
    log.info("host %s joined %s; heartbeat every %.1fs", joined.name, joined.url, interval)
    stop = threading.Event()
    host, _, port = listen.rpartition(":")
    side = HostSide(agent, data_dir)
    api = uvicorn.Server(uvicorn.Config(serve_agent(side, joined.agent_key), host=host or
                                        "0.0.0.0", port=int(port), log_level="warning",
                                        lifespan="off"))
    serving = threading.Thread(target=api.run, name="agent-api", daemon=True)
    serving.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hold = threading.Event()  # SIGUSR1: a planned restart, the lease held meanwhile

    def restarting(*_: object) -> None:
        hold.set()
        stop.set()
    signal.signal(signal.SIGUSR1, restarting)
    # Apart from this process, and left running when it stops: it fences if no agent
    # renews the lease in time.
    watchdog = Watchdog(data_dir)
    watchdog.ensure_running()
    try:
        heartbeat_loop(joined, labels, side, agent, interval, stop, address, watchdog, hold)
    finally:
        api.should_exit = True
        serving.join(10)
