"""Properties of the whole controller (Store, Fleet, Controller; no root), driven pass by
pass in fake time over an in-memory host (tests/harness/): from any observed state,
repeated reconciles reach the desired state; a converged stack plans nothing; a server
that dies between any two of its writes (or host calls) and comes back converges too, and
never makes an instance twice.

Stacks: 1-3 roles (db, app, lb; each may use the one before), 0-4 instances, with or
without a health check and rendered files (reloadable or not), a data disk on db, rolling
updates with max_unavailable and max_surge 0-2. Observed states: each desired instance
absent, running (its spec, or an older command, files or resources), stopped, crashed,
OOM-killed or half-made; up to two extra instances past the count."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from tests.harness import Crash, Harness, Run, harness

from rackfire.control.fleet import BEAT
from rackfire.errors import Conflict, SpecError
from rackfire.model.instance import InstanceKey, InstanceRequest
from rackfire.model.stack import (
    DataDisk,
    HealthSpec,
    PortMap,
    ReloadSpec,
    Resources,
    RoleSpec,
    StackSpec,
    UpdatePolicy,
)
from rackfire.plan.render import role_keys
from rackfire.spec import load_stack_text

STACK = "s"
ROLES = ("db", "app", "lb")
EXTRA = 2  # seeded instances past a role's count, at most
MEMORY = 64 << 20
# What a desired instance may be found as (index < count), and an extra one (index >= count).
FOUND = ("absent", "running", "old-command", "old-files", "old-resources", "stopped",
         "crashed", "oom", "partial")
FOUND_EXTRA = ("running", "stopped", "partial")

PEERS = "/etc/peers.conf"
NEVER = 10**9  # a crash point never reached: it only counts them

CHECKS = settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])


class Case:
    """A plain class, not a dataclass: Hypothesis prints a failing one by this repr."""

    def __init__(self, spec: StackSpec, ready_after: dict[str, float],
                 found: dict[InstanceKey, str], beat_every: float = BEAT) -> None:
        self.spec = spec
        self.ready_after = ready_after  # role -> seconds a new instance takes to pass
        self.found = found  # what runs before the controller looks
        # Seconds between the host's heartbeats: a slow one leaves the observed cache
        # behind the host longer (a controller that trusted it would make instances twice).
        self.beat_every = beat_every

    def __repr__(self) -> str:  # what a failing example prints: short enough to read
        roles = "; ".join(
            f"{r.name} x{r.count} uses={list(r.uses)} check={bool(r.health)} "
            f"files={len(r.files)} reload={bool(r.reload)} data={bool(r.data)} "
            f"unavailable={r.update.max_unavailable} surge={r.update.max_surge} "
            f"timeout={r.update.health_timeout:g} ready_after={self.ready_after[r.name]:g}"
            for r in self.spec.roles)
        found = ", ".join(f"{k.role}-{k.index}:{v}" for k, v in sorted(self.found.items()))
        return f"Case({roles} | found: {found or 'nothing'} | beat {self.beat_every:g}s)"


def peers_file(role: str) -> str:
    return f"{{% for i in roles.{role}.ready %}}{{{{ i.ip }}}}\n{{% endfor %}}"


@st.composite
def roles(draw: st.DrawFn, index: int, names: tuple[str, ...]) -> RoleSpec:
    name = names[index]
    uses = (names[index - 1],) if index and draw(st.booleans()) else ()
    files: tuple[tuple[str, str], ...] = ()
    reload = None
    if draw(st.booleans()):  # a file that lists who is ready: re-rendered as that changes
        reload = ReloadSpec(signal="HUP") if draw(st.booleans()) else None
        # Its own role's only with a reload: test_own_ready_peers_without_reload_are_refused
        peers = uses[0] if uses else name if reload else None
        if peers:
            files = ((PEERS, peers_file(peers)),)
    health = HealthSpec(tcp=80, interval=draw(st.sampled_from([1.0, 5.0])), retries=2,
                        grace=10.0) if draw(st.booleans()) else None
    return RoleSpec(
        name=name, image="base", count=draw(st.integers(0, 4)), command=("serve", name),
        resources=Resources(memory=MEMORY),
        ports=(PortMap(8000 + index, 80),) if draw(st.booleans()) else (),
        files=files, health=health, uses=uses, reload=reload,
        data=DataDisk("/data", 16 << 20) if name == "db" and draw(st.booleans()) else None,
        update=UpdatePolicy(max_unavailable=draw(st.integers(0, 2)),
                            max_surge=draw(st.integers(0, 2)),
                            health_timeout=draw(st.sampled_from([10.0, 60.0]))))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    names = ROLES[:draw(st.integers(1, 3))]
    spec = StackSpec(STACK, roles=tuple(draw(roles(i, names)) for i in range(len(names))))
    found: dict[InstanceKey, str] = {}
    for r in spec.roles:
        for i in range(r.count):
            if (state := draw(st.sampled_from(FOUND))) != "absent":
                found[InstanceKey(STACK, r.name, i)] = state
        for i in range(r.count, r.count + draw(st.integers(0, EXTRA))):
            found[InstanceKey(STACK, r.name, i)] = draw(st.sampled_from(FOUND_EXTRA))
    ready_after = {n: draw(st.sampled_from([0.0, 0.5, 2.0])) for n in names}
    return Case(spec, ready_after, found, draw(st.sampled_from([BEAT, 5.0])))


@contextmanager
def started(case: Case) -> Iterator[Harness]:
    """A harness with the case's stack applied and its instances found on the host, as an
    earlier life of the server (or someone by hand) left them."""
    with tempfile.TemporaryDirectory(prefix="rf-harness-") as d:
        h = harness(Path(d), beat_every=case.beat_every)
        h.host.ready_after_role.update(case.ready_after)
        try:
            h.controller.apply(case.spec, None, actor="test")
            seed(h, case)
            yield h
        finally:
            h.close()


def seed(h: Harness, case: Case) -> None:
    spec, desired = case.spec, h.controller.desired
    rec = h.store.get_stack(spec.name)
    assert rec is not None
    # The addresses an earlier server kept: the spec's instances' (surge ones too) and
    # the extra ones', so that the found instances have the ones the controller will use.
    wider = replace(spec, roles=tuple(replace(r, count=r.count + EXTRA) for r in spec.roles))
    keep = {k for r in spec.roles for k in role_keys(spec.name, r, surge=True)} | set(case.found)
    h.store.save_ips({k: ip for k, ip in desired.make(wider, rec, build=False).ips.items()
                      if k in keep})

    def rendered(variant: StackSpec) -> dict[InstanceKey, InstanceRequest]:
        return {r.key: r for r in desired.make(variant, rec, build=False).requests}

    def older(role: RoleSpec, state: str) -> RoleSpec:
        if state == "old-command":
            return replace(role, command=(*role.command, "--old"))
        if state == "old-resources":
            return replace(role, resources=Resources(memory=MEMORY // 2))
        if role.files:  # the same paths, other contents: reloadable
            return replace(role, files=tuple((p, t + "# old\n") for p, t in role.files))
        return replace(role, files=(("/etc/old.conf", "old\n"),))

    current, extra = rendered(spec), rendered(wider)
    for n, (key, state) in enumerate(sorted(case.found.items())):
        role = spec.role(key.role)
        if state.startswith("old-"):
            variant = replace(spec, roles=tuple(older(r, state) if r is role else r
                                                for r in spec.roles))
            req, state = rendered(variant)[key], "running"
        else:
            req = current[key] if key.index < role.count else extra[key]
        h.host.seed(replace(req, action_id=f"seed{n}"), state)


def converged(h: Harness, run: Run | None = None) -> Run:
    """`run`, or a run to convergence now, converged: as desired, nothing made twice."""
    run = run or h.converge(STACK)
    calls = h.instance_calls()
    seen = f"{run}; errors: {h.errors}; {len(calls)} instance calls, the last: {calls[-20:]}"
    assert run.converged, seen
    assert h.problems(STACK) == [], seen
    assert h.host.duplicates == [], seen
    assert h.errors == [], seen
    return run


@CHECKS
@given(cases())
def test_repeated_reconciles_reach_the_desired_state(case: Case) -> None:
    note(repr(case))  # (Hypothesis prints a composite's draws as nothing)
    with started(case) as h:
        converged(h)


# Once found: the pass that created db-0 and app-0 said converged, with app-0's file
# rendered before db-0 was ready (app cannot reload, so only a later plan reconfigures it).
APP_LISTS_READY_DB = Case(StackSpec(STACK, roles=(
    RoleSpec("db", "base", 1, ("serve", "db"), resources=Resources(memory=MEMORY)),
    RoleSpec("app", "base", 1, ("serve", "app"), resources=Resources(memory=MEMORY),
             uses=("db",), files=((PEERS, peers_file("db")),)))), {"db": 0.0, "app": 0.0}, {})


@CHECKS
@given(cases())
@example(APP_LISTS_READY_DB)
def test_a_converged_stack_plans_nothing(case: Case) -> None:
    note(repr(case))
    with started(case) as h:
        run = converged(h)
        # The first pass that said so was right: no later one had anything to do.
        assert run.premature == []
        rec = h.store.get_stack(STACK)
        assert rec is not None
        assert h.controller.plan(rec.spec).actions == ()
        snapshot = h.controller.desired.make(rec.spec, rec, build=False)
        assert h.controller.desired.plan(STACK, rec.generation, rec.spec, snapshot).empty
        # And a pass more (a resync) touches no instance, and asks for no look again.
        calls = len(h.host.calls())
        h.clock.advance(10.0)
        h.controller.health.tick(h.clock())
        assert h.controller.reconcile(STACK).requeue_after is None
        assert h.instance_calls()[calls:] == []
        assert h.problems(STACK) == []


@CHECKS
@given(cases(), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=2))
def test_a_crash_between_any_two_writes_converges_without_duplicates(
        case: Case, where: list[float]) -> None:
    """The server dies at its k-th crash point (a store transaction, a mutating host call)
    and comes back on the same database and host; a second k, if drawn, kills it again
    while it recovers. k is drawn as a share of the points an uncrashed run reaches (a
    dry run counts them: runs are deterministic)."""
    note(repr(case))
    with started(case) as dry:
        dry.arm(NEVER)
        dry.converge(STACK)
        points = dry.crasher.count
    crash_at = [1 + int(w * (points - 1)) for w in where]
    note(f"crash at {crash_at} of {points} points")
    with started(case) as h:
        h.arm(crash_at[0])
        later = crash_at[1:]
        crashes = []
        try:
            while True:
                try:
                    run = h.converge(STACK)
                    break
                except Crash:
                    crashes.append(h.crasher.where)
                    h = h.restart(crash_at=later.pop(0) if later else None)
            note(f"crashed at: {crashes or 'nowhere (k past the run)'}")
            h.arm(None)
            converged(h, run)
        finally:
            h.close()  # the restarted one (closing twice is harmless)


def test_own_ready_peers_without_reload_are_refused() -> None:
    """A role with a check whose files list its own ready instances never settles if it
    cannot reload: each reconfigure restarts an instance, which leaves the ready set, which
    changes its peers' files (and its own), and they restart in turn. Such a stack file is
    refused (tests/unit/test_spec.py says where), so `roles()` never draws one; with a
    reload, the same role settles."""
    with pytest.raises(SpecError) as info:
        load_stack_text(
            f"stack: {STACK}\nroles:\n  db:\n    image: base\n    command: [serve, db]\n"
            f"    count: 2\n    health: {{tcp: 80}}\n    files:\n"
            f"      {PEERS}: {json.dumps(peers_file('db'))}\n", "stack.yaml")
    [p] = info.value.problems
    assert (p.line, p.field) == (9, f'roles.db.files["{PEERS}"]')
    assert "lists db's own ready instances, but db cannot reload" in p.message
    db = RoleSpec("db", "base", 2, ("serve", "db"), resources=Resources(memory=MEMORY),
                  files=((PEERS, peers_file("db")),), reload=ReloadSpec(signal="HUP"),
                  health=HealthSpec(tcp=80, interval=1.0, retries=2, grace=10.0))
    with started(Case(StackSpec(STACK, roles=(db,)), {"db": 2.0}, {})) as h:
        converged(h, h.converge(STACK, budget=60))


def test_the_fake_host_tells_a_duplicate_create() -> None:
    """What the properties' `duplicates == []` relies on: a create of an instance that is
    there whole is refused and recorded, not made over; the same action again is not."""
    db = RoleSpec("db", "base", 1, ("serve", "db"), resources=Resources(memory=MEMORY))
    with started(Case(StackSpec(STACK, roles=(db,)), {"db": 0.0}, {})) as h:
        converged(h)
        rec = h.store.get_stack(STACK)
        assert rec is not None
        [req] = [r for r in h.controller.desired.make(rec.spec, rec, build=False).requests
                 if not r.surge]
        made_by = h.host.calls(["create"])[0].action_id
        h.fleet.create(replace(req, action_id=made_by))  # carried out already: a no-op
        assert h.host.duplicates == []
        with pytest.raises(Conflict, match="exists on host fakehost already"):
            h.fleet.create(replace(req, action_id="another"))
        assert len(h.host.duplicates) == 1
