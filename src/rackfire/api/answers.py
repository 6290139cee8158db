"""What the API answers: one pydantic model per response body, so that the OpenAPI states
the shape of every answer (tests/unit/test_api_answers.py checks that every JSON route has
one) and a client can read an answer as a typed value.

The models describe the JSON the routes have always sent, field for field and in the same
order (the CLI prints answers as they come with --json). A number that may be whole
(`cpus: 2.0` or `2`, a time) is a `Number`: it keeps the type it has, as `json` writes it,
where a `float` field would turn 2 into 2.0. Secrets are in no answer but those that make
them, once (`TokenAnswer`, `JoinAnswer`): they are kept only hashed.

A constraint is stated only where it holds by construction (a digest is sha256 hex): an
answer its own model refuses is a 500. Imports stay clear of control/ and of I/O, so that
a client can use these without pulling in the server."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

from rackfire.api.types import DIGEST_PATTERN, Operation
from rackfire.model.host import HostState
from rackfire.model.instance import Health
from rackfire.model.records import (
    Backup,
    BackupState,
    ReleaseStatus,
    Repository,
    Run,
    RunKind,
    RunState,
    Snapshot,
    SnapshotState,
)
from rackfire.model.stack import CatchUp, Concurrency, RuntimeKind
from rackfire.plan.actions import ActionKind, Plan
from rackfire.schedule import Verdict

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
Seconds = Annotated[int | float, WithJsonSchema({"type": "number",
                                                 "description": "Unix time, seconds"})]
Bytes = Annotated[int, Field(description="bytes")]
InstanceName = Annotated[str, Field(description="STACK/ROLE/INDEX, e.g. shop/web/0")]


class HealthAnswer(BaseModel):
    """`GET /v1/health`: the server is up."""

    ok: bool
    version: str = Field(description="the server's rackfire version")
    host: str = Field(description="the server's own host")
    runtimes: list[RuntimeKind] = Field(description="what the server's host runs, best first")


# `properties` and `$defs` of a JSON Schema: names -> subschemas (an object or a boolean).
_SUBSCHEMAS: dict[str, Any] = {"type": "object",
                               "additionalProperties": {"type": ["object", "boolean"]}}


class StackFileSchema(RootModel[dict[str, Any]]):
    """The JSON Schema of a stack file (draft 2020-12)."""

    model_config = ConfigDict(json_schema_extra={
        "required": ["type", "properties"],
        "properties": {"type": {"const": "object"}, "properties": _SUBSCHEMAS,
                       "$defs": _SUBSCHEMAS}})


# Plans and changes ------------------------------------------------------------------------

class ActionAnswer(BaseModel):
    """One action of a plan: an instance's own, or a stack action (a build, a migration's
    next step, an appliance re-pointed at who is ready)."""

    kind: ActionKind
    instance: InstanceName | None = Field(description="the instance; null for a build")
    role: str = Field(description="its role; '' for an image build")
    index: int | None
    reason: str = Field(description="why, for people")
    not_before: Seconds | None = Field(description="a restart's backoff: not before then")
    held: str = Field(description="why a rolling action may not go on yet; '' if it may")
    rolling: bool = Field(description="a batch at a time, each healthy before the next")
    batch: int = Field(description="how many of the role's rolling actions go together")
    subject: str = Field("", description="what it is about: the instance, `image/NAME`, "
                         "or STACK/ROLE for a release")
    by: str = Field("executor", description="who carries it out: executor | migration | "
                    "publisher")


class LostAnswer(BaseModel):
    instance: str
    host: str


class PlanAnswer(BaseModel):
    """What `apply` would change now (`POST /v1/plan`)."""

    stack: str
    generation: int = Field(
        description="the stack's generation the plan was made from: give it to apply as "
        "`expected_generation` to apply only this plan")
    changes: int = Field(description="how many actions")
    actions: list[ActionAnswer]
    notes: list[str] = Field(description="what to know before applying (e.g. where the "
                             "file sets back what `scale` or `resize` set)")
    placement: list[str] = Field(description="with `explain`: where each new instance goes, "
                                 "and why no other host")
    lost: list[LostAnswer] = Field([], description="instances on a host whose lease lapsed: "
                                   "left as they are, nothing known of them")


class ChangeAnswer(PlanAnswer):
    """A change was made: the stack's new desired state is stored and rolling out, as this
    plan says."""

    generation: int = Field(description="the stack's new generation")


def change_answer(generation: int, plan: Plan) -> ChangeAnswer:
    return ChangeAnswer.model_validate(plan.to_json() | {"generation": generation})


class OperateAnswer(BaseModel):
    """stop, start or restart: recorded for each instance as its desired state."""

    stack: str
    operation: Operation
    generation: int = Field(description="the stack's new generation")
    instances: list[InstanceName]


class DestroyAnswer(BaseModel):
    stack: str
    generation: int = Field(description="the generation that deletes it")


# Stacks and instances ---------------------------------------------------------------------

class JournalAction(BaseModel):
    """An action of the stack's current generation, as the action journal has it."""

    id: str
    generation: int
    kind: str = Field(description="an action kind (see ActionAnswer)")
    instance: str
    reason: str
    state: str = Field(description="pending | running | done | failed")
    error: str


class StackAnswer(BaseModel):
    """A stack: its desired generation, what the controller made of it, and what is not
    ready yet."""

    name: str
    generation: int = Field(description="the desired state's generation")
    observed_generation: int = Field(description="the generation the status is about")
    status: str = Field(description="progressing | converged | degraded | failed | deleting")
    message: str
    deleting: bool
    subnet: str
    converged: bool = Field(description="the status is converged or degraded, and of the "
                            "current generation")
    actions: list[JournalAction]
    unready: list[str] = Field(description="instances not running and passing their check, "
                               "each with why")
    data_disks: int = Field(description="how many data disks its instances have")


class InstanceAnswer(BaseModel):
    """One instance, as `ps` shows it: what its host sees and what the controller decided."""

    stack: str
    name: str = Field(description="ROLE-INDEX")
    role: str
    index: int
    id: str = Field(description="STACK.ROLE.INDEX")
    state: str = Field(description="running | stopped | failed | partial | lost")
    ip: str | None
    host: str
    runtime: RuntimeKind
    isolated: bool = Field(description="it runs in a container")
    started_at: Seconds | None
    uptime: Number | None = Field(description="seconds, while it runs")
    health: Health
    health_message: str = Field(description="why it is unhealthy or failed")
    pid: int | None
    oom_killed: bool
    exit_code: int | None
    exit_signal: int | None
    ended: str = Field(description="how its last run ended while it is stopped: 'exited 3', "
                       "'killed by SIGKILL (OOM)'; 'stopped' when that is not known")
    restarts: int = Field(description="restarts after a failure since it was made from its "
                          "spec")
    stopped_by_operator: bool
    failed: str = Field(description="why the restart policy gave up on it; '' if it did not")
    log: str | None = Field(description="its console log's path on the host that runs it "
                            "(`host`); null if its agent does not say")
    incarnation: int = Field(0, description="the run it is: issued with each placement on "
                             "a host (a replacement elsewhere is a later one)")


class StatsAnswer(BaseModel):
    """Measured usage of one instance; null where its runtime cannot tell."""

    stack: str
    name: str
    role: str
    index: int
    id: str = Field(description="STACK.ROLE.INDEX")
    state: str = Field(description="running | stopped | failed | partial")
    health: Health
    host: str
    uptime: Number | None = Field(description="seconds, while it runs")
    cpu_percent: Number | None = Field(description="100 is one core, over the last sample")
    memory_used: int | None = Field(description="bytes, without reclaimable page cache")
    memory_limit: int | None = Field(description="bytes")
    disk_used: int | None = Field(description="bytes")
    disk_limit: int | None = Field(description="bytes")
    net_rx: int | None = Field(description="bytes received")
    net_tx: int | None = Field(description="bytes sent")
    pids: int | None
    log_bytes: int | None = Field(description="its console log, rotated files included")


class EventAnswer(BaseModel):
    """Something the controller did or was asked to do."""

    id: int
    time: Seconds
    actor: str = Field(description="controller, health, or the operator as the CLI names them")
    stack: str
    target: str = Field(description="a stack, role, instance (shop/web/0), image/NAME or "
                        "host/NAME")
    action: str
    result: str = Field(description="ok | failed | refused | started")
    reason: str


# Images and releases ----------------------------------------------------------------------

class ImageAnswer(BaseModel):
    name: str
    digest: str = Field(pattern=DIGEST_PATTERN)
    source: str = Field(description="what it was made from: host, debootstrap, tarball, "
                        "release")
    created: Seconds
    size_bytes: Bytes


class RemovedAnswer(BaseModel):
    name: str
    removed: bool = Field(description="false: there was nothing of that name")


class SourceAnswer(BaseModel):
    digest: str = Field(pattern=DIGEST_PATTERN, description="the source tree's digest: "
                        "give it to apply (`sources`) or push")


class TarballAnswer(BaseModel):
    digest: str = Field(pattern=DIGEST_PATTERN, description="the tarball's sha256: give it "
                        "to plan and apply (`tarballs`)")
    size: int = Field(ge=0, description="bytes")


class ReleaseAnswer(BaseModel):
    """One version of what a role runs: an image, plus the pushed app (if any)."""

    stack: str
    role: str
    version: int
    source: str = Field(description="the app's source digest; '' for an image-only role")
    label: str = Field(description="where the source came from")
    layer: str = Field(description="the release layer's digest; '' until built")
    image: str
    image_digest: str
    actor: str
    created: Seconds
    status: ReleaseStatus
    reason: str
    updated: Seconds
    current: bool = Field(description="the role's desired spec runs it")


# Snapshots --------------------------------------------------------------------------------

class SnapshotDiskAnswer(BaseModel):
    name: str = Field(description="disk.img (the root disk) or data.img (the data disk)")
    size: int = Field(ge=0, description="bytes, as the instance sees the disk")
    held: int = Field(ge=0, description="bytes the copy holds (shared extents included)")


class SnapshotCopyAnswer(BaseModel):
    instance: str
    host: str
    disks: list[SnapshotDiskAnswer]
    method: str = Field(description="reflink (instant, shares extents) or copy")
    frozen_ms: float = Field(description="how long its filesystems were frozen")


class SnapshotAnswer(BaseModel):
    """A stack's instances' disks at one point, with its desired state then."""

    stack: str
    name: str
    ref: str = Field(description="STACK@NAME, as restore takes it")
    scope: str = Field(description="what was taken: a stack, a role or an instance")
    created: Seconds
    actor: str
    state: SnapshotState
    generation: int = Field(description="the stack's generation it holds the spec of")
    releases: list[str] = Field(description="ROLE vVERSION of each live release")
    held: int = Field(ge=0, description="bytes its copies hold")
    copies: list[SnapshotCopyAnswer]
    error: str


def snapshot_answer(snap: Snapshot) -> SnapshotAnswer:
    return SnapshotAnswer(
        stack=snap.stack, name=snap.name, ref=snap.ref, scope=snap.scope,
        created=snap.created, actor=snap.actor, state=snap.state,
        generation=snap.generation,
        releases=[f"{r.role} v{r.version}" for r in snap.releases], held=snap.held,
        copies=[SnapshotCopyAnswer(
            instance=c.instance, host=c.host, method=c.method, frozen_ms=c.frozen_ms,
            disks=[SnapshotDiskAnswer(name=n, size=size, held=used)
                   for n, size, used in c.disks]) for c in snap.copies],
        error=snap.error)


class RestoreAnswer(BaseModel):
    """The restore is under way: the instances roll from the snapshot's disks."""

    stack: str
    snapshot: str
    generation: int = Field(description="the stack's new generation")
    instances: list[InstanceName] = Field(description="those made again from it")


class RepositoryAnswer(BaseModel):
    """A backup repository: its name and address. Its password and keys are never shown."""

    name: str
    url: str
    holds: list[str] = Field(description="what it keeps besides (the password, the names of "
                             "its backend's variables), never their values")
    created: Seconds
    actor: str


def repository_answer(repo: Repository) -> RepositoryAnswer:
    return RepositoryAnswer(name=repo.name, url=repo.shown_url,
                            holds=["password", *(k for k, _ in repo.env)],
                            created=repo.created, actor=repo.actor)


class BackupPartAnswer(BaseModel):
    instance: str
    host: str = Field(description="the host that sent it")
    archive: str = Field(description="the repository's id of it (a restic snapshot)")
    size: int = Field(ge=0, description="bytes sent")


class BackupAnswer(BaseModel):
    """A snapshot's disks in a repository, with the stack's spec and releases then."""

    stack: str
    name: str
    ref: str = Field(description="STACK@NAME, as `backup restore` takes it")
    repository: str
    scope: str = Field(description="what was taken: a stack, a role or an instance")
    created: Seconds
    actor: str
    state: BackupState
    releases: list[str] = Field(description="ROLE vVERSION of each live release")
    size: int = Field(ge=0, description="bytes sent")
    parts: list[BackupPartAnswer]
    error: str


def backup_answer(b: Backup) -> BackupAnswer:
    return BackupAnswer(
        stack=b.stack, name=b.name, ref=b.ref, repository=b.repository,
        scope=b.snapshot.scope, created=b.created, actor=b.actor, state=b.state,
        releases=[f"{r.role} v{r.version}" for r in b.snapshot.releases],
        size=sum(p.size for p in b.parts),
        parts=[BackupPartAnswer(instance=p.instance, host=p.host, archive=p.archive,
                                size=p.size) for p in b.parts], error=b.error)


class VerifyAnswer(BaseModel):
    backup: str
    read: int = Field(ge=0, description="bytes read back, every disk's digest checked")
    seconds: float


class CloneAnswer(BaseModel):
    """The clone is being made (or promoted): its instances roll as a new stack's do."""

    stack: str
    snapshot: str = Field(description="the snapshot it was made from ('' for a promote)")
    generation: int = Field(description="the stack's new generation")


class ReleaseRun(BaseModel):
    source: str
    image: str
    label: str
    version: int = Field(description="in its own stack's numbering")


class ReleaseDiff(BaseModel):
    role: str
    a: ReleaseRun | None = Field(description="what the role runs live in a (null: nothing)")
    b: ReleaseRun | None


class DiffAnswer(BaseModel):
    a: str
    b: str
    spec: list[str] = Field(description="a unified diff of their specs (as JSON), names aside")
    releases: list[ReleaseDiff] = Field(description="the roles whose live releases differ")


# Hosts ------------------------------------------------------------------------------------

class TokenAnswer(BaseModel):
    token: str = Field(description="the join token: shown only now, kept only hashed")
    expires: Seconds
    uses: int


class JoinAnswer(BaseModel):
    """The joined host's own secrets: shown only now, kept only hashed."""

    name: str
    credential: str = Field(description="the host's bearer credential for /v1/agent/*")
    agent_key: str = Field(description="what the server presents to the host's agent")


class ReplacedRun(BaseModel):
    instance: str = Field(description="STACK/ROLE/INDEX")
    incarnation: int = Field(description="the run the controller holds")


class HeartbeatAnswer(BaseModel):
    name: str
    time: Seconds = Field(description="the server's clock")
    epoch: int = Field(1, description="the host's epoch: its agent refuses mutating calls "
                       "stamped with an older one")
    want_observed: bool = Field(False, description="send every instance's facts with the "
                                "next heartbeat (the server has none of this host's)")
    fence_after: Seconds = Field(0, description="stop what fences (agent/watchdog.py) after "
                                 "this long without a heartbeat answered; 0: never")
    lease: Seconds = Field(0, description="the host's lease: a floating address it holds "
                           "is released this long after its last heartbeat answered")
    replaced: list[ReplacedRun] = Field([], description="copies on this host that were "
                                        "replaced: destroy each one older than this run")



class Amounts(BaseModel):
    cpus: Number = Field(description="cores")
    memory: Bytes
    disk: Bytes


class UsedAmounts(BaseModel):
    memory: Bytes
    disk: Bytes


class HostAnswer(BaseModel):
    """A host: what it can reserve, what stacks reserve on it, what is used."""

    name: str
    state: str = Field(description="ready | suspect | lost | draining | fenced | down")
    local: bool = Field(description="the server's own host")
    labels: dict[str, str]
    runtimes: list[RuntimeKind]
    capacity: Amounts = Field(description="what it can hard-reserve")
    reserved: Amounts = Field(description="what the instances placed on it reserve")
    used: UsedAmounts = Field(description="what is in use, as it reports")
    last_seen: Seconds | None = Field(description="its last heartbeat; null for the server's")
    version: str
    address: str = Field(description="its agent's HOST:PORT; '' for the server's own")
    epoch: int = Field(1, description="its incarnation: rises when it heartbeats again after "
                       "its lease lapsed; its agent refuses calls stamped with an older one")
    lease_until: Seconds | None = Field(None, description="its lease lapses then unless it "
                                        "heartbeats; null for the server's own")
    observed_at: Seconds | None = Field(None, description="when it last told of all its "
                                        "instances (the observed cache)")
    lease_age: Seconds | None = Field(None, description="seconds since its last heartbeat; "
                                      "null for the server's own")
    lease: Seconds | None = Field(None, description="how long a heartbeat holds its lease")


class HostChangeAnswer(BaseModel):
    step: str = Field(description="install | reconfigure | upgrade | uninstall")
    name: str
    changes: list[str] = Field(description="what differs, as `field: old -> new`")


class HostsPlanAnswer(BaseModel):
    """What `hosts apply` of this hosts file would do, in the order it would do it."""

    version: str = Field(description="the rackfire version an apply installs")
    changes: list[HostChangeAnswer]


class HostOutcomeAnswer(BaseModel):
    step: str = Field(description="install | reconfigure | upgrade | uninstall")
    name: str
    done: bool
    failed_step: str = Field(description="where it stopped (connect, host key, login, probe, "
                             "copy, unpack, start, join ...); '' when done")
    error: str = Field(description="what the host said; '' when done")


class HostsApplyAnswer(BaseModel):
    """What `hosts apply` did, host by host: a host that failed did not stop the others."""

    version: str
    outcomes: list[HostOutcomeAnswer]


class HostUsage(BaseModel):
    name: str
    state: HostState
    labels: dict[str, str]
    capacity: Amounts
    reserved: Amounts
    free: Amounts = Field(description="negative where the host holds more than it can now")
    instances: int


class Stranded(BaseModel):
    instance: InstanceName
    why: dict[str, str] = Field(description="host -> why it cannot run there")


class Loss(BaseModel):
    """One failure scenario: `hosts` go down at once."""

    lost: str = Field(description="the host's name, a pair's (A+B), the rack's or the site's")
    hosts: list[str]
    displaced: int = Field(description="how many instances ran there")
    stranded: list[Stranded] = Field(description="those that would fit nowhere else")


class HostLosses(BaseModel):
    ok: bool = Field(description="every instance could run again after losing any one host")
    losses: list[Loss]


class RackLosses(BaseModel):
    ok: bool = Field(description="every instance could run again after losing any one rack")
    losses: list[Loss]
    unracked: list[str] = Field(description="hosts without a rack label")


class PairLosses(BaseModel):
    ok: bool = Field(description="every instance could run again after losing any two hosts "
                     "(of `hosts`)")
    losses: list[Loss] = Field(description="the pairs that strand something; every other "
                               "pair strands nothing")
    pairs: int = Field(description="how many pairs were tried")
    hosts: list[str] = Field(description="the hosts paired: every host, or, past 40, the 40 "
                             "holding the most instances")
    capped: bool = Field(description="not every host was paired")


class SiteLosses(BaseModel):
    ok: bool = Field(description="every instance could run again after losing any one site")
    losses: list[Loss]
    unsited: list[str] = Field(description="hosts without a site label")


class Survival(BaseModel):
    verdict: Verdict = Field(
        description="ok: every instance could run again; degraded: some could not, each role "
        "keeps one; down: a role would have none; untested: no such scenario")
    loss: str | None = Field(description="the scenario that decides it (the first of the "
                             "worst); null when ok or untested")
    stranded: list[InstanceName] = Field(description="the stack's instances it strands")


class StackSurvival(BaseModel):
    """Whether a stack keeps serving after each kind of loss: the worst scenario of each."""

    stack: str
    host: Survival = Field(description="any one host lost")
    hosts_2: Survival = Field(description="any two hosts lost")
    rack: Survival = Field(description="any one rack lost")
    site: Survival = Field(description="any one site lost")
    pinned: dict[str, str] = Field(
        description="instance (STACK/ROLE/INDEX) -> the one host its data disk is on: losing "
        "that host stops it until the host returns (it is held, not placed again)")


class RoleHeadroom(BaseModel):
    role: str = Field(description="STACK/ROLE")
    more: int | None = Field(description="how many more instances fit; null: no end")
    hosts: dict[str, int | None] = Field(description="host -> how many more fit there")
    then: dict[str, list[str]] = Field(description="host -> why one more would not fit")


class CapacityAnswer(BaseModel):
    """Reserved and free per host, losing any one host (N+1), any two, any rack and any site,
    whether each stack survives them, and each role's headroom."""

    hosts: list[HostUsage]
    n_plus_1: HostLosses
    racks: RackLosses
    n_plus_2: PairLosses
    sites: SiteLosses
    stacks: list[StackSurvival]
    headroom: list[RoleHeadroom]


class FenceAnswer(BaseModel):
    name: str
    placing: int = Field(description="how many instances are to be placed again elsewhere")


class HaAnswer(BaseModel):
    """An instance replaced only after its host's fence, and the chain of timings."""

    instance: str
    host: str
    state: str = Field(description="its host's: ready | suspect | lost | fenced | ...")
    singleton: bool
    self_fences: bool = Field(description="its host's watchdog stops it")
    data: bool = Field(description="it has a data disk (only on its host)")
    lease: Seconds | None = None
    lease_age: Seconds | None = None
    fence_after: Seconds | None = None
    grace: Seconds | None = None
    worst_case: Seconds | None = Field(None, description="host death to its replacement "
                                       "being started, at most (its start not counted)")
    chain: str


class DrainAnswer(BaseModel):
    name: str
    moving: int = Field(description="how many instances are to move")


class MigrationAnswer(BaseModel):
    instance: InstanceName
    source: str
    target: str
    step: str = Field(description="stopping | copying | starting | cleaning")
    started: Seconds
    actor: str


class PlacementsAnswer(RootModel[dict[str, str]]):
    """Instance (STACK/ROLE/INDEX) -> the host it is placed on."""


class StopAnswer(BaseModel):
    stopping: bool


class RunAnswer(BaseModel):
    """A run: a job's slot, a one-off task or a release's `before` task, each in a fresh
    instance of its role that ends."""

    stack: str
    number: int
    role: str
    instance: str = Field(description="its instance's id (`rackfire logs` takes it while "
                          "it exists)")
    kind: RunKind
    state: RunState
    command: list[str] = Field(description="[] for the role's own")
    slot: Seconds | None = Field(description="a job's scheduled minute")
    created: Seconds
    started: Seconds | None
    ended: Seconds | None
    timeout: Number = Field(description="seconds")
    exit_code: int | None
    signal: int | None
    exit_status: int = Field(description="what `rackfire run` exits with: the code, 128 + "
                             "a signal, 124 after a timeout, 1 otherwise")
    host: str
    reason: str = Field(description="how it ended: 'exited 3', 'timed out after 10m'")
    log: str = Field(description="the last lines of its log, kept when it ended")
    actor: str


class JobAnswer(BaseModel):
    """A job role: its schedule and how its runs went."""

    stack: str
    role: str
    schedule: str
    next_slot: Seconds | None
    concurrency: Concurrency
    catch_up: CatchUp
    timeout: Number = Field(description="seconds")
    history: int
    active: int = Field(description="runs under way")
    runs: list[RunAnswer] = Field(description="the newest first, at most `history`")


def run_answer(run: Run, exit_status: int) -> RunAnswer:
    return RunAnswer(
        stack=run.stack, number=run.number, role=run.role, instance=run.key.id,
        kind=run.kind, state=run.state, command=list(run.command), slot=run.slot,
        created=run.created, started=run.started, ended=run.ended, timeout=run.timeout,
        exit_code=run.exit_code, signal=run.signal, exit_status=exit_status, host=run.host,
        reason=run.reason, log=run.log, actor=run.actor)


class LoadRunAnswer(BaseModel):
    """One client's run: how it ended."""

    number: int
    state: RunState
    reason: str
    host: str


class LoadReportAnswer(BaseModel):
    """The clients' results merged (loadgen/report.py): latencies in ms, counted from each
    request's intended start (no coordinated omission)."""

    clients: int = Field(description="clients run")
    reporting: int = Field(description="of them, those that gave a valid result")
    sent: int
    completed: int = Field(description="got an HTTP response, any status")
    ok: int = Field(description="of them, 1xx-3xx")
    duration: Number = Field(description="seconds, first client's start to last one's end")
    throughput: Number = Field(description="completed / duration, per second")
    intended_rate: Number = Field(description="req/s asked, all clients")
    achieved_rate: Number = Field(description="req/s sent, all clients")
    p50_ms: Number
    p95_ms: Number
    p99_ms: Number
    max_ms: Number
    errors: dict[str, int] = Field(description="connect, timeout, reset, http_4xx, "
                                   "http_5xx, other, no_result (a client gave no result)")
    statuses: dict[str, int] = Field(description='"200": n, ...')
    runs: list[LoadRunAnswer]


class LoadTestAnswer(BaseModel):
    """A load test (`rackfire load`): its clients run in a stack of their own, removed when
    they are done."""

    id: str
    stack: str = Field(description="the target's stack")
    load_stack: str = Field(description="the clients' stack")
    target: str
    clients: int
    rate: Number = Field(description="req/s, all clients")
    duration: Number = Field(description="seconds")
    connections: int = Field(description="at most, per client")
    state: str = Field(description="running, done or failed")
    message: str = Field(description="why it failed, or what is incomplete")
    created: Seconds
    start_at: Seconds = Field(description="the clients' start barrier")
    ended: Seconds | None = Field(description="when its stack was removed (or gave up)")
    runs_done: int = Field(description="client runs ended")
    runs_total: int
    report: LoadReportAnswer | None = Field(description="once every client ended")


class AutoscaleAnswer(BaseModel):
    """A scaled role: its bounds and target, the metric now, and the last decision."""

    stack: str
    role: str
    min: int
    max: int
    target: str = Field(description="e.g. 'cpu 60%', 'requests_per_instance 200/s'; '' for "
                        "a schedule only")
    count: int = Field(description="the count it has now")
    ready: int | None
    metric: float | None = Field(description="in the target's unit; None: unknown")
    wanted: int | None = Field(description="what the last decision asked")
    min_now: int | None = Field(description="min, raised by a schedule window open now")
    reason: str = Field(description="the last decision's reason")
    decided: Seconds | None
    error: str = Field(description="why the metric could not be read")
