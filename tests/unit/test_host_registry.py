"""Join tokens and host credentials: kept hashed, spent once, expiring."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rackfire.errors import Conflict, PrereqError
from rackfire.model.agent import HostCapacity
from rackfire.model.host import HostFacts
from rackfire.model.hostsfile import AppliedHost, DeclaredHost, SshTarget
from rackfire.model.stack import RuntimeKind
from rackfire.store import Store
from rackfire.store.hosts import HostRegistry

FACTS = HostFacts(HostCapacity(2.0, 1 << 30, 10 << 30), (RuntimeKind.CONTAINER,), 1, 2)


def test_a_token_is_spent_and_the_credential_is_the_host_s(tmp_path: Path) -> None:
    reg = HostRegistry(Store(tmp_path / "db"))
    token, expires = reg.create_token(60, 1, "ann@h")
    assert expires > time.time()
    cred, key = reg.join(token, "h1", {"rack": "r1"}, FACTS)
    assert reg.authenticate(cred) == "h1"
    with pytest.raises(PrereqError, match="not valid"):
        reg.join(token, "h2", {}, FACTS)  # used up
    with pytest.raises(PrereqError, match="unknown host credential"):
        reg.authenticate(cred[:-2] + "xx")
    # Nothing secret is stored as given.
    db = (tmp_path / "db").read_bytes()
    assert token.split(".")[1].encode() not in db and cred.split(".")[1].encode() not in db
    [h] = reg.hosts()
    assert (h.name, h.labels, h.facts) == ("h1", (("rack", "r1"),), FACTS)
    assert h.agent_key == key and key != cred  # the one the controller presents
    reg.heartbeat("h1", {}, FACTS, "127.0.0.1:7481")
    assert reg.hosts()[0].address == "127.0.0.1:7481"
    with pytest.raises(PrereqError, match="invalid agent address"):
        reg.heartbeat("h1", {}, FACTS, "127.0.0.1; rm -rf /")


def test_refusals(tmp_path: Path) -> None:
    reg = HostRegistry(Store(tmp_path / "db"))
    token, _ = reg.create_token(60, 3, "ann@h")
    reg.join(token, "h1", {}, FACTS)
    with pytest.raises(Conflict, match="joined already"):
        reg.join(token, "h1", {}, FACTS)
    with pytest.raises(PrereqError, match="invalid host name"):
        reg.join(token, "H_1", {}, FACTS)
    with pytest.raises(PrereqError, match="invalid label"):
        reg.join(token, "h2", {"Rack": "x y"}, FACTS)
    with pytest.raises(PrereqError, match="not valid"):
        reg.join("rft_00000000.not-a-real-secret-at-all", "h3", {}, FACTS)
    expired, _ = reg.create_token(0.01, 1, "ann@h")
    time.sleep(0.05)
    with pytest.raises(PrereqError, match="not valid"):
        reg.join(expired, "h4", {}, FACTS)
    with pytest.raises(PrereqError):
        reg.create_token(60, 0, "ann@h")


def test_facts_of_a_newer_agent_keep_the_runtimes_this_server_knows() -> None:
    facts = HostFacts.from_json({"cpus": 2, "memory": 1 << 30, "disk": 1 << 30,
                                 "runtimes": ["container", "firecracker"], "gpus": 1})
    assert facts.runtimes == (RuntimeKind.CONTAINER,)


def test_the_applied_host_set_is_kept_across_a_reopen(tmp_path: Path) -> None:
    host = AppliedHost(DeclaredHost("h1", SshTarget("10.0.0.11", 2222, "ops", "/k",
                                                    "SHA256:" + "a" * 43), (("rack", "r1"),)),
                       "0.1.0")
    reg = HostRegistry(Store(tmp_path / "db"))
    reg.record_applied(host)
    reg.record_applied(AppliedHost(DeclaredHost("h2", SshTarget("h2.example.net")), "0.1.0"))
    reg.forget_applied("h2")
    assert HostRegistry(Store(tmp_path / "db")).applied_hosts() == {"h1": host}
