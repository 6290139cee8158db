"""What the store keeps, as values: the records of stacks, releases, actions, instance
statuses, events, overrides, migrations and rollout waits, with their states as enums. Any
store (SQLite today, store/db.py) reads and writes these; control/ and api/ see only them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from rackfire.model.host import HostFacts, HostState
from rackfire.model.instance import Control, Health, InstanceKey
from rackfire.model.stack import StackSpec


class StackStatus(StrEnum):
    PENDING = "pending"  # stored, not reconciled yet
    PROGRESSING = "progressing"  # actions under way, or waiting for instances to be ready
    CONVERGED = "converged"  # every desired instance runs and passes its check
    DEGRADED = "degraded"  # converged but for instances the restart policy gave up on
    FAILED = "failed"  # the last pass stopped at an error; it is retried
    DELETING = "deleting"  # destroyed, its instances going


class ActionState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"  # journalled before the host is asked
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the server stopped (a crash) while it ran


@dataclass(frozen=True, slots=True)
class StackRecord:
    name: str
    spec: StackSpec
    generation: int
    observed_generation: int
    deleting: bool
    subnet: str
    status: StackStatus
    message: str
    updated: float
    actor: str = ""  # who set the current generation's spec
    keep_data: bool = False  # a destroy that keeps the data disks


class ReleaseStatus(StrEnum):
    DEPLOYING = "deploying"  # rolling out now
    LIVE = "live"  # what the role runs
    RETIRED = "retired"  # was live; a rollback can go back to it
    FAILED = "failed"  # its instances failed their check; rolled back


@dataclass(frozen=True, slots=True)
class Release:
    """One version of what a role runs: an image, plus the pushed app (if any)."""

    stack: str
    role: str
    version: int
    source: str  # the app's uploaded source tree digest; "" for an image-only role
    label: str  # where the source came from, as the file or `push` named it
    layer: str  # the release layer built from it (its digest); "" until built
    image: str
    image_digest: str
    actor: str
    created: float
    status: ReleaseStatus
    reason: str
    updated: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"status": self.status.value}


@dataclass(frozen=True, slots=True)
class ActionRecord:
    id: str
    stack: str
    generation: int
    kind: str
    instance: str
    reason: str
    state: ActionState
    created: float
    finished: float | None
    error: str


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    key: InstanceKey
    health: Health
    run: float | None  # the started_at of the run the health belongs to
    fails: int  # consecutive failed checks of this run
    checked: float | None
    restarts: int  # restarts after a failure since it was made from its spec (`ps`)
    last_restart: float | None
    message: str  # the last check's error
    failures: tuple[float, ...] = ()  # when it was restarted after failing (recent ones)
    stopped: bool = False  # an operator stopped it
    failed: str = ""  # the restart policy gave up on it: why
    restart_requested: float | None = None

    @property
    def control(self) -> Control:
        return Control(self.failures, self.stopped, self.failed, self.restart_requested)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    time: float
    actor: str  # who: `controller`, `health`, or the operator as the CLI names them
    stack: str
    target: str  # a stack, role or instance (`shop/web/0`)
    action: str
    result: str  # ok | failed | refused | started
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Override:
    """A desired value a day-2 command set (scale, resize) rather than the stack file."""

    role: str
    field: str
    value: Any
    actor: str
    time: float


@dataclass(frozen=True, slots=True)
class Migration:
    key: InstanceKey
    source: str
    target: str
    step: str  # stopping | copying | starting | cleaning: the step under way
    started: float
    actor: str


@dataclass(frozen=True, slots=True)
class RolloutWait:
    key: InstanceKey
    kind: str  # the rolling action that made it: replace | create | restart
    action_id: str
    since: float  # when the action finished
    timeout: float  # the role's health_timeout when it ran (at least the check's grace)


class SnapshotState(StrEnum):
    TAKING = "taking"  # the hosts are copying
    READY = "ready"  # every instance's copy is whole on its host
    FAILED = "failed"  # a host could not take its part: what others took is removed


@dataclass(frozen=True, slots=True)
class SnapshotCopy:
    """Where one instance's share of a snapshot is, and what it holds."""

    instance: str  # the instance's name in the stack: `db-0`
    host: str
    disks: tuple[tuple[str, int, int], ...]  # (disk.img | data.img, size, bytes held)
    method: str  # reflink | copy
    frozen_ms: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stack's instances' disks at one point, with the desired state it ran then (the
    spec, the day-2 overrides and each role's live release)."""

    stack: str
    name: str
    scope: str  # what was taken: `shop`, `shop/db` or `shop/db/0`
    created: float
    actor: str
    state: SnapshotState
    generation: int
    spec: StackSpec
    overrides: tuple[Override, ...]
    releases: tuple[Release, ...]
    copies: tuple[SnapshotCopy, ...] = ()
    error: str = ""
    # Read back from a backup for a restore: removed once no seed needs it.
    temporary: bool = False

    @property
    def ref(self) -> str:
        return f"{self.stack}@{self.name}"

    @property
    def held(self) -> int:
        return sum(used for c in self.copies for _, _, used in c.disks)


@dataclass(frozen=True, slots=True, repr=False)
class Repository:
    """A backup repository (restic's address, the password that encrypts it, its backend's
    keys): secret but for its name and address, never in a log, an event or an answer."""

    name: str
    url: str
    password: str
    env: tuple[tuple[str, str], ...]
    created: float
    actor: str

    def __repr__(self) -> str:
        return f"Repository({self.name!r}, {self.shown_url!r})"

    @property
    def shown_url(self) -> str:
        """Its address with any `user:password@` in it masked."""
        return re.sub(r"://[^/@]*@", "://***@", self.url)


class BackupState(StrEnum):
    TAKING = "taking"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BackupPart:
    instance: str  # its name in the stack: `db-0`
    host: str  # the host that sent it
    archive: str  # the repository's id for it (a restic snapshot)
    size: int  # bytes sent


@dataclass(frozen=True, slots=True)
class Backup:
    """A snapshot's disks sent to a repository, with the snapshot's record (its spec and
    releases): restorable when the stack, its hosts and its snapshots are gone."""

    stack: str
    name: str
    repository: str
    created: float
    actor: str
    state: BackupState
    snapshot: Snapshot
    parts: tuple[BackupPart, ...] = ()
    error: str = ""

    @property
    def ref(self) -> str:
        return f"{self.stack}@{self.name}"

    @property
    def role(self) -> str | None:
        """The role it is of, for a role's backup (a schedule's), else None."""
        parts = self.snapshot.scope.split("/")
        return parts[1] if len(parts) == 2 else None


@dataclass(frozen=True, slots=True)
class Replica:
    """Where an instance's standby data disk is, and which version it holds: the snapshot
    taken at `taken` (the host's clock), shipped there at `shipped`. `token` "" while the
    standby holds no whole version yet."""

    key: InstanceKey
    standby: str
    token: str
    taken: float
    shipped: float


@dataclass(frozen=True, slots=True)
class Primary:
    """The primary of a primary role, since when, and in which term (rising at each
    promotion)."""

    index: int
    term: int
    since: float


REPLICA = ""  # a seed's snapshot: the standby copy of the instance's own data disk


@dataclass(frozen=True, slots=True)
class Seed:
    """An instance to be made (or replaced) from a snapshot's copy of `source`'s disks, on
    the host that holds them (a restore), or from the standby copy of its data disk there
    (`snapshot` REPLICA: a failover), once, by the next create of the instance."""

    key: InstanceKey
    snapshot_stack: str
    snapshot: str
    source: str  # the instance's name in the snapshot
    host: str


@dataclass(frozen=True, slots=True)
class HostRecord:
    name: str
    labels: tuple[tuple[str, str], ...]
    facts: HostFacts
    state: HostState
    joined: float
    last_seen: float
    address: str = ""  # host:port of its agent's API, as it reported
    agent_key: str = ""  # what the controller presents to it
    # Its incarnation: rises each time it heartbeats again after its lease lapsed. A
    # mutating call carries it; the agent refuses one older than it knows.
    epoch: int = 1


class RunKind(StrEnum):
    JOB = "job"  # a slot of a job role's schedule
    TASK = "task"  # `rackfire run`: a one-off command
    BEFORE = "before"  # a role's `before:` task, gating its release's rollout


class RunState(StrEnum):
    PENDING = "pending"  # claimed: its instance is being made
    RUNNING = "running"  # its instance was seen
    SUCCEEDED = "succeeded"  # exited 0
    FAILED = "failed"  # exited otherwise, or could not start
    TIMED_OUT = "timed_out"  # stopped at its timeout
    LOST = "lost"  # its host was lost while it ran: not run again
    SKIPPED = "skipped"  # a slot whose job was still running (concurrency: forbid)
    MISSED = "missed"  # a slot that passed while the controller was down
    CANCELLED = "cancelled"  # stopped by an operator, or replaced by the next slot


ACTIVE_RUNS = (RunState.PENDING, RunState.RUNNING)


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a role's image, release and config with its own instance (index
    RUN_BASE + number): a job's slot, a one-off task, a release's `before` task."""

    stack: str
    number: int  # in its stack, from 1
    role: str
    kind: RunKind
    state: RunState
    created: float
    command: tuple[str, ...] = ()  # () runs the role's own
    slot: float | None = None  # a job's scheduled minute
    timeout: float = 3600.0
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    host: str = ""
    reason: str = ""  # how it ended, for people: "exited 3", "timed out after 10m"
    log: str = ""  # the last lines of its console log, kept when it ended
    release: int = 0  # a `before` task's: the release version it gates
    actor: str = ""

    @property
    def key(self) -> InstanceKey:
        return InstanceKey.of_run(self.stack, self.role, self.number)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUNS
