"""What a runtime can do, as data: declared by each runtime, reported per runtime kind in a
host's facts, and asked by the controller instead of branching on a runtime's kind.

Pure data and pure functions. A capability an agent does not report is one it does not
have; `ASSUMED` says what the agents from before capabilities were reported could do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum

from rackfire.model.stack import RoleSpec, RuntimeKind


class NetworkMode(StrEnum):
    """How an instance is put on its stack's network (net/attach.py makes the attachment)."""

    HOST = "host"  # the host's own network (127.0.0.1): nothing to attach
    VETH = "veth"  # its own netns, a veth pair into the stack's bridge
    # TAP: a VM's tap on the stack's bridge, with the VM runtime


class Need(StrEnum):
    """What a role, a request or a verb asks of the runtime that runs an instance. Each
    value is the name of a `Capabilities` field (`own_ip` is derived)."""

    ISOLATED = "isolated"
    DISK_LIMIT = "disk_limit"
    OWN_IP = "own_ip"
    DISKS = "disks"
    APP_LAYERS = "app_layers"
    RELOAD = "reload"
    EXEC = "exec"
    LIVE_RESIZE = "live_resize"
    COLD_MIGRATE = "cold_migrate"
    LIVE_MIGRATE = "live_migrate"


_WHAT = {
    Need.ISOLATED: "isolation", Need.DISK_LIMIT: "a disk limit", Need.OWN_IP: "an own IP",
    Need.DISKS: "data disks", Need.APP_LAYERS: "app release layers",
    Need.RELOAD: "reloads", Need.EXEC: "exec", Need.LIVE_RESIZE: "live resizes",
    Need.COLD_MIGRATE: "cold migration", Need.LIVE_MIGRATE: "live migration",
}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Every field False (or HOST) by default: what is not declared is not there."""

    isolated: bool = False  # own namespaces, cgroup limits
    disk_limit: bool = False  # a real cap on what it can write
    network: NetworkMode = NetworkMode.HOST
    disks: bool = False  # data disks (`data:`), kept across replaces
    app_layers: bool = False  # a release layer (`app:`) under its config layer
    reload: bool = False  # new file contents and a signal or command, without a restart
    exec: bool = False  # a command inside the running instance (and `exec` health checks)
    live_resize: bool = False  # limits applied to the running instance
    cold_migrate: bool = False  # its disks sent to another host while stopped, adopted there
    live_migrate: bool = False  # moved while it runs (none yet)

    @property
    def own_ip(self) -> bool:
        """Its own address on the stack network (else the host's, 127.0.0.1)."""
        return self.network is not NetworkMode.HOST

    def has(self, need: Need) -> bool:
        return bool(getattr(self, need.value))

    def to_json(self) -> dict[str, object]:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), StrEnum) else v)
                for f in fields(self)}

    @staticmethod
    def from_json(d: object) -> Capabilities:
        """Tolerant, as host facts are: keys it does not know (a newer agent's) are
        ignored, missing ones are not there; a known key of the wrong type is an error."""
        if not isinstance(d, dict):
            raise ValueError("capabilities: expected an object")
        values: dict[str, object] = {}
        for f in fields(Capabilities):
            if f.name not in d:
                continue
            value = d[f.name]
            if f.name == "network":
                if value not in _NETWORKS:  # a newer agent's mode: not one this side uses
                    continue
                values[f.name] = NetworkMode(value)
            elif isinstance(value, bool):
                values[f.name] = value
            else:
                raise ValueError(f"capabilities.{f.name}: expected true or false")
        return Capabilities(**values)  # type: ignore[arg-type]


_NETWORKS = frozenset(m.value for m in NetworkMode)

# What agents that reported no capabilities could do, by kind: as the two runtimes were
# when capabilities started to be reported. Frozen here: a later change to a runtime is
# reported by its agent, never assumed of an older one.
ASSUMED: dict[RuntimeKind, Capabilities] = {
    RuntimeKind.CONTAINER: Capabilities(
        isolated=True, disk_limit=True, network=NetworkMode.VETH, disks=True,
        app_layers=True, reload=True, exec=True, live_resize=True, cold_migrate=True),
    RuntimeKind.PROCESS: Capabilities(reload=True, exec=True, live_resize=True),
}


def missing(caps: Capabilities, needs: Iterable[Need]) -> tuple[Need, ...]:
    """The needs `caps` does not meet, in the order `Need` declares them."""
    wanted = set(needs)
    return tuple(n for n in Need if n in wanted and not caps.has(n))


def supports(caps: Capabilities, *needs: Need) -> bool:
    return not missing(caps, needs)


def describe(needs: Iterable[Need]) -> str:
    """`data disks and app release layers`, for messages."""
    words = [_WHAT[n] for n in needs]
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def role_needs(role: RoleSpec) -> frozenset[Need]:
    """What running `role` asks of its runtime."""
    needs = set()
    if role.data is not None:
        needs.add(Need.DISKS)
    if role.app is not None:
        needs.add(Need.APP_LAYERS)
    if role.reload is not None:
        needs.add(Need.RELOAD)
    if role.health is not None and role.health.exec:
        needs.add(Need.EXEC)
    return frozenset(needs)
