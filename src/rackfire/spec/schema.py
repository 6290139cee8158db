"""The stack file's shape as pydantic models: the only place pydantic is used for stack files.

Models are strict (a string is not a list, 3.0 and true are not counts) and forbid unknown
keys. Every rule that concerns a single key or value lives here, so its error carries that
value's path; rules between entries (references, uniqueness) are in `crosscheck`.

Custom scalars (sizes, durations, ports, env values) use a PlainValidator that does its own
type check: a pydantic union would report one error per member instead of one clear message.
Validated models hold converted values (bytes, seconds, PortMap) ready for `convert`.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Self, Union, get_args, get_origin
from urllib.parse import urlsplit

import jinja2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from rackfire.model import cron
from rackfire.model.stack import (
    DEFAULT_STATS,
    MAX_COUNT,
    MAX_LOG_FILES,
    MIN_LOG_SIZE,
    NAME_PATTERN,
    CatchUp,
    Concurrency,
    ImageSource,
    PortMap,
    Replace,
    RuntimeKind,
    ScalePolicy,
    ScaleTarget,
    Spread,
    TargetKind,
    scale_problems,
)
from rackfire.model.template_sandbox import forbidden_message, forbidden_tag
from rackfire.model.units import format_size, parse_duration, parse_size

MiB = 1024 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_SUITE = re.compile(r"[a-z][a-z0-9.-]*")
_KERNEL_TREES = ("/proc", "/sys", "/dev")
_MANAGED_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
# Templates are only parsed here, never rendered, so autoescaping is irrelevant.
_JINJA = jinja2.Environment()  # noqa: S701


def describe(value: object) -> str:
    """A short rendering of a YAML value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# -- single values ---------------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1 to 32 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid environment variable name: use letters, digits and '_', "
            "not starting with a digit"
        )
    return value


def _env_value(value: object) -> str:
    if isinstance(value, bool):  # as written in YAML, not Python's True/False
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"expected a string, number or boolean, got {describe(value)}")


def normalize_file_path(value: str) -> str:
    """The canonical form of a `files` key; ValueError says why a path is not allowed."""
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path (e.g. /etc/app.conf)")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} contains '..'; write the path without it")
    if value.endswith("/") or "\0" in value:
        raise ValueError(f"{value!r} does not name a file")
    path = "/" + posixpath.normpath(value).lstrip("/")
    for tree in _KERNEL_TREES:
        if path == tree or path.startswith(tree + "/"):
            raise ValueError(f"{path} is under {tree}, which the kernel provides at run time")
    if path in _MANAGED_FILES:
        raise ValueError(f"{path} is written by rackfire, so that stack names resolve")
    return path


def _check_file_path(value: str) -> str:
    normalize_file_path(value)
    return value  # normalized in `convert`, once collisions have been checked


def _check_template(value: str) -> str:
    try:
        tree = _JINJA.parse(value)
    except jinja2.TemplateSyntaxError as e:
        where = f" (template line {e.lineno})" if e.lineno and e.lineno > 1 else ""
        raise ValueError(f"invalid Jinja2 template{where}: {e.message}") from None
    forbidden = forbidden_tag(tree)
    if forbidden is not None:
        tag, line = forbidden
        where = f" (template line {line})" if line > 1 else ""
        raise ValueError(f"invalid Jinja2 template{where}: {forbidden_message(tag)}")
    return value


def _size_at_least(minimum: int) -> Callable[[object], int]:
    def validate(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"expected a size such as 256M or 1G, got {describe(value)}")
        try:
            size = parse_size(value)
        except OverflowError:
            size = 2**63
        if size < minimum:
            raise ValueError(f"must be at least {format_size(minimum)}, got {describe(value)}")
        if size >= 2**63:
            raise ValueError(f"{describe(value)} is too large")
        return size

    return validate


def _duration(*, positive: bool) -> Callable[[object], float]:
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a duration such as 2s, 500ms or 1m, got {describe(value)}")
        seconds = parse_duration(value)
        if not math.isfinite(seconds) or seconds < 0:  # float() accepts "-1", "inf", "nan"
            raise ValueError(f"{describe(value)} is not a duration")
        if positive and seconds == 0:
            raise ValueError(f"must be longer than 0, got {describe(value)}")
        return seconds

    return validate


def _port_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def _port_map(value: object) -> PortMap:
    """`8000`, `"8080:8000"` or `"127.0.0.1:8080:8000"` (host ip, host port, instance port)."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = _port_number(str(value))
        return PortMap(port, port)
    if not isinstance(value, str):
        raise ValueError(f"expected a port such as 8000 or \"8080:8000\", got {describe(value)}")
    # rsplit keeps an IPv6 host address ("::1:8080:80") in one piece.
    parts = value.rsplit(":", 2)
    if len(parts) == 3:
        host_ip = parts[0].removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise ValueError(f"{parts[0]!r} in {value!r} is not an IP address") from None
        return PortMap(_port_number(parts[1]), _port_number(parts[2]), host_ip)
    host, container = parts if len(parts) == 2 else (parts[0], parts[0])
    return PortMap(_port_number(host), _port_number(container))


def _check_vip(value: str) -> str:
    """A floating address on the hosts' underlay: one IPv4 unicast address."""
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address (e.g. 192.168.10.50)") from None
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local \
            or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{value!r} cannot float between hosts: pick an unused unicast "
                         "address of the hosts' network")
    return str(ip)


def _check_http_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"{value!r} is not an http:// URL (e.g. http://127.0.0.1:8000/health)")
    return value


def _check_mirror(value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("http", "https", "file") or (url.scheme != "file" and not url.hostname):
        raise ValueError(f"{value!r} is not an http://, https:// or file:// URL")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def validate(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return validate


_SIZE_JSON = WithJsonSchema({
    "type": ["string", "integer"], "pattern": r"^\s*\d+(\.\d+)?\s*([KkMmGgTtPp][Ii]?)?[Bb]?\s*$",
    "description": "bytes, or a size such as 256M, 1G, 1.5GiB"})
_DURATION_JSON = WithJsonSchema({
    "type": ["string", "number"],
    "description": "seconds, or a duration such as 2s, 500ms, 1m30s"})

Name = Annotated[str, AfterValidator(_check_name),
                 WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})]
EnvName = Annotated[str, AfterValidator(_check_env_name),
                    WithJsonSchema({"type": "string", "pattern": f"^{_ENV_NAME.pattern}$"})]
EnvValue = Annotated[str, PlainValidator(_env_value),
                     WithJsonSchema({"type": ["string", "number", "boolean"]})]
FilePath = Annotated[str, AfterValidator(_check_file_path),
                     WithJsonSchema({"type": "string", "pattern": "^/"})]
Template = Annotated[str, AfterValidator(_check_template)]
Memory = Annotated[int, PlainValidator(_size_at_least(4 * MiB)), _SIZE_JSON]
Disk = Annotated[int, PlainValidator(_size_at_least(16 * MiB)), _SIZE_JSON]
LogSize = Annotated[int, PlainValidator(_size_at_least(MIN_LOG_SIZE)), _SIZE_JSON]
Interval = Annotated[float, PlainValidator(_duration(positive=True)), _DURATION_JSON]
Duration = Annotated[float, PlainValidator(_duration(positive=False)), _DURATION_JSON]
Port = Annotated[int, Field(ge=1, le=65535)]
PortEntry = Annotated[PortMap, PlainValidator(_port_map), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
              {"type": "string", "description": "[HOST_IP:]HOST_PORT:PORT"}]})]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
MirrorUrl = Annotated[str, AfterValidator(_check_mirror)]
PackageName = Annotated[str, AfterValidator(_pattern(_DEBIAN_PACKAGE, "a Debian package name"))]
Suite = Annotated[str, AfterValidator(_pattern(_SUITE, "a Debian suite name (e.g. bookworm)"))]


# -- models ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImageModel(_Strict):
    source: ImageSource = Field(alias="from", strict=False)  # strict enums want enum objects
    suite: Suite | None = None
    packages: list[PackageName] | None = None
    mirror: MirrorUrl | None = None
    path: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _fits_source(self) -> Self:
        only_for = {"suite": ImageSource.DEBOOTSTRAP, "packages": ImageSource.DEBOOTSTRAP,
                    "mirror": ImageSource.DEBOOTSTRAP, "path": ImageSource.TARBALL}
        misplaced = [f"'{key}' only applies to from: {only_for[key]}"
                     for key in sorted(self.model_fields_set)
                     if only_for.get(key, self.source) != self.source]
        if self.source == ImageSource.RELEASE:
            misplaced.append("from: release layers are made by `rackfire push` and `app:`")
        if self.source == ImageSource.TARBALL and self.path is None:
            misplaced.append("from: tarball needs a path to a rootfs tarball")
        if misplaced:
            raise ValueError("; ".join(misplaced))
        return self


class ResourcesModel(_Strict):
    cpu: float | None = Field(None, gt=0, le=256, description="cores")
    memory: Memory | None = None
    disk: Disk | None = None
    pids: int | None = Field(None, ge=1)


class HealthModel(_Strict):
    http: HttpUrl | None = Field(None, description="GET this URL inside the instance; 2xx/3xx")
    tcp: Port | None = Field(None, description="connect to this port inside the instance")
    exec: list[str] | None = Field(None, min_length=1,
                                   description="run this command inside; exit 0 is healthy")
    interval: Interval | None = None
    timeout: Interval | None = None
    retries: int | None = Field(None, ge=1)
    grace: Duration | None = Field(None, description="a starting instance may fail this long")

    @model_validator(mode="after")
    def _one_probe(self) -> Self:
        if sum(p is not None for p in (self.http, self.tcp, self.exec)) != 1:
            raise ValueError("set exactly one of http, tcp or exec")
        return self


class RestartModel(_Strict):
    attempts: int | None = Field(None, ge=1, le=1000,
                                 description="restarts within `window` before it is failed")
    window: Interval | None = None


_SIGNALS = ("HUP", "USR1", "USR2", "INT", "QUIT", "TERM", "WINCH")


def _check_signal(value: str) -> str:
    name = value.upper().removeprefix("SIG")
    if name not in _SIGNALS:
        raise ValueError(f"{value!r} is not a signal rackfire sends; use one of "
                         f"{', '.join(_SIGNALS)}")
    return name


def _check_data_path(value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path without '..' (e.g. /data)")
    path = "/" + posixpath.normpath(value).lstrip("/")
    if path in ("/", "/etc", "/usr", "/bin", "/lib", "/tmp", "/app") or any(
            path == t or path.startswith(t + "/") for t in _KERNEL_TREES):
        raise ValueError(f"{path} is part of the image or the kernel's; mount data at a path "
                         "of its own, e.g. /data")
    return path


class UpdateModel(_Strict):
    max_unavailable: int | None = Field(None, ge=0, le=MAX_COUNT,
                                        description="instances out of service at a time")
    max_surge: int | None = Field(None, ge=0, le=100,
                                  description="extra instances while rolling")
    health_timeout: Interval | None = Field(
        None, description="a new instance must pass its check this soon, or the release is "
        "rolled back")

    @model_validator(mode="after")
    def _can_move(self) -> Self:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise ValueError("max_unavailable and max_surge cannot both be 0: nothing could "
                             "roll")
        return self


class ReloadModel(_Strict):
    signal: Annotated[str, AfterValidator(_check_signal)] | None = Field(
        None, description="sent to the instance's main process (HUP, USR2, ...)")
    exec: list[str] | None = Field(None, min_length=1, description="run inside the instance")

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.signal is None) == (self.exec is None):
            raise ValueError("set exactly one of signal or exec")
        return self


class DataModel(_Strict):
    path: Annotated[str, AfterValidator(_check_data_path)] = Field(
        description="where the data disk is mounted inside the instance")
    size: Disk
    replicas: int = Field(1, ge=1, le=2, description="2: a standby copy on another host, "
                          "updated every few seconds, that it fails over onto")


class HaModel(_Strict):
    singleton: bool = Field(False, strict=True,
                            description="never two copies at once (placed again only after "
                            "its lost host's fence)")
    replace: Replace | None = Field(None, strict=False, description=
                                    "immediate (default) or fenced: when a lost host's "
                                    "instance is placed again")
    fence: bool | None = Field(None, strict=True, description=
                               "its host stops it when that loses the controller (default: "
                               "singletons only)")
    primary: bool = Field(False, strict=True, description=
                          "one instance is the primary: the role's name resolves to it, "
                          "templates see it (instance.primary, roles.<r>.primary), and "
                          "another is promoted once its host is fenced")

    @model_validator(mode="after")
    def _singleton_fenced(self) -> Self:
        if self.singleton and self.primary:
            raise ValueError("a singleton has one instance: `primary` is for a role of "
                             "several (a primary and its standbys)")
        if self.primary and self.fence is False:
            raise ValueError("a primary's host stops it when it loses the controller, so "
                             "that a standby can be promoted: drop `fence: false`")
        if self.singleton and self.replace is Replace.IMMEDIATE:
            raise ValueError("a singleton is replaced only after its host's fence: drop "
                             "`replace: immediate`, or `singleton`")
        if self.singleton and self.fence is False:
            raise ValueError("a singleton's host stops it when it loses the controller: "
                             "drop `fence: false`, or `singleton`")
        return self


def _ha(value: object) -> object:
    """`ha: singleton` is short for `ha: {singleton: true}`."""
    if value == "singleton":
        return {"singleton": True}
    if isinstance(value, str):
        raise ValueError(f"{value!r} is not an ha policy: `singleton`, or a mapping with "
                         "singleton, replace, fence, primary")
    return value


class PlacementModel(_Strict):
    spread: Spread | None = Field(None, strict=False, description=
                                  "host (default, a preference), or rack / site: never two "
                                  "instances of the role in one (hosts' rack/site label)")


class LogsModel(_Strict):
    max_size: LogSize | None = Field(None, description="rotate the console log past this")
    max_files: int | None = Field(None, ge=1, le=MAX_LOG_FILES,
                                  description="console log files kept, the current one too")


class KeepModel(_Strict):
    last: int = Field(0, ge=0, le=10_000, description="the newest N, whatever their age")
    hourly: int = Field(0, ge=0, le=10_000, description="the newest of each of N hours")
    daily: int = Field(0, ge=0, le=10_000)
    weekly: int = Field(0, ge=0, le=10_000)
    monthly: int = Field(0, ge=0, le=10_000)


class BackupModel(_Strict):
    every: Interval = Field(description="how often (at least 1m)")
    keep: KeepModel | None = Field(None, description="what the retention keeps (default: "
                                   "the last 7)")
    to: Name = Field("default", description="the repository (`rackfire backup repo add`)")

    @model_validator(mode="after")
    def _often_enough(self) -> Self:
        if self.every < 60:
            raise ValueError("backups at most once a minute: `every` is at least 1m")
        return self


def _check_cron(value: str) -> str:
    try:
        cron.parse(value)
    except cron.CronError as e:
        raise ValueError(str(e)) from None
    return value


CronText = Annotated[str, AfterValidator(_check_cron),
                     WithJsonSchema({"type": "string", "description": "cron, UTC"})]


class JobModel(_Strict):
    concurrency: Concurrency = Field(Concurrency.FORBID, strict=False, description=
                                     "a slot while a run still runs: forbid (skip it), "
                                     "allow, replace (stop that run)")
    timeout: Interval = Field(3600.0, description="a run still running then is stopped")
    history: int = Field(10, ge=1, le=1000, description="runs kept, with exit and log tail")
    catch_up: CatchUp = Field(CatchUp.LAST, strict=False, description=
                              "slots missed while the controller was down: skip, last "
                              "(one run), all")


class ReleaseModel(_Strict):
    before: list[str] = Field(min_length=1, description=
                              "a task run on each new release before it rolls out (a "
                              "migration): the rollout goes only if it exits 0")


def _suffixed(suffix: str, what: str) -> Callable[[object], float]:
    """A number, with or without its unit: `60%`, `200/s`."""
    def validate(value: object) -> float:
        text = value.strip().removesuffix(suffix).strip() if isinstance(value, str) else value
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise ValueError(f"expected {what}, got {describe(value)}")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected {what}, got {describe(value)}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected {what}, got {describe(value)}")
        return number

    return validate


Percent = Annotated[float, PlainValidator(_suffixed("%", "a percentage such as 60%")),
                    WithJsonSchema({"type": ["string", "number"], "description": "60%"})]
Rate = Annotated[float, PlainValidator(_suffixed("/s", "a rate such as 200/s")),
                 WithJsonSchema({"type": ["string", "number"], "description": "200/s"})]


class ScaleTargetModel(_Strict):
    cpu: Percent | None = Field(None, description="of one core, or of the cpu limit")
    memory: Percent | None = Field(None, description="of the memory limit")
    requests_per_instance: Rate | None = Field(None, description="from the HAProxy in front")
    latency_p95: Interval | None = Field(None, description="from the HAProxy in front (its "
                                         "average response time: HAProxy keeps no p95)")

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give one target: cpu, memory, requests_per_instance or "
                             f"latency_p95{f' (not {len(given)})' if given else ''}")
        return self


class ScaleWindowModel(_Strict):
    cron: CronText = Field(description="when this least count begins (UTC)")
    min: int = Field(ge=0, le=MAX_COUNT)
    for_: Interval = Field(3600.0, alias="for", description="how long it holds (default 1h)")


class ScaleModel(_Strict):
    min: int = Field(1, ge=0, le=MAX_COUNT)
    max: int = Field(ge=1, le=MAX_COUNT)
    target: ScaleTargetModel | None = None
    warm: int = Field(0, ge=0, le=MAX_COUNT, description="instances kept made and stopped")
    cooldown: Duration = Field(120.0, description="a scale in waits this long after the last "
                               "higher recommendation")
    tolerance: float = Field(0.1, ge=0, lt=1, description="of the target, no change within")
    schedule: list[ScaleWindowModel] = Field([], description="least counts from cron times "
                                             "on: [{cron, min, for}]")
    via: Name | None = Field(None, description="the role whose HAProxy fronts this one "
                             "(default: the first that uses it)")
    stats: HttpUrl = Field(DEFAULT_STATS, description="its HAProxy stats CSV, inside it")
    backend: Name | None = Field(None, description="its HAProxy backend (default: this "
                                 "role's name)")

    def policy(self) -> ScalePolicy:
        t = self.target
        kind, value = next(((TargetKind(k), getattr(t, k)) for k in type(t).model_fields
                            if getattr(t, k) is not None), (None, 0.0)) if t else (None, 0.0)
        return ScalePolicy(
            self.min, self.max, ScaleTarget(kind, value) if kind else None, self.warm,
            self.cooldown, self.tolerance,
            tuple((w.cron, w.min, w.for_) for w in self.schedule),
            self.via or "", self.stats, self.backend or "")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        problems = scale_problems(self.policy())  # the decider's own rules
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RoleModel(_Strict):
    image: Name
    count: int = Field(1, ge=0, le=MAX_COUNT)
    command: list[str] = Field(min_length=1)
    resources: ResourcesModel | None = None
    ports: list[PortEntry] = []
    env: dict[EnvName, EnvValue] = {}
    files: dict[FilePath, Template] = {}
    health: HealthModel | None = None
    uses: list[Name] = []
    runtime: RuntimeKind | None = Field(None, strict=False)
    restart: RestartModel | None = None
    stop_timeout: Duration | None = Field(None, description="SIGTERM, then SIGKILL after this")
    app: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="a source dir (relative to the file), pushed as the role's release: "
        "it is at /app, its requirements.txt installed")
    update: UpdateModel | None = None
    reload: ReloadModel | None = Field(
        None, description="how the role re-reads changed files without a restart")
    data: DataModel | None = None
    logs: LogsModel | None = Field(
        None, description="how much console log its instances keep (default 10M x 3)")
    ha: Annotated[HaModel, BeforeValidator(_ha)] | None = Field(
        None, description="`singleton`, or how its instances fail over: {singleton, replace, "
        "fence, primary}")
    placement: PlacementModel | None = None
    egress: bool = Field(True, strict=True, description=
                         "reach the outside world through its host (NAT); false: only its "
                         "stack and the hosts")
    backup: BackupModel | None = Field(None, description="scheduled backups of its disks to "
                                       "a repository: {every, keep, to}")
    schedule: CronText | None = Field(None, description="a job: one fresh run per slot "
                                      "(cron, UTC), none of its own instances")
    job: JobModel | None = Field(None, description="how a job (`schedule:`) runs")
    scale: ScaleModel | None = Field(None, description="autoscaling: {min, max, target, warm, "
                                     "cooldown, schedule}")
    release: ReleaseModel | None = None


class StackModel(_Strict):
    """A stack file."""

    stack: Name
    images: dict[Name, ImageModel] = {}
    roles: dict[Name, RoleModel] = {}
    # A floating address on the underlay, held by one host of the stack at a time.
    vip: Annotated[str, AfterValidator(_check_vip)] | None = None


def allowed_keys(loc: tuple[str | int, ...], root: type[BaseModel] = StackModel) -> list[str]:
    """The keys the mapping at `loc` of a `root` accepts (empty if `loc` is not a model)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if part not in fields:
                return []
            tp = fields[str(part)].annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return sorted(f.alias or name for name, f in tp.model_fields.items())
    return []


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else tp
    return tp
