"""The JSON of the API's answers as TypedDicts: what api/client.py's methods return.

GENERATED from api/answers.py by `python -m rackfire.api.shapes_gen`: do not edit
(tests/unit/test_client_shapes.py checks that it is up to date). One TypedDict per answer
model, `XAnswer` -> `XShape`, with the model's fields in its order; an enum is the Literal of
its values (the JSON carries the value), under the enum's name. Standard typing only, so
that the CLI's types cost it no import (pydantic and fastapi are the server's).
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, TypedDict

# The enums of the answers, as the JSON carries them: their values.
ActionKind: TypeAlias = Literal[
    "build-image", "build-release", "migrate", "destroy", "stop", "fail", "create", "restart",
    "resize", "reload", "reconfigure", "replace", "publish"]
BackupState: TypeAlias = Literal["taking", "ready", "failed"]
CatchUp: TypeAlias = Literal["skip", "last", "all"]
Concurrency: TypeAlias = Literal["forbid", "allow", "replace"]
Health: TypeAlias = Literal["unknown", "starting", "healthy", "unhealthy", "-"]
HostState: TypeAlias = Literal["ready", "draining", "down", "fenced"]
Operation: TypeAlias = Literal["stop", "start", "restart"]
ReleaseStatus: TypeAlias = Literal["deploying", "live", "retired", "failed"]
RunKind: TypeAlias = Literal["job", "task", "before"]
RunState: TypeAlias = Literal[
    "pending", "running", "succeeded", "failed", "timed_out", "lost", "skipped", "missed",
    "cancelled"]
RuntimeKind: TypeAlias = Literal["container", "process", "fake"]
SnapshotState: TypeAlias = Literal["taking", "ready", "failed"]
Verdict: TypeAlias = Literal["ok", "degraded", "down", "untested"]


class HealthShape(TypedDict):
    """`GET /v1/health`: the server is up."""

    ok: bool
    version: str  # the server's rackfire version
    host: str  # the server's own host
    runtimes: list[RuntimeKind]  # what the server's host runs, best first


# The JSON Schema of a stack file (draft 2020-12).
StackFileSchemaShape: TypeAlias = dict[str, Any]


class ActionShape(TypedDict):
    """One action of a plan: an instance's own, or a stack action (a build, a migration's
    next step, an appliance re-pointed at who is ready)."""

    kind: ActionKind
    instance: str | None  # the instance; null for a build
    role: str  # its role; '' for an image build
    index: int | None
    reason: str  # why, for people
    not_before: int | float | None  # a restart's backoff: not before then
    held: str  # why a rolling action may not go on yet; '' if it may
    rolling: bool  # a batch at a time, each healthy before the next
    batch: int  # how many of the role's rolling actions go together
    subject: str  # what it is about: the instance, `image/NAME`, or STACK/ROLE for a release
    by: str  # who carries it out: executor | migration | publisher


class LostShape(TypedDict):
    instance: str
    host: str


class PlanShape(TypedDict):
    """What `apply` would change now (`POST /v1/plan`)."""

    stack: str
    # the stack's generation the plan was made from: give it to apply as `expected_generation` to
    # apply only this plan
    generation: int
    changes: int  # how many actions
    actions: list[ActionShape]
    # what to know before applying (e.g. where the file sets back what `scale` or `resize` set)
    notes: list[str]
    placement: list[str]  # with `explain`: where each new instance goes, and why no other host
    # instances on a host whose lease lapsed: left as they are, nothing known of them
    lost: list[LostShape]


class ChangeShape(TypedDict):
    """A change was made: the stack's new desired state is stored and rolling out, as this
    plan says."""

    stack: str
    generation: int  # the stack's new generation
    changes: int  # how many actions
    actions: list[ActionShape]
    # what to know before applying (e.g. where the file sets back what `scale` or `resize` set)
    notes: list[str]
    placement: list[str]  # with `explain`: where each new instance goes, and why no other host
    # instances on a host whose lease lapsed: left as they are, nothing known of them
    lost: list[LostShape]


class OperateShape(TypedDict):
    """stop, start or restart: recorded for each instance as its desired state."""

    stack: str
    operation: Operation
    generation: int  # the stack's new generation
    instances: list[str]


class DestroyShape(TypedDict):
    stack: str
    generation: int  # the generation that deletes it


class JournalActionShape(TypedDict):
    """An action of the stack's current generation, as the action journal has it."""

    id: str
    generation: int
    kind: str  # an action kind (see ActionAnswer)
    instance: str
    reason: str
    state: str  # pending | running | done | failed
    error: str


class StackShape(TypedDict):
    """A stack: its desired generation, what the controller made of it, and what is not
    ready yet."""

    name: str
    generation: int  # the desired state's generation
    observed_generation: int  # the generation the status is about
    status: str  # progressing | converged | degraded | failed | deleting
    message: str
    deleting: bool
    subnet: str
    converged: bool  # the status is converged or degraded, and of the current generation
    actions: list[JournalActionShape]
    unready: list[str]  # instances not running and passing their check, each with why
    data_disks: int  # how many data disks its instances have


class InstanceShape(TypedDict):
    """One instance, as `ps` shows it: what its host sees and what the controller decided."""

    stack: str
    name: str  # ROLE-INDEX
    role: str
    index: int
    id: str  # STACK.ROLE.INDEX
    state: str  # running | stopped | failed | partial | lost
    ip: str | None
    host: str
    runtime: RuntimeKind
    isolated: bool  # it runs in a container
    started_at: int | float | None
    uptime: int | float | None  # seconds, while it runs
    health: Health
    health_message: str  # why it is unhealthy or failed
    pid: int | None
    oom_killed: bool
    exit_code: int | None
    exit_signal: int | None
    # how its last run ended while it is stopped: 'exited 3', 'killed by SIGKILL (OOM)'; 'stopped'
    # when that is not known
    ended: str
    restarts: int  # restarts after a failure since it was made from its spec
    stopped_by_operator: bool
    failed: str  # why the restart policy gave up on it; '' if it did not
    # its console log's path on the host that runs it (`host`); null if its agent does not say
    log: str | None
    # the run it is: issued with each placement on a host (a replacement elsewhere is a later one)
    incarnation: int


class StatsShape(TypedDict):
    """Measured usage of one instance; null where its runtime cannot tell."""

    stack: str
    name: str
    role: str
    index: int
    id: str  # STACK.ROLE.INDEX
    state: str  # running | stopped | failed | partial
    health: Health
    host: str
    uptime: int | float | None  # seconds, while it runs
    cpu_percent: int | float | None  # 100 is one core, over the last sample
    memory_used: int | None  # bytes, without reclaimable page cache
    memory_limit: int | None  # bytes
    disk_used: int | None  # bytes
    disk_limit: int | None  # bytes
    net_rx: int | None  # bytes received
    net_tx: int | None  # bytes sent
    pids: int | None
    log_bytes: int | None  # its console log, rotated files included


class EventShape(TypedDict):
    """Something the controller did or was asked to do."""

    id: int
    time: int | float
    actor: str  # controller, health, or the operator as the CLI names them
    stack: str
    target: str  # a stack, role, instance (shop/web/0), image/NAME or host/NAME
    action: str
    result: str  # ok | failed | refused | started
    reason: str


class ImageShape(TypedDict):
    name: str
    digest: str
    source: str  # what it was made from: host, debootstrap, tarball, release
    created: int | float
    size_bytes: int  # bytes


class RemovedShape(TypedDict):
    name: str
    removed: bool  # false: there was nothing of that name


class SourceShape(TypedDict):
    digest: str  # the source tree's digest: give it to apply (`sources`) or push


class TarballShape(TypedDict):
    digest: str  # the tarball's sha256: give it to plan and apply (`tarballs`)
    size: int  # bytes


class ReleaseShape(TypedDict):
    """One version of what a role runs: an image, plus the pushed app (if any)."""

    stack: str
    role: str
    version: int
    source: str  # the app's source digest; '' for an image-only role
    label: str  # where the source came from
    layer: str  # the release layer's digest; '' until built
    image: str
    image_digest: str
    actor: str
    created: int | float
    status: ReleaseStatus
    reason: str
    updated: int | float
    current: bool  # the role's desired spec runs it


class SnapshotDiskShape(TypedDict):
    name: str  # disk.img (the root disk) or data.img (the data disk)
    size: int  # bytes, as the instance sees the disk
    held: int  # bytes the copy holds (shared extents included)


class SnapshotCopyShape(TypedDict):
    instance: str
    host: str
    disks: list[SnapshotDiskShape]
    method: str  # reflink (instant, shares extents) or copy
    frozen_ms: float  # how long its filesystems were frozen


class SnapshotShape(TypedDict):
    """A stack's instances' disks at one point, with its desired state then."""

    stack: str
    name: str
    ref: str  # STACK@NAME, as restore takes it
    scope: str  # what was taken: a stack, a role or an instance
    created: int | float
    actor: str
    state: SnapshotState
    generation: int  # the stack's generation it holds the spec of
    releases: list[str]  # ROLE vVERSION of each live release
    held: int  # bytes its copies hold
    copies: list[SnapshotCopyShape]
    error: str


class RestoreShape(TypedDict):
    """The restore is under way: the instances roll from the snapshot's disks."""

    stack: str
    snapshot: str
    generation: int  # the stack's new generation
    instances: list[str]  # those made again from it


class RepositoryShape(TypedDict):
    """A backup repository: its name and address. Its password and keys are never shown."""

    name: str
    url: str
    # what it keeps besides (the password, the names of its backend's variables), never their values
    holds: list[str]
    created: int | float
    actor: str


class BackupPartShape(TypedDict):
    instance: str
    host: str  # the host that sent it
    archive: str  # the repository's id of it (a restic snapshot)
    size: int  # bytes sent


class BackupShape(TypedDict):
    """A snapshot's disks in a repository, with the stack's spec and releases then."""

    stack: str
    name: str
    ref: str  # STACK@NAME, as `backup restore` takes it
    repository: str
    scope: str  # what was taken: a stack, a role or an instance
    created: int | float
    actor: str
    state: BackupState
    releases: list[str]  # ROLE vVERSION of each live release
    size: int  # bytes sent
    parts: list[BackupPartShape]
    error: str


class VerifyShape(TypedDict):
    backup: str
    read: int  # bytes read back, every disk's digest checked
    seconds: float


class CloneShape(TypedDict):
    """The clone is being made (or promoted): its instances roll as a new stack's do."""

    stack: str
    snapshot: str  # the snapshot it was made from ('' for a promote)
    generation: int  # the stack's new generation


class ReleaseRunShape(TypedDict):
    source: str
    image: str
    label: str
    version: int  # in its own stack's numbering


class ReleaseDiffShape(TypedDict):
    role: str
    a: ReleaseRunShape | None  # what the role runs live in a (null: nothing)
    b: ReleaseRunShape | None


class DiffShape(TypedDict):
    a: str
    b: str
    spec: list[str]  # a unified diff of their specs (as JSON), names aside
    releases: list[ReleaseDiffShape]  # the roles whose live releases differ


class TokenShape(TypedDict):
    token: str  # the join token: shown only now, kept only hashed
    expires: int | float
    uses: int


class JoinShape(TypedDict):
    """The joined host's own secrets: shown only now, kept only hashed."""

    name: str
    credential: str  # the host's bearer credential for /v1/agent/*
    agent_key: str  # what the server presents to the host's agent


class ReplacedRunShape(TypedDict):
    instance: str  # STACK/ROLE/INDEX
    incarnation: int  # the run the controller holds


class HeartbeatShape(TypedDict):
    name: str
    time: int | float  # the server's clock
    epoch: int  # the host's epoch: its agent refuses mutating calls stamped with an older one
    # send every instance's facts with the next heartbeat (the server has none of this host's)
    want_observed: bool
    # stop what fences (agent/watchdog.py) after this long without a heartbeat answered; 0: never
    fence_after: int | float
    # the host's lease: a floating address it holds is released this long after its last heartbeat
    # answered
    lease: int | float
    # copies on this host that were replaced: destroy each one older than this run
    replaced: list[ReplacedRunShape]


class AmountsShape(TypedDict):
    cpus: int | float  # cores
    memory: int  # bytes
    disk: int  # bytes


class UsedAmountsShape(TypedDict):
    memory: int  # bytes
    disk: int  # bytes


class HostShape(TypedDict):
    """A host: what it can reserve, what stacks reserve on it, what is used."""

    name: str
    state: str  # ready | suspect | lost | draining | fenced | down
    local: bool  # the server's own host
    labels: dict[str, str]
    runtimes: list[RuntimeKind]
    capacity: AmountsShape  # what it can hard-reserve
    reserved: AmountsShape  # what the instances placed on it reserve
    used: UsedAmountsShape  # what is in use, as it reports
    last_seen: int | float | None  # its last heartbeat; null for the server's
    version: str
    address: str  # its agent's HOST:PORT; '' for the server's own
    # its incarnation: rises when it heartbeats again after its lease lapsed; its agent refuses
    # calls stamped with an older one
    epoch: int
    # its lease lapses then unless it heartbeats; null for the server's own
    lease_until: int | float | None
    observed_at: int | float | None  # when it last told of all its instances (the observed cache)
    lease_age: int | float | None  # seconds since its last heartbeat; null for the server's own
    lease: int | float | None  # how long a heartbeat holds its lease


class HostChangeShape(TypedDict):
    step: str  # install | reconfigure | upgrade | uninstall
    name: str
    changes: list[str]  # what differs, as `field: old -> new`


class HostsPlanShape(TypedDict):
    """What `hosts apply` of this hosts file would do, in the order it would do it."""

    version: str  # the rackfire version an apply installs
    changes: list[HostChangeShape]


class HostOutcomeShape(TypedDict):
    step: str  # install | reconfigure | upgrade | uninstall
    name: str
    done: bool
    # where it stopped (connect, host key, login, probe, copy, unpack, start, join ...); '' when
    # done
    failed_step: str
    error: str  # what the host said; '' when done


class HostsApplyShape(TypedDict):
    """What `hosts apply` did, host by host: a host that failed did not stop the others."""

    version: str
    outcomes: list[HostOutcomeShape]


class HostUsageShape(TypedDict):
    name: str
    state: HostState
    labels: dict[str, str]
    capacity: AmountsShape
    reserved: AmountsShape
    free: AmountsShape  # negative where the host holds more than it can now
    instances: int


class StrandedShape(TypedDict):
    instance: str  # STACK/ROLE/INDEX, e.g. shop/web/0
    why: dict[str, str]  # host -> why it cannot run there


class LossShape(TypedDict):
    """One failure scenario: `hosts` go down at once."""

    lost: str  # the host's name, a pair's (A+B), the rack's or the site's
    hosts: list[str]
    displaced: int  # how many instances ran there
    stranded: list[StrandedShape]  # those that would fit nowhere else


class HostLossesShape(TypedDict):
    ok: bool  # every instance could run again after losing any one host
    losses: list[LossShape]


class RackLossesShape(TypedDict):
    ok: bool  # every instance could run again after losing any one rack
    losses: list[LossShape]
    unracked: list[str]  # hosts without a rack label


class PairLossesShape(TypedDict):
    ok: bool  # every instance could run again after losing any two hosts (of `hosts`)
    losses: list[LossShape]  # the pairs that strand something; every other pair strands nothing
    pairs: int  # how many pairs were tried
    hosts: list[str]  # the hosts paired: every host, or, past 40, the 40 holding the most instances
    capped: bool  # not every host was paired


class SiteLossesShape(TypedDict):
    ok: bool  # every instance could run again after losing any one site
    losses: list[LossShape]
    unsited: list[str]  # hosts without a site label


class SurvivalShape(TypedDict):
    # ok: every instance could run again; degraded: some could not, each role keeps one; down: a
    # role would have none; untested: no such scenario
    verdict: Verdict
    # the scenario that decides it (the first of the worst); null when ok or untested
    loss: str | None
    stranded: list[str]  # the stack's instances it strands


class StackSurvivalShape(TypedDict):
    """Whether a stack keeps serving after each kind of loss: the worst scenario of each."""

    stack: str
    host: SurvivalShape  # any one host lost
    hosts_2: SurvivalShape  # any two hosts lost
    rack: SurvivalShape  # any one rack lost
    site: SurvivalShape  # any one site lost
    # instance (STACK/ROLE/INDEX) -> the one host its data disk is on: losing that host stops it
    # until the host returns (it is held, not placed again)
    pinned: dict[str, str]


class RoleHeadroomShape(TypedDict):
    role: str  # STACK/ROLE
    more: int | None  # how many more instances fit; null: no end
    hosts: dict[str, int | None]  # host -> how many more fit there
    then: dict[str, list[str]]  # host -> why one more would not fit


class CapacityShape(TypedDict):
    """Reserved and free per host, losing any one host (N+1), any two, any rack and any site,
    whether each stack survives them, and each role's headroom."""

    hosts: list[HostUsageShape]
    n_plus_1: HostLossesShape
    racks: RackLossesShape
    n_plus_2: PairLossesShape
    sites: SiteLossesShape
    stacks: list[StackSurvivalShape]
    headroom: list[RoleHeadroomShape]


class FenceShape(TypedDict):
    name: str
    placing: int  # how many instances are to be placed again elsewhere


class HaShape(TypedDict):
    """An instance replaced only after its host's fence, and the chain of timings."""

    instance: str
    host: str
    state: str  # its host's: ready | suspect | lost | fenced | ...
    singleton: bool
    self_fences: bool  # its host's watchdog stops it
    data: bool  # it has a data disk (only on its host)
    lease: int | float | None
    lease_age: int | float | None
    fence_after: int | float | None
    grace: int | float | None
    # host death to its replacement being started, at most (its start not counted)
    worst_case: int | float | None
    chain: str


class DrainShape(TypedDict):
    name: str
    moving: int  # how many instances are to move


class MigrationShape(TypedDict):
    instance: str  # STACK/ROLE/INDEX, e.g. shop/web/0
    source: str
    target: str
    step: str  # stopping | copying | starting | cleaning
    started: int | float
    actor: str


# Instance (STACK/ROLE/INDEX) -> the host it is placed on.
PlacementsShape: TypeAlias = dict[str, str]


class StopShape(TypedDict):
    stopping: bool


class RunShape(TypedDict):
    """A run: a job's slot, a one-off task or a release's `before` task, each in a fresh
    instance of its role that ends."""

    stack: str
    number: int
    role: str
    instance: str  # its instance's id (`rackfire logs` takes it while it exists)
    kind: RunKind
    state: RunState
    command: list[str]  # [] for the role's own
    slot: int | float | None  # a job's scheduled minute
    created: int | float
    started: int | float | None
    ended: int | float | None
    timeout: int | float  # seconds
    exit_code: int | None
    signal: int | None
    # what `rackfire run` exits with: the code, 128 + a signal, 124 after a timeout, 1 otherwise
    exit_status: int
    host: str
    reason: str  # how it ended: 'exited 3', 'timed out after 10m'
    log: str  # the last lines of its log, kept when it ended
    actor: str


class JobShape(TypedDict):
    """A job role: its schedule and how its runs went."""

    stack: str
    role: str
    schedule: str
    next_slot: int | float | None
    concurrency: Concurrency
    catch_up: CatchUp
    timeout: int | float  # seconds
    history: int
    active: int  # runs under way
    runs: list[RunShape]  # the newest first, at most `history`


class LoadRunShape(TypedDict):
    """One client's run: how it ended."""

    number: int
    state: RunState
    reason: str
    host: str


class LoadReportShape(TypedDict):
    """The clients' results merged (loadgen/report.py): latencies in ms, counted from each
    request's intended start (no coordinated omission)."""

    clients: int  # clients run
    reporting: int  # of them, those that gave a valid result
    sent: int
    completed: int  # got an HTTP response, any status
    ok: int  # of them, 1xx-3xx
    duration: int | float  # seconds, first client's start to last one's end
    throughput: int | float  # completed / duration, per second
    intended_rate: int | float  # req/s asked, all clients
    achieved_rate: int | float  # req/s sent, all clients
    p50_ms: int | float
    p95_ms: int | float
    p99_ms: int | float
    max_ms: int | float
    # connect, timeout, reset, http_4xx, http_5xx, other, no_result (a client gave no result)
    errors: dict[str, int]
    statuses: dict[str, int]  # "200": n, ...
    runs: list[LoadRunShape]


class LoadTestShape(TypedDict):
    """A load test (`rackfire load`): its clients run in a stack of their own, removed when
    they are done."""

    id: str
    stack: str  # the target's stack
    load_stack: str  # the clients' stack
    target: str
    clients: int
    rate: int | float  # req/s, all clients
    duration: int | float  # seconds
    connections: int  # at most, per client
    state: str  # running, done or failed
    message: str  # why it failed, or what is incomplete
    created: int | float
    start_at: int | float  # the clients' start barrier
    ended: int | float | None  # when its stack was removed (or gave up)
    runs_done: int  # client runs ended
    runs_total: int
    report: LoadReportShape | None  # once every client ended


class AutoscaleShape(TypedDict):
    """A scaled role: its bounds and target, the metric now, and the last decision."""

    stack: str
    role: str
    min: int
    max: int
    target: str  # e.g. 'cpu 60%', 'requests_per_instance 200/s'; '' for a schedule only
    count: int  # the count it has now
    ready: int | None
    metric: float | None  # in the target's unit; None: unknown
    wanted: int | None  # what the last decision asked
    min_now: int | None  # min, raised by a schedule window open now
    reason: str  # the last decision's reason
    decided: int | float | None
    error: str  # why the metric could not be read
