"""Hosts that joined the controller, and the tokens they join with.

A join token (`rft_<id>.<secret>`) is shown once and kept only as a hash, with an expiry and
a number of uses. An agent trades it for a credential of its own (`rfh_<host>.<secret>`,
also kept hashed), which is all it presents afterwards: the token may expire, be used up or
be leaked without giving anyone that host. It gets an *agent key* too, which the controller
presents when it calls the agent (so the controller keeps that one as it is).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

from rackfire.errors import Conflict, NotFound, PrereqError, Unauthorized
from rackfire.model.host import HostFacts, HostState
from rackfire.model.hostsfile import HOST_NAME, LABEL_KEY, LABEL_VALUE, AppliedHost
from rackfire.model.records import HostRecord
from rackfire.store.db import Store

JOIN_TOKEN = re.compile(r"^rft_([0-9a-f]{8})\.([A-Za-z0-9_-]{16,64})$")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    for k, v in labels.items():
        if not LABEL_KEY.match(k) or not LABEL_VALUE.match(v):
            raise PrereqError(f"invalid label {k}={v}",
                              hint="keys: lowercase letters, digits, . _ -; values: up to 63 "
                                   "letters, digits, . _ -")
    return tuple(sorted(labels.items()))


class HostRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create_token(self, ttl: float, uses: int, actor: str) -> tuple[str, float]:
        """A new join token (shown once) and when it expires."""
        if not 1 <= uses <= 10_000 or not 0 < ttl <= 30 * 86400:
            raise PrereqError("a token needs 1 to 10000 uses and a lifetime of up to 30 days")
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        now = time.time()
        with self.store.tx() as db:
            db.execute("DELETE FROM join_tokens WHERE expires < ? OR uses_left <= 0", (now,))
            db.execute("INSERT INTO join_tokens VALUES (?, ?, ?, ?, ?, ?)",
                       (token_id, _hash(secret), now, now + ttl, uses, actor))
        return f"rft_{token_id}.{secret}", now + ttl

    def join(self, token: str, name: str, labels: dict[str, str],
             facts: HostFacts) -> tuple[str, str]:
        """Spend one use of `token` on host `name`: its credential and its agent key."""
        m = JOIN_TOKEN.fullmatch(token)
        if not HOST_NAME.match(name):
            raise PrereqError(f"invalid host name {name!r}",
                              hint="lowercase letters, digits and '-', up to 63")
        label_items = check_labels(labels)
        now = time.time()
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM join_tokens WHERE id=?",
                             (m.group(1) if m else "",)).fetchone()
            if (m is None or row is None or row["expires"] < now or row["uses_left"] <= 0
                    or not hmac.compare_digest(row["secret_hash"], _hash(m.group(2)))):
                raise Unauthorized("the join token is not valid (wrong, expired or used up)",
                                   hint="make a new one with `rackfire token create`")
            if db.execute("SELECT 1 FROM hosts WHERE name=?", (name,)).fetchone():
                raise Conflict(f"a host named {name} has joined already",
                               hint="give this one another --name, or remove the old one "
                                    "with `rackfire host rm`")
            db.execute("UPDATE join_tokens SET uses_left=uses_left-1 WHERE id=?", (row["id"],))
            secret, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            db.execute("INSERT INTO hosts (name, credential_hash, labels, facts, joined, "
                       "last_seen, agent_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (name, _hash(secret), json.dumps(label_items), json.dumps(
                           facts.to_json()), now, now, key))
        return f"rfh_{name}.{secret}", key

    def authenticate(self, credential: str) -> str:
        """The host a credential belongs to."""
        m = re.fullmatch(r"rfh_([a-z0-9-]{1,63})\.([A-Za-z0-9_-]{16,64})", credential)
        rows = self._rows("SELECT name, credential_hash FROM hosts WHERE name=?",
                          m.group(1) if m else "")
        if m is None or not rows or not hmac.compare_digest(rows[0]["credential_hash"],
                                                            _hash(m.group(2))):
            raise Unauthorized("unknown host credential",
                               hint="join again with a new token (`rackfire token create`)")
        return str(rows[0]["name"])

    def heartbeat(self, name: str, labels: dict[str, str], facts: HostFacts,
                  address: str = "", lease: float = float("inf"),
                  since: float = 0.0) -> tuple[int, bool]:
        """Renew the host's lease; its epoch, and whether it rose: the lease (seconds since
        the last heartbeat, or since `since`, when the server started) had lapsed, so this
        is the host coming back (not the server)."""
        if address and not re.fullmatch(r"[0-9A-Za-z.:\[\]-]{1,100}:\d{1,5}", address):
            raise PrereqError(f"invalid agent address {address!r}", hint="HOST:PORT")
        now = time.time()
        with self.store.tx() as db:
            row = db.execute("SELECT last_seen, epoch FROM hosts WHERE name=?",
                             (name,)).fetchone()
            lapsed = row is not None and now - max(row["last_seen"], since) > lease
            epoch = (row["epoch"] if row is not None else 1) + lapsed
            db.execute("UPDATE hosts SET labels=?, facts=?, last_seen=?, address=?, epoch=? "
                       "WHERE name=?", (json.dumps(check_labels(labels)),
                                        json.dumps(facts.to_json()), now, address, epoch, name))
        return epoch, lapsed

    def epoch(self, name: str) -> int:
        """The host's epoch now (0 if it is not known: every call to it is refused there)."""
        rows = self._rows("SELECT epoch FROM hosts WHERE name=?", name)
        return int(rows[0]["epoch"]) if rows else 0

    def set_state(self, name: str, state: HostState) -> None:
        with self.store.tx() as db:
            if db.execute("UPDATE hosts SET state=? WHERE name=?",
                          (state.value, name)).rowcount == 0:
                raise NotFound(f"no host named {name}", hint="see `rackfire hosts`")

    def fence(self, name: str) -> int:
        """Declare the host dead: fenced, at a new epoch (a call meant for it as it was is
        refused there, should it be alive after all). Its new epoch."""
        with self.store.tx() as db:
            if db.execute("UPDATE hosts SET state=?, epoch=epoch+1 WHERE name=?",
                          (HostState.FENCED.value, name)).rowcount == 0:
                raise NotFound(f"no host named {name}", hint="see `rackfire hosts`")
            return int(db.execute("SELECT epoch FROM hosts WHERE name=?",
                                  (name,)).fetchone()["epoch"])

    def remove(self, name: str) -> None:
        with self.store.tx() as db:
            if db.execute("DELETE FROM hosts WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no host named {name}", hint="see `rackfire hosts`")

    def hosts(self) -> list[HostRecord]:
        return [HostRecord(r["name"], tuple((k, v) for k, v in json.loads(r["labels"])),
                           HostFacts.from_json(json.loads(r["facts"])), HostState(r["state"]),
                           r["joined"], r["last_seen"], r["address"], r["agent_key"],
                           r["epoch"])
                for r in self._rows("SELECT * FROM hosts ORDER BY name")]

    def applied_hosts(self) -> dict[str, AppliedHost]:
        """The host set of the last `hosts apply`, by name: what each host was declared as
        and the version installed there."""
        return {r["name"]: AppliedHost.from_json(json.loads(r["declared"]))
                for r in self._rows("SELECT name, declared FROM applied_hosts")}

    def record_applied(self, host: AppliedHost) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO applied_hosts VALUES (?, ?, ?)",
                       (host.host.name, json.dumps(host.to_json()), time.time()))

    def forget_applied(self, name: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM applied_hosts WHERE name=?", (name,))

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        with self.store.tx() as db:
            return db.execute(sql, args).fetchall()
