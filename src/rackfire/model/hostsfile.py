"""The hosts file: existing servers that rackfire is to be installed on over SSH, as the
operator declares them (`rackfire hosts plan|apply -f hosts.yaml`). Pure data.

Paths in it (keys, known_hosts) are the controller's: it makes the connections, now for an
apply and later on its own when the pool grows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")  # as ssh-keygen -l prints it
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass(frozen=True, slots=True)
class SshTarget:
    """How the controller reaches a host: key auth only, its host key checked."""

    address: str  # an IP address or a DNS name
    port: int = 22
    user: str = "root"
    key: str = ""  # the private key's path; empty: the controller's ssh agent or defaults
    host_key: str = ""  # a pinned "SHA256:..." fingerprint; empty: checked in known_hosts
    known_hosts: str = DEFAULT_KNOWN_HOSTS

    def changes(self, old: SshTarget) -> list[str]:
        """What differs from `old`, as `field: old -> new`."""
        return [f"{name}: {getattr(old, name) or '-'} -> {getattr(self, name) or '-'}"
                for name in self.__slots__ if getattr(old, name) != getattr(self, name)]


@dataclass(frozen=True, slots=True)
class DeclaredHost:
    name: str
    ssh: SshTarget
    labels: tuple[tuple[str, str], ...] = ()
    line: int = field(default=0, compare=False)  # where the file declares it, for messages

    def label_changes(self, old: DeclaredHost) -> list[str]:
        new, was = dict(self.labels), dict(old.labels)
        return ([f"label {k}={v}" if k not in was else f"label {k}: {was[k]} -> {v}"
                 for k, v in sorted(new.items()) if was.get(k) != v]
                + [f"label {k} removed" for k in sorted(was) if k not in new])


@dataclass(frozen=True, slots=True)
class HostsFile:
    hosts: tuple[DeclaredHost, ...] = ()
    controller: str = ""  # the URL the hosts reach the controller at ("": not given)

    def by_name(self) -> dict[str, DeclaredHost]:
        return {h.name: h for h in self.hosts}


@dataclass(frozen=True, slots=True)
class AppliedHost:
    """A host as the last apply left it: what it was declared as, and the rackfire version
    installed there."""

    host: DeclaredHost
    version: str

    def to_json(self) -> dict[str, Any]:
        h = self.host
        return {"name": h.name, "ssh": asdict(h.ssh), "labels": [list(p) for p in h.labels],
                "version": self.version}

    @staticmethod
    def from_json(data: dict[str, Any]) -> AppliedHost:
        labels = tuple((str(k), str(v)) for k, v in data.get("labels", ()))
        return AppliedHost(DeclaredHost(str(data["name"]), SshTarget(**data["ssh"]), labels),
                           str(data["version"]))
