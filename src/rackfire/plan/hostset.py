"""What `rackfire hosts apply` would do: the declared hosts against the last-applied set.
Pure: data in, steps out.

Like the Cluster Tool of the seeds, and unlike a stateless converger, it knows what it put
where, so a host that left the file is uninstalled (after a drain), not forgotten. Order:
installs first (capacity arrives before any leaves), then reconfigures, then upgrades (which
the apply takes one host at a time), then uninstalls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rackfire.model.hostsfile import AppliedHost, HostsFile


class HostStep(StrEnum):
    INSTALL = "install"
    RECONFIGURE = "reconfigure"
    UPGRADE = "upgrade"
    UNINSTALL = "uninstall"


_ORDER = list(HostStep)


@dataclass(frozen=True, slots=True)
class HostChange:
    step: HostStep
    name: str
    changes: tuple[str, ...] = ()  # `field: old -> new`, the version first

    def describe(self) -> str:
        return f"{self.step} {self.name}" + (f" ({'; '.join(self.changes)})"
                                             if self.changes else "")


def plan_hosts(declared: HostsFile, applied: Mapping[str, AppliedHost],
               version: str) -> list[HostChange]:
    """The steps from `applied` to `declared` with rackfire `version` on every host."""
    out = []
    for host in declared.hosts:
        was = applied.get(host.name)
        if was is None:
            out.append(HostChange(HostStep.INSTALL, host.name, (f"version {version}",)))
            continue
        changes = host.ssh.changes(was.host.ssh) + host.label_changes(was.host)
        if was.version != version:
            out.append(HostChange(HostStep.UPGRADE, host.name,
                                  (f"version: {was.version} -> {version}", *changes)))
        elif changes:
            out.append(HostChange(HostStep.RECONFIGURE, host.name, tuple(changes)))
    names = declared.by_name()
    out += [HostChange(HostStep.UNINSTALL, name) for name in sorted(applied)
            if name not in names]
    return sorted(out, key=lambda c: (_ORDER.index(c.step), c.name))
