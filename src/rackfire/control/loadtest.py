"""Load tests (`rackfire load`): the built-in `client` appliance (loadgen/client.py) run as
one-off task runs of a stack of its own, `<stack>-load`, released together by a start
barrier (LOAD_START_AT), each at rate/clients requests a second (an open model); their
results (the last line of each run's log) merged into one report (loadgen/report.py), and
the stack removed.

The clients' roles hold at most `jobs.TASK_HISTORY` clients each (`client`, `client-2`,
...): the jobs' tick forgets a role's ended runs past that many, in the same pass that ends
them, and a forgotten run's log (its result) could not be read here.

Load tests are kept in memory (the last KEEP): a controller restart forgets one under way
(its stack stays; `rackfire destroy` removes it).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rackfire.control.executor import CONTROLLER
from rackfire.control.jobs import TASK_HISTORY
from rackfire.errors import Conflict, NotFound, PrereqError, RackfireError
from rackfire.loadgen import report
from rackfire.model.records import Run, RunKind, RunState
from rackfire.spec import load_stack_text

if TYPE_CHECKING:
    from rackfire.control.controller import Controller

log = logging.getLogger("rackfire.loadtest")

MAX_CLIENTS = 64
MIN_DURATION, MAX_DURATION = 1.0, 3600.0
MAX_RATE = 1_000_000.0
MAX_CONNECTIONS = 1024
MAX_NAME = 32  # model/stack.py NAME_PATTERN
SUFFIX = "-load"
APPLIANCE = Path(__file__).resolve().parent.parent / "loadgen"
DIR = "/opt/rackfire-load"
MEMORY = "64M"
POLL = 0.5
GONE_WAIT = 120.0  # for the load stack to be removed
KEEP = 50


def start_margin(clients: int) -> float:
    """Seconds from the apply to the start barrier: enough for every client to start."""
    return 5.0 + 0.3 * clients


class LoadState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LoadTest:
    id: str
    stack: str  # the target's
    load_stack: str
    target: str
    clients: int
    rate: float  # req/s, all clients
    duration: float
    connections: int  # per client
    created: float
    start_at: float
    state: LoadState = LoadState.RUNNING
    message: str = ""
    ended: float | None = None
    runs: tuple[int, ...] = ()  # the run numbers in load_stack
    runs_done: int = 0
    report: dict[str, Any] | None = field(default=None)


def load_stack_name(stack: str) -> str:
    return stack[:MAX_NAME - len(SUFFIX)] + SUFFIX


def role_names(clients: int) -> list[str]:
    """The role of each client: TASK_HISTORY of them a role."""
    return [("client" if i < TASK_HISTORY else f"client-{i // TASK_HISTORY + 1}")
            for i in range(clients)]


def check(target: str, clients: int, rate: float, duration: float, connections: int) -> None:
    if not 1 <= clients <= MAX_CLIENTS:
        raise PrereqError(f"clients must be 1 to {MAX_CLIENTS}, got {clients}")
    if not 0 < rate <= MAX_RATE:
        raise PrereqError(f"rate must be > 0 and at most {MAX_RATE:.0f}/s, got {rate}")
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise PrereqError(f"duration must be 1s to 1h, got {duration}s")
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise PrereqError(f"connections must be 1 to {MAX_CONNECTIONS}, got {connections}")
    try:
        url = urlsplit(target)
        url.port  # noqa: B018 - raises for a bad port
    except ValueError as e:
        raise PrereqError(f"target {target!r}: {e}") from None
    if url.scheme != "http" or not url.hostname or any(c.isspace() for c in target):
        raise PrereqError(f"target {target!r} is not an http:// URL",
                          hint="e.g. http://10.0.0.1:8080/ (https is not supported)")


def result_of(log_text: str) -> object:
    """A client's result from its run's log tail: the last line, or, for a result longer
    than a log record (16 KiB), the records it was split in, from the one that starts it.
    Compact JSON has no whitespace to lose to the tail's rstrip."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith('{"version":')]
    if not starts:
        return None
    return report.decode("".join(lines[starts[-1]:]))


def stack_text(name: str, roles: list[str], env: dict[str, str]) -> str:
    """The load stack's file (JSON, which the YAML loader takes): checked as a user's is."""
    files = {}
    for fname in ("client.py", "histogram.py"):
        text = (APPLIANCE / fname).read_text()
        if "{% endraw %}" in text:
            raise RackfireError(f"{fname} cannot be shipped verbatim")  # never, as written
        files[f"{DIR}/{fname}"] = "{% raw %}" + text + "{% endraw %}"
    role = {"image": "host", "count": 0,
            "command": ["python3", "-I", "-S", f"{DIR}/client.py"],
            "resources": {"memory": MEMORY, "disk": "32M"},
            "env": env, "files": files, "stop_timeout": 10}
    doc = {"stack": name, "images": {"host": {"from": "host"}},
           "roles": {r: role for r in dict.fromkeys(roles)}}
    return json.dumps(doc)


class LoadTests:
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._tests: dict[str, LoadTest] = {}

    def get(self, test_id: str) -> LoadTest:
        with self._lock:
            found = self._tests.get(test_id)
        if found is None:
            raise NotFound(f"no load test {test_id}",
                           hint="load tests are kept in memory, until the server restarts")
        return found

    def start(self, stack: str, target: str, clients: int, rate: float, duration: float,
              connections: int = 64, actor: str = CONTROLLER) -> LoadTest:
        """Refused before any change: bad arguments, no such stack, one under way."""
        check(target, clients, rate, duration, connections)
        with self._starting:  # two at once must not both find no load stack and make one
            return self._start(stack, target, clients, rate, duration, connections, actor)

    def _start(self, stack: str, target: str, clients: int, rate: float, duration: float,
               connections: int, actor: str) -> LoadTest:
        rec = self.c.store.get_stack(stack)
        if rec is None or rec.deleting:
            raise NotFound(f"no stack {stack}", hint="`rackfire ps` lists every stack's instances")
        name = load_stack_name(stack)
        if stack.endswith(SUFFIX):
            raise Conflict(f"{stack} is a load test's own stack")
        if self.c.store.get_stack(name) is not None:
            raise Conflict(f"stack {name} exists: a load test of {stack} is under way, or "
                           "its stack is still being removed",
                           hint=f"wait, or `rackfire destroy {name}`")
        now = self.c.clock()
        start_at = now + start_margin(clients)
        env = {"LOAD_TARGET": target, "LOAD_RATE": repr(rate / clients),
               "LOAD_DURATION": repr(float(duration)), "LOAD_START_AT": f"{start_at:.3f}",
               "LOAD_CONNECTIONS": str(connections), "LOAD_TIMEOUT": "5"}
        roles = role_names(clients)
        spec = load_stack_text(stack_text(name, roles, env), f"{name}.json")
        self.c.apply(spec, None, actor=actor)
        timeout = duration + start_margin(clients) + 60.0
        numbers = []
        try:
            for role in roles:
                numbers.append(self.c.jobs.start_task(name, role, (), timeout, actor).number)
        except RackfireError:
            self.c.destroy(name, actor=actor)
            raise
        test = LoadTest(uuid.uuid4().hex[:12], stack, name, target, clients, rate,
                        float(duration), connections, now, start_at, runs=tuple(numbers))
        with self._lock:
            self._tests[test.id] = test
            for old in list(self._tests)[:-KEEP]:
                if self._tests[old].state is not LoadState.RUNNING:
                    del self._tests[old]
        threading.Thread(target=self._follow, args=(test,), name=f"load-{test.id}",
                         daemon=True).start()
        return test

    def _put(self, test: LoadTest) -> LoadTest:
        with self._lock:
            self._tests[test.id] = test
        return test

    def _follow(self, test: LoadTest) -> None:
        try:
            test = self._gather(test)
        except Exception as e:  # the stack must go whatever went wrong
            log.exception("load test %s failed", test.id)
            test = replace(test, state=LoadState.FAILED, message=f"it failed: {e}")
        gone = self._remove(test)
        if not gone:
            left = f"its stack {test.load_stack} is still being removed"
            test = replace(test, message=f"{test.message}; {left}" if test.message else left)
        self._put(replace(test, ended=self.c.clock()))

    def _gather(self, test: LoadTest) -> LoadTest:
        stop = self.c._stop  # the controller's own: ends with it
        deadline = test.start_at + test.duration + 60.0 + 60.0
        ended: dict[int, Run] = {}
        while len(ended) < len(test.runs):
            for number in test.runs:
                if number in ended:
                    continue
                run = self.c.store.runs.get(test.load_stack, number)
                if run is None:  # forgotten: cannot be with TASK_HISTORY a role
                    ended[number] = Run(test.load_stack, number, "", RunKind.TASK,
                                        RunState.LOST, 0.0, reason="its record was pruned")
                elif not run.active:
                    ended[number] = run
            test = self._put(replace(test, runs_done=len(ended)))
            if len(ended) == len(test.runs):
                break
            if self.c.clock() > deadline or stop.is_set():
                for number in test.runs:
                    if number not in ended:
                        ended[number] = self.c.jobs.cancel(test.load_stack, number, CONTROLLER)
                break
            stop.wait(POLL)
        runs = [ended[n] for n in test.runs]
        merged = report.merge([result_of(r.log) for r in runs])
        out = merged.to_json()
        out["runs"] = [{"number": r.number, "state": r.state.value, "reason": r.reason,
                        "host": r.host} for r in runs]
        if merged.reporting == 0:
            why = "; ".join(sorted({f"{r.state.value}: {r.reason}" for r in runs}))
            tail = next((r.log.splitlines()[-1] for r in runs if r.log.strip()), "")
            return replace(test, state=LoadState.FAILED, report=out, runs_done=len(runs),
                           message=f"no client gave a result ({why}){' | ' + tail if tail else ''}")
        msg = "" if merged.reporting == merged.clients else \
            f"{merged.clients - merged.reporting} of {merged.clients} clients gave no result"
        return replace(test, state=LoadState.DONE, report=out, runs_done=len(runs), message=msg)

    def _remove(self, test: LoadTest) -> bool:
        try:
            self.c.destroy(test.load_stack, actor=CONTROLLER)
        except RackfireError as e:
            log.warning("the load stack %s was not removed: %s", test.load_stack, e.message)
            return False
        stop = self.c._stop
        waited = 0.0
        while self.c.store.get_stack(test.load_stack) is not None and waited < GONE_WAIT:
            if stop.wait(POLL):
                return False
            waited += POLL
        return self.c.store.get_stack(test.load_stack) is None

