"""Instances: their keys, what the agent observes, and what the controller asks for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from rackfire.model.stack import (
    DEFAULT_STOP_TIMEOUT,
    NAME_PATTERN,
    DataDisk,
    LogLimits,
    ReloadSpec,
    Resources,
    RuntimeKind,
)

_NAME = re.compile(NAME_PATTERN)
# A run's instance (a job's, a task's) has index RUN_BASE + its number in the stack: past
# any count and surge (MAX_COUNT), so it is never one of the role's instances.
RUN_BASE = 100_000


@dataclass(frozen=True, slots=True, order=True)
class InstanceKey:
    stack: str
    role: str
    index: int

    @property
    def name(self) -> str:
        """The instance's hostname inside its stack: `web-3`."""
        return f"{self.role}-{self.index}"

    @property
    def id(self) -> str:
        """Globally unique and filesystem-safe: `shop.web.3` (names cannot contain dots)."""
        return f"{self.stack}.{self.role}.{self.index}"

    def __str__(self) -> str:
        return f"{self.stack}/{self.role}/{self.index}"

    @property
    def run(self) -> int | None:
        """The run it is (a job's or a task's, control/jobs.py), if it is one."""
        return self.index - RUN_BASE if self.index >= RUN_BASE else None

    @staticmethod
    def of_run(stack: str, role: str, number: int) -> InstanceKey:
        return InstanceKey(stack, role, RUN_BASE + number)

    @staticmethod
    def parse_id(text: str) -> InstanceKey:
        stack, role, index = text.split(".")
        return InstanceKey(stack, role, int(index))


@dataclass(frozen=True, slots=True)
class Target:
    """What a day-2 command acts on: a stack, one of its roles, or one instance."""

    stack: str
    role: str | None = None
    index: int | None = None

    @property
    def key(self) -> InstanceKey | None:
        if self.role is None or self.index is None:
            return None
        return InstanceKey(self.stack, self.role, self.index)

    def matches(self, key: InstanceKey) -> bool:
        return key.stack == self.stack and self.role in (None, key.role) \
            and self.index in (None, key.index)

    def __str__(self) -> str:
        return "/".join(str(p) for p in (self.stack, self.role, self.index) if p is not None)

    @staticmethod
    def parse(text: str) -> Target:
        """`shop`, `shop/web`, `shop/web/0`, `shop/web-0` or the id `shop.web.0`.
        ValueError says what was expected."""
        parts = text.split(".") if "." in text and "/" not in text else text.split("/")
        if len(parts) == 2 and "-" in parts[1]:
            role, _, index = parts[1].rpartition("-")
            if index.isdigit():
                parts = [parts[0], role, index]
        if not 1 <= len(parts) <= 3 or not all(_NAME.fullmatch(p) for p in parts[:2]) \
                or (len(parts) == 3 and not (parts[2].isascii() and parts[2].isdigit())):
            raise ValueError(f"{text!r} is not STACK, STACK/ROLE, STACK/ROLE/INDEX or "
                             "STACK/ROLE-INDEX (e.g. shop/web/0 or shop/web-0)")
        return Target(parts[0], parts[1] if len(parts) > 1 else None,
                      int(parts[2]) if len(parts) > 2 else None)


class InstanceState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # the command exited; exit_code or exit_signal says how
    PARTIAL = "partial"  # some of its parts exist but it never started (an interrupted create)


class Health(StrEnum):
    UNKNOWN = "unknown"  # no check yet, or no check defined and not running
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    NONE = "-"  # the role has no health check


# Linux's numbering (x86 and arm alike), for messages: the pure layers import no `signal`.
SIGNALS = ("HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV",
           "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN",
           "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS")


def signal_name(number: int) -> str:
    return f"SIG{SIGNALS[number - 1]}" if 1 <= number <= len(SIGNALS) else f"signal {number}"


@dataclass(frozen=True, slots=True)
class Exit:
    """How a run's main process ended, as its reaper saw it: an exit code or a signal."""

    code: int | None
    signal: int | None
    at: float = 0.0


def describe_exit(code: int | None, sig: int | None, oom: bool = False) -> str:
    """"exited 3", "killed by SIGKILL (OOM)"; "stopped" when nobody saw how."""
    if sig is not None:
        return f"killed by {signal_name(sig)}" + (" (OOM)" if oom else "")
    if code is not None:
        return f"exited {code}" + (" (OOM)" if oom else "")
    return "OOM-killed" if oom else "stopped"


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What the agent sees on its host for one instance. Written by the agent only."""

    key: InstanceKey
    state: InstanceState
    runtime: RuntimeKind
    host: str
    ip: str | None = None
    spec_hash: str = ""
    spec_fields: tuple[tuple[str, str], ...] = ()  # field -> digest, to say what changed
    config_hash: str = ""
    started_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None  # how its last run ended, while it is stopped
    exit_signal: int | None = None
    oom_killed: bool = False
    resources: Resources | None = None  # as it runs now (a live resize changes them)
    files_layout: str = ""  # digest of the rendered files' paths: a reload cannot add one
    log: str = ""  # its console log's path, on this host (the agent streams it: `logs`)
    incarnation: int = 0  # the run it is (InstanceRequest.incarnation); 0: from before those
    fence: bool = False  # its host stops it when that cannot renew its lease
    warm: bool = False  # made (or last stopped) as a warm instance: never started since

    @property
    def ended(self) -> str:
        """How its last run ended: "exited 3", "killed by SIGKILL (OOM)"."""
        return describe_exit(self.exit_code, self.exit_signal, self.oom_killed)


@dataclass(frozen=True, slots=True)
class Control:
    """What the operator and the restart policy decided about one instance."""

    failures: tuple[float, ...] = ()  # when it was restarted after failing, oldest first
    stopped: bool = False  # `rackfire stop`: stays stopped until started
    failed: str = ""  # the restart policy gave up on it: why
    restart_requested: float | None = None  # `rackfire restart`: restart if started before


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A stack's private network as one host sees it."""

    stack: str
    subnet: str  # e.g. 10.88.3.0/24
    gateway: str  # the bridge's address on the host
    prefix: int
    vni: int = 0  # across hosts: the stack's VXLAN id (0: one host, no VXLAN)
    local_ip: str = ""  # this host's underlay address, which VXLAN sends from
    peers: tuple[str, ...] = ()  # underlay IPs of every host of the pool (own one ignored)
    no_egress: tuple[str, ...] = ()  # instance IPs of roles with `egress: false` (sorted)
    # across hosts: this host's own address in the subnet, which its HAProxy connects from
    # to reach instances on any host (the routing mesh, net/mesh.py); "": none
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    """Everything an agent needs to make one instance exist, exactly as planned."""

    key: InstanceKey
    action_id: str
    runtime: RuntimeKind
    image_digest: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    resources: Resources
    files: tuple[tuple[str, str], ...]  # rendered: absolute path -> content
    ip: str
    network: NetworkConfig
    spec_hash: str
    spec_fields: tuple[tuple[str, str], ...]
    config_hash: str
    stop_timeout: float = DEFAULT_STOP_TIMEOUT  # when it is stopped to restart or reconfigure
    app_digest: str = ""  # the release layer (the pushed app), between config and image
    data: DataDisk | None = None  # its own data disk, kept across replaces
    reload: ReloadSpec | None = None  # how new files reach it without a restart
    files_layout: str = ""  # digest of the files' paths (and hostname)
    surge: bool = False  # an extra instance while the role rolls to a new release
    # Kept made and stopped (a scaled role's `warm`): everything ready but not running, so a
    # scale-out starts it. Not part of any digest.
    warm: bool = False
    # Its console log's rotation: applied live (a resize), as resources are.
    logs: LogLimits = field(default_factory=LogLimits)
    # Cold migration: start from the disks copied to this host (<data-dir>/incoming/<id>/)
    # instead of a new one. Not part of any digest: how it got here, not what it runs.
    adopt_disks: bool = False
    # A restore: made (or replaced) from this snapshot's copy of an instance's disks,
    # (snapshot's stack, snapshot, instance name there), once. Not part of any digest.
    seed: tuple[str, str, str] | None = None
    # The run this is, issued by the controller with its placement (store/placements.py):
    # a host refuses a create or restart older than one it was told of (agent/hostside.py).
    incarnation: int = 0
    fence: bool = False  # stopped by its host's watchdog once that lease cannot be renewed
