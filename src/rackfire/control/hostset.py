"""The declared host set (`rackfire hosts plan|apply -f hosts.yaml`): the hosts file against
the set the last apply left, which the store keeps (`applied_hosts`)."""

from __future__ import annotations

from rackfire import __version__
from rackfire.plan.hostset import HostChange, plan_hosts
from rackfire.spec.hostsfile import load_hosts_text
from rackfire.store.protocol import HostTable


def installed_version() -> str:
    """The rackfire version an apply installs: this server's own."""
    return __version__


def plan_host_set(hosts: HostTable, text: str, filename: str) -> list[HostChange]:
    """What an apply of this hosts file would do; a bad file is a SpecError, nothing read
    of any host."""
    return plan_hosts(load_hosts_text(text, filename), hosts.applied_hosts(),
                      installed_version())
