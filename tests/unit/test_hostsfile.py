"""The hosts file: every problem with its file, line and field (a host listed twice pointed
at where it is listed again), and the plan from the last-applied host set to the file:
installs, reconfigures, upgrades, uninstalls, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackfire.errors import SpecError
from rackfire.model.hostsfile import AppliedHost, DeclaredHost, HostsFile, SshTarget
from rackfire.plan.hostset import HostChange, HostStep, plan_hosts
from rackfire.spec.hostsfile import load_hosts_file, load_hosts_text

GOOD = """\
known_hosts: /etc/rackfire/known_hosts
hosts:
  - {name: h1, address: 10.0.0.11, user: root, key: /root/.ssh/id_ed25519, labels: {rack: r1}}
  - name: h2
    address: h2.example.net
    port: 2222
    host_key: "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_hosts_text(text, "hosts.yaml")
    return [p.render() for p in e.value.problems]


def test_a_good_file_gives_every_host_with_its_connection_and_labels() -> None:
    f = load_hosts_text(GOOD, "hosts.yaml")
    h1, h2 = f.hosts
    assert h1 == DeclaredHost("h1", SshTarget("10.0.0.11", 22, "root", "/root/.ssh/id_ed25519",
                                              "", "/etc/rackfire/known_hosts"),
                              (("rack", "r1"),))
    assert (h2.ssh.port, h2.ssh.user, h2.ssh.host_key[:7], h2.line) == (2222, "root",
                                                                         "SHA256:", 4)


def test_each_bad_field_is_named_with_its_line() -> None:
    text = """\
hosts:
  - {name: H1, address: "a b", port: 0, user: "ro ot", host_key: "md5:x", lables: {}}
  - {name: h2}
"""
    got = problems(text)
    assert any(p.startswith("hosts.yaml:2:") and "hosts[0].name: 'H1' is not a host name" in p
               for p in got)
    for part in ("hosts[0].address: 'a b' is not an IP address or a DNS name",
                 "hosts[0].port: must be greater than or equal to 1",
                 "hosts[0].user: 'ro ot' is not a user name",
                 "hosts[0].host_key: 'md5:x' is not a host key fingerprint",
                 "hosts[0].lables: unknown key 'lables'", "did you mean 'labels'?",
                 "hosts[1].address: missing required key 'address'"):
        assert any(part in p for p in got), (part, got)


def test_a_host_listed_twice_by_name_or_by_address_is_refused_where_it_is_again() -> None:
    text = """\
hosts:
  - {name: h1, address: 10.0.0.11}
  - {name: h2, address: 10.0.0.12}
  - {name: h1, address: 10.0.0.13}
  - {name: h4, address: 10.0.0.12}
  - {name: h5, address: 10.0.0.12, port: 2222}
"""
    assert problems(text) == [
        "hosts.yaml:4:12: hosts[2].name: host h1 is listed twice (first at line 2)",
        "hosts.yaml:5:25: hosts[3].address: 10.0.0.12:22 is host h2 already (line 3): one "
        "server, one host"]


def test_a_file_that_is_not_a_hosts_file_says_what_is_expected(tmp_path: Path) -> None:
    assert problems("- h1\n") == [
        "hosts.yaml:1:1: expected a mapping with the key hosts (a list of {name, address, "
        "...}), got a list"]
    with pytest.raises(SpecError, match="file not found"):
        load_hosts_file(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"hosts: [\xff]\n")
    with pytest.raises(SpecError, match=r"bin.yaml:1:9: not UTF-8 text"):
        load_hosts_file(tmp_path / "bin.yaml")


def host(name: str, address: str = "10.0.0.1", **labels: str) -> DeclaredHost:
    return DeclaredHost(name, SshTarget(address), tuple(sorted(labels.items())))


def test_the_plan_installs_reconfigures_upgrades_and_uninstalls_in_that_order() -> None:
    applied = {"a": AppliedHost(host("a"), "1.0"), "b": AppliedHost(host("b", rack="r1"), "1.0"),
               "c": AppliedHost(host("c"), "0.9"), "gone": AppliedHost(host("gone"), "1.0")}
    declared = HostsFile((host("new"), host("c", "10.0.0.3"), host("b", rack="r2", site="s"),
                          host("a")))
    assert plan_hosts(declared, applied, "1.0") == [
        HostChange(HostStep.INSTALL, "new", ("version 1.0",)),
        HostChange(HostStep.RECONFIGURE, "b", ("label rack: r1 -> r2", "label site=s")),
        HostChange(HostStep.UPGRADE, "c", ("version: 0.9 -> 1.0",
                                           "address: 10.0.0.1 -> 10.0.0.3")),
        HostChange(HostStep.UNINSTALL, "gone"),
    ]
    assert plan_hosts(declared, {h.name: AppliedHost(h, "1.0") for h in declared.hosts},
                      "1.0") == []


def test_a_removed_label_and_a_changed_key_are_reconfigures() -> None:
    was = host("a", rack="r1")
    now = DeclaredHost("a", SshTarget("10.0.0.1", key="/k2"))
    [change] = plan_hosts(HostsFile((now,)), {"a": AppliedHost(was, "1")}, "1")
    assert change.describe() == "reconfigure a (key: - -> /k2; label rack removed)"
