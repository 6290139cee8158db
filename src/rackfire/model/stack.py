"""Desired state: a stack and its roles, as validated from a stack file."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL, unless a role says
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$"
MAX_COUNT = 10_000  # instances of one role (a stack's subnet is sized for twice its own)
"""Stack, role and image names: they end up in file, netns, cgroup and container names."""


class ImageSource(StrEnum):
    HOST = "host"
    DEBOOTSTRAP = "debootstrap"
    TARBALL = "tarball"
    RELEASE = "release"  # an app's release layer, built from a pushed source


class RuntimeKind(StrEnum):
    CONTAINER = "container"
    PROCESS = "process"
    FAKE = "fake"  # tests only (runtime/fake.py): offered only by an agent told to


@dataclass(frozen=True, slots=True)
class ImageSpec:
    name: str
    source: ImageSource
    suite: str = "bookworm"
    packages: tuple[str, ...] = ()
    mirror: str | None = None
    path: str | None = None  # a rootfs tarball, for source=tarball


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float | None = None  # cores; a CFS quota
    memory: int | None = None  # bytes; hard limit, no swap
    disk: int = 256 * 1024 * 1024  # bytes; the instance's writable disk
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class PortMap:
    host_port: int
    container_port: int
    host_ip: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class HealthSpec:
    http: str | None = None  # URL as seen from inside the instance
    tcp: int | None = None  # port inside the instance
    exec: tuple[str, ...] | None = None  # a command run inside the instance; 0 is healthy
    interval: float = 5.0
    timeout: float = 2.0
    retries: int = 3  # consecutive failures before unhealthy
    grace: float = 30.0  # how long a starting instance may fail without being unhealthy


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """An instance that stops or fails its check is restarted with exponential backoff;
    after `attempts` restarts within `window` it is marked failed and left stopped."""

    attempts: int = 5
    window: float = 600.0


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a new release rolls out: at most `max_unavailable` instances of the role's count
    out of service and `max_surge` extra ones at a time; each new instance must pass its
    check within `health_timeout`, or the release is rolled back."""

    max_unavailable: int = 1
    max_surge: int = 1
    health_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class ReloadSpec:
    """How an appliance re-reads its rendered files without a restart: a signal to its main
    process, or a command run inside it."""

    signal: str | None = None  # "HUP", "USR2", ...
    exec: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class DataDisk:
    """A disk of its own for an instance's data, mounted at `path`: kept when the instance
    is replaced, restarted or scaled away, deleted only with its stack (unless kept)."""

    path: str
    size: int
    # Copies kept, this one included: 2 keeps a standby copy on another host, shipped every
    # few seconds (control/replicas.py); its instance fails over onto it after the fence.
    replicas: int = 1


@dataclass(frozen=True, slots=True)
class Keep:
    """How many backups a retention keeps: the newest of each hour, day, week, month (as
    restic's --keep-hourly ...), and the last few whatever their age; 0 counts nothing."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0


@dataclass(frozen=True, slots=True)
class BackupPolicy:
    """A role's scheduled backups: one every `every` seconds into repository `to`."""

    every: float
    keep: Keep = field(default_factory=Keep)
    to: str = "default"


class Concurrency(StrEnum):
    """What a job's slot does while an earlier run of it still runs."""

    FORBID = "forbid"  # skipped (recorded as such)
    ALLOW = "allow"  # runs beside it
    REPLACE = "replace"  # the earlier run is stopped, this one starts


class CatchUp(StrEnum):
    """Slots missed while the controller was down, once it is back."""

    SKIP = "skip"  # none: recorded as missed
    LAST = "last"  # one run, for the latest of them (as anacron, systemd's Persistent=)
    ALL = "all"  # one run for each, oldest first (at most MAX_CATCH_UP)


MAX_CATCH_UP = 100


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """A role that is a job: each slot of `schedule` (cron, UTC; model/cron.py) runs one
    fresh instance of the role, exactly once across the hosts (control/jobs.py)."""

    schedule: str
    concurrency: Concurrency = Concurrency.FORBID
    timeout: float = 3600.0  # a run still running then is stopped, and failed
    history: int = 10  # runs kept, with their exit and log tail
    catch_up: CatchUp = CatchUp.LAST


class TargetKind(StrEnum):
    CPU = "cpu"
    MEMORY = "memory"
    REQUESTS_PER_INSTANCE = "requests_per_instance"
    LATENCY_P95 = "latency_p95"


@dataclass(frozen=True, slots=True)
class ScaleTarget:
    """cpu, memory: percent, in (0, 100] (cpu of one core, or of the role's cpu limit if it
    has one); requests_per_instance: requests per second per instance; latency_p95: seconds."""

    kind: TargetKind
    value: float


DEFAULT_STATS = "http://127.0.0.1:8404/stats;csv"


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """A role's `scale:` (control/autoscale.py decides with plan/autoscale.py). `target`
    None: schedule only. `windows`: (cron, min, seconds): from each slot of the cron on,
    for that long, the count is at least min. Request metrics come from the HAProxy stats (`stats`,
    a URL inside that instance) of role `via` (default: the first role that uses this one),
    its backend `backend` (default: this role's name)."""

    min: int
    max: int
    target: ScaleTarget | None
    warm: int = 0
    cooldown: float = 120.0
    tolerance: float = 0.1
    windows: tuple[tuple[str, int, float], ...] = ()
    via: str = ""
    stats: str = DEFAULT_STATS
    backend: str = ""


def scale_problems(policy: ScalePolicy) -> list[str]:
    """What is wrong with a policy, each as "field: message" (the spec layer locates the
    field). The rules: 0 <= min <= max, 1 <= max <= MAX_COUNT; cpu and memory targets in
    (0, 100] percent, the others > 0; 0 <= warm <= max; cooldown >= 0; tolerance in [0, 1);
    each window's min in [0, max] and its cron text not empty; a target or a schedule."""
    p = policy
    problems = []
    if p.min < 0:
        problems.append(f"min: must be 0 or more, not {p.min}")
    if p.max < 1:
        problems.append(f"max: must be 1 or more, not {p.max}")
    if p.max > MAX_COUNT:
        problems.append(f"max: must be at most {MAX_COUNT}, not {p.max}")
    if p.min > p.max:
        problems.append(f"min: {p.min} is above max {p.max}")
    if p.target is not None:
        v, kind = p.target.value, p.target.kind
        if not math.isfinite(v) or v <= 0:
            problems.append(f"target.{kind}: must be above 0, not {v:g}")
        elif kind in (TargetKind.CPU, TargetKind.MEMORY) and v > 100:
            what = "of one core (or of the role's cpu limit)" if kind is TargetKind.CPU \
                else "of the role's memory limit"
            problems.append(f"target.{kind}: is a percentage {what}, at most 100%, "
                            f"not {v:g}%")
    elif not p.windows:
        problems.append("target: a target or a schedule is needed")
    if p.warm < 0:
        problems.append(f"warm: must be 0 or more, not {p.warm}")
    elif p.warm > p.max:
        problems.append(f"warm: {p.warm} is above max {p.max}")
    if not math.isfinite(p.cooldown) or p.cooldown < 0:
        problems.append(f"cooldown: must be 0 or more, not {p.cooldown:g}s")
    if not (math.isfinite(p.tolerance) and 0 <= p.tolerance < 1):
        problems.append(f"tolerance: must be in [0, 1), not {p.tolerance:g}")
    for i, (cron, low, span) in enumerate(p.windows):
        if not math.isfinite(span) or span <= 0:
            problems.append(f"schedule[{i}].for: must be longer than 0, not {span:g}s")
        if not cron.strip():
            problems.append(f"schedule[{i}].cron: must not be empty")
        if low < 0 or low > p.max:
            problems.append(f"schedule[{i}].min: must be in [0, max {p.max}], not {low}")
    return problems


@dataclass(frozen=True, slots=True)
class LogLimits:
    """How much console log an instance keeps on its host: the current file is rotated
    (to .1, .2, ...) once it would pass `max_size`, and at most `max_files` files are kept,
    the current one included (as docker's json-file `max-size` / `max-file`)."""

    max_size: int = 10 * 1024 * 1024
    max_files: int = 3


MIN_LOG_SIZE = 64 * 1024  # a record (a line, split at 16 KiB) must fit a file
MAX_LOG_FILES = 100

MAX_SOURCE_BYTES = 256 * 1024 * 1024  # an app's source dir, packed for upload


class Replace(StrEnum):
    IMMEDIATE = "immediate"  # placed again as soon as its host is lost
    FENCED = "fenced"  # ... only once its host has surely stopped it (its fence deadline)


@dataclass(frozen=True, slots=True)
class HaPolicy:
    """What happens to a role's instances when their host is lost (control/failover.py)."""

    singleton: bool = False  # never two copies at once: replaced only after the fence
    replace: Replace | None = None  # None: fenced for a singleton, else immediate
    fence: bool | None = None  # stopped by its host when that loses the controller (None:
    #                            a singleton's and a primary role's are)
    # One instance is the primary (control/primaries.py): the role's name resolves to it
    # alone, templates see which one it is, and another is promoted once its host is fenced.
    primary: bool = False


class Spread(StrEnum):
    HOST = "host"  # the default: fewest of the role per host, then per rack (a preference)
    RACK = "rack"  # never two instances of the role in one rack (hosts' `rack` label)
    SITE = "site"  # never two in one site (hosts' `site` label)


@dataclass(frozen=True, slots=True)
class PlacementRule:
    spread: Spread | None = None  # None: spread by host, as a preference


@dataclass(frozen=True, slots=True)
class AppSource:
    """The application pushed into a role: a source dir, uploaded as a content-addressed
    tree (`digest`), built into a release layer with its Python dependencies."""

    path: str  # as the stack file or `push` named it, for people
    digest: str = ""  # sha256 of the uploaded tree; "" until the CLI uploads it


@dataclass(frozen=True, slots=True)
class RoleSpec:
    name: str
    image: str
    count: int = 1
    command: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    ports: tuple[PortMap, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted by name
    files: tuple[tuple[str, str], ...] = ()  # absolute path -> Jinja2 template, sorted by path
    health: HealthSpec | None = None
    uses: tuple[str, ...] = ()
    runtime: RuntimeKind | None = None  # None: the host's best runtime
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop_timeout: float = DEFAULT_STOP_TIMEOUT  # SIGTERM, then SIGKILL after this long
    app: AppSource | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    reload: ReloadSpec | None = None
    data: DataDisk | None = None
    image_digest: str = ""  # pinned by a rollback to a release built on an older image
    logs: LogLimits = field(default_factory=LogLimits)
    ha: HaPolicy = field(default_factory=HaPolicy)
    placement: PlacementRule = field(default_factory=PlacementRule)
    egress: bool = True  # reaches the outside world through its host (NAT); False: only
    #                      its stack and the hosts
    backup: BackupPolicy | None = None  # scheduled backups (control/backups.py)
    job: JobPolicy | None = None  # a job: no instances of its own, a run per slot
    # A task run on a new release before its rollout (a migration): the rollout goes only
    # if it exits 0 (control/jobs.py), else the release fails as a bad one does.
    before: tuple[str, ...] = ()
    scale: ScalePolicy | None = None  # autoscaling: the count moves within [min, max]

    @property
    def singleton(self) -> bool:
        """At most one copy may run at any time: asked for, or one instance with data."""
        return self.ha.singleton or (self.count == 1 and self.data is not None)

    @property
    def replace_after_fence(self) -> bool:
        """A lost host's instance of this role is placed again only after its fence."""
        if self.singleton:
            return True
        return self.ha.replace is Replace.FENCED

    @property
    def self_fences(self) -> bool:
        """Its host stops its instances when that host cannot renew its lease."""
        return (self.singleton or self.ha.primary) if self.ha.fence is None else self.ha.fence

    def uses_closure(self, roles: dict[str, RoleSpec]) -> set[str]:
        """Every role this one uses, directly or through others."""
        seen: set[str] = set()
        todo = list(self.uses)
        while todo:
            name = todo.pop()
            if name not in seen and name in roles:
                seen.add(name)
                todo.extend(roles[name].uses)
        return seen


@dataclass(frozen=True, slots=True)
class StackSpec:
    name: str
    images: tuple[ImageSpec, ...] = ()
    roles: tuple[RoleSpec, ...] = ()
    # A floating IPv4 address on the hosts' underlay (control/vip.py): "" for none.
    vip: str = ""

    def role(self, name: str) -> RoleSpec:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(name)

    def image(self, name: str) -> ImageSpec:
        for i in self.images:
            if i.name == name:
                return i
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> StackSpec:
        return StackSpec(
            name=data["name"],
            images=tuple(
                ImageSpec(**{**i, "source": ImageSource(i["source"]),
                             "packages": tuple(i.get("packages", ()))})
                for i in data.get("images", ())
            ),
            roles=tuple(_role_from_json(r) for r in data.get("roles", ())),
            vip=data.get("vip", ""),
        )


def _role_from_json(r: dict[str, Any]) -> RoleSpec:
    health = r.get("health")
    return RoleSpec(
        name=r["name"],
        image=r["image"],
        count=r["count"],
        command=tuple(r["command"]),
        resources=Resources(**r["resources"]),
        ports=tuple(PortMap(**p) for p in r.get("ports", ())),
        env=tuple((k, v) for k, v in r.get("env", ())),
        files=tuple((k, v) for k, v in r.get("files", ())),
        health=_health_from_json(health) if health else None,
        uses=tuple(r.get("uses", ())),
        runtime=RuntimeKind(r["runtime"]) if r.get("runtime") else None,
        restart=RestartPolicy(**r.get("restart", {})),
        stop_timeout=r.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        app=AppSource(**r["app"]) if r.get("app") else None,
        update=UpdatePolicy(**r.get("update", {})),
        reload=_reload_from_json(r["reload"]) if r.get("reload") else None,
        data=DataDisk(**r["data"]) if r.get("data") else None,
        image_digest=r.get("image_digest", ""),
        logs=LogLimits(**r.get("logs", {})),
        ha=_ha_from_json(r.get("ha", {})),
        placement=PlacementRule(Spread(sp) if (sp := r.get("placement", {}).get("spread"))
                                else None),
        egress=r.get("egress", True),
        backup=BackupPolicy(b["every"], Keep(**b.get("keep", {})), b.get("to", "default"))
        if (b := r.get("backup")) else None,
        job=JobPolicy(j["schedule"], Concurrency(j["concurrency"]), j["timeout"], j["history"],
                      CatchUp(j["catch_up"])) if (j := r.get("job")) else None,
        before=tuple(r.get("before", ())),
        scale=_scale_from_json(s) if (s := r.get("scale")) else None,
    )


def _scale_from_json(s: dict[str, Any]) -> ScalePolicy:
    t = s.get("target")
    return ScalePolicy(
        s["min"], s["max"], ScaleTarget(TargetKind(t["kind"]), t["value"]) if t else None,
        s.get("warm", 0), s.get("cooldown", 120.0), s.get("tolerance", 0.1),
        tuple((c, m, f) for c, m, f in s.get("windows", ())), s.get("via", ""),
        s.get("stats", DEFAULT_STATS), s.get("backend", ""))


def _ha_from_json(h: dict[str, Any]) -> HaPolicy:
    return HaPolicy(h.get("singleton", False),
                    Replace(h["replace"]) if h.get("replace") else None, h.get("fence"),
                    h.get("primary", False))


def _reload_from_json(r: dict[str, Any]) -> ReloadSpec:
    return ReloadSpec(signal=r.get("signal"), exec=tuple(r["exec"]) if r.get("exec") else None)


def _health_from_json(h: dict[str, Any]) -> HealthSpec:
    return HealthSpec(**{**h, "exec": tuple(h["exec"]) if h.get("exec") else None})


def digest(obj: object) -> str:
    """A short stable hash of JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
