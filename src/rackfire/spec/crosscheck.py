"""Rules between entries of a stack file: references between roles and uniqueness, and
templates that render (and would settle: a role that cannot reload may not list its own
ready instances).

Runs only on a StackModel that validated, so every value already has its type. Each problem
points at the later of two clashing entries and names the earlier one.
"""

from __future__ import annotations

from typing import Any

from rackfire.errors import SpecProblem
from rackfire.model import templates
from rackfire.model.instance import InstanceKey
from rackfire.model.stack import Resources
from rackfire.model.template_budget import Steps
from rackfire.spec.schema import RoleModel, StackModel, normalize_file_path
from rackfire.spec.yamltree import Document, Path, format_path


def crosscheck(model: StackModel, doc: Document) -> list[SpecProblem]:
    uses = _check_uses(model, doc)
    problems = [*uses, *_check_cycles(model, doc), *_check_host_ports(model, doc),
                *_check_files(model, doc), *_check_own_ready(model, doc),
                *_check_jobs(model, doc), *_check_scale(model, doc)]
    if not uses:  # a template sees the roles it uses: they must exist
        problems += _check_renders(model, doc)
    return problems


def _check_uses(model: StackModel, doc: Document) -> list[SpecProblem]:
    problems = []
    for name, role in model.roles.items():
        seen: set[str] = set()
        for i, used in enumerate(role.uses):
            path = ("roles", name, "uses", i)
            if used == name:
                problems.append(doc.problem(path, "a role cannot use itself"))
            elif used not in model.roles:
                known = ", ".join(model.roles)
                problems.append(doc.problem(path, f"no role named {used!r}; roles: {known}"))
            elif used in seen:
                problems.append(doc.problem(path, f"{used!r} is listed twice"))
            seen.add(used)
    return problems


# What a job (a role with `schedule:`) cannot have: its runs are fresh instances that end.
_NOT_FOR_JOBS = {
    "count": "a job has no count: each slot runs one fresh instance",
    "ports": "a job publishes no ports: its runs end",
    "health": "a job has no health check: a run's exit code is its result",
    "data": "a job's runs are fresh instances: no data disk (give it to a role it uses)",
    "reload": "a job's runs are not reloaded: each has the config of its slot",
    "release": "a job runs its new release at its next slot: no `before` task",
    "ha": "a job's runs are not failed over: one whose host is lost is recorded as lost",
    "backup": "a job has no disks to back up",
    "scale": "a job is not scaled: each slot runs one instance (concurrency: allow runs more)",
}


def _check_jobs(model: StackModel, doc: Document) -> list[SpecProblem]:
    problems = []
    for name, role in model.roles.items():
        if role.schedule is None:
            if role.job is not None:
                problems.append(doc.problem(("roles", name, "job"), "only a job has job "
                                            "settings: give the role a `schedule:` (cron)"))
            for i, used in enumerate(role.uses):
                other = model.roles.get(used)
                if other is not None and other.schedule is not None:
                    problems.append(doc.problem(("roles", name, "uses", i), f"{used} is a "
                                                "job: it has no instances to use"))
            continue
        for key in sorted(role.model_fields_set & _NOT_FOR_JOBS.keys()):
            problems.append(doc.problem(("roles", name, key), _NOT_FOR_JOBS[key]))
    return problems


def _check_scale(model: StackModel, doc: Document) -> list[SpecProblem]:
    problems = []
    for name, role in model.roles.items():
        scale = role.scale
        if scale is None:
            continue
        if "count" in role.model_fields_set and not scale.min <= role.count <= scale.max:
            problems.append(doc.problem(("roles", name, "count"), f"{role.count} is outside "
                                        f"scale's [{scale.min}, {scale.max}]"))
        via = scale.via
        if via is not None and (via not in model.roles or name not in model.roles[via].uses):
            problems.append(doc.problem(("roles", name, "scale", "via"), f"no role {via} "
                                        f"uses {name}: its HAProxy is not in front of it"))
        target = scale.target
        wants_haproxy = target is not None and (target.requests_per_instance is not None
                                                or target.latency_p95 is not None)
        if wants_haproxy and via is None and not any(name in r.uses
                                                     for r in model.roles.values()):
            problems.append(doc.problem(("roles", name, "scale", "target"), "a request "
                                        "target needs a role with HAProxy in front (one that "
                                        "uses this one, or `via:`)"))
    return problems


def _check_cycles(model: StackModel, doc: Document) -> list[SpecProblem]:
    """Roles that use each other in a ring (a -> b -> c -> a): none could start or roll
    first. Reported once per ring, at the use that closes it, from its first role in file
    order."""
    graph = {name: [u for u in role.uses if u in model.roles and u != name]
             for name, role in model.roles.items()}
    problems: list[SpecProblem] = []
    reported: set[frozenset[str]] = set()
    for start in model.roles:
        # Depth-first from `start`, looking for a way back to it.
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            name, trail = stack.pop()
            for used in graph[name]:
                if used == start:
                    ring = frozenset(trail)
                    if ring not in reported and min(ring, key=list(model.roles).index) == start:
                        reported.add(ring)
                        last = trail[-1]
                        path = ("roles", last, "uses", model.roles[last].uses.index(start))
                        problems.append(doc.problem(path, "roles use each other in a cycle: "
                                                    + " -> ".join([*trail, start])))
                elif used not in seen:
                    seen.add(used)
                    stack.append((used, [*trail, used]))
    return problems


def _check_renders(model: StackModel, doc: Document) -> list[SpecProblem]:
    """Render each file once, for the role's first instance with every instance of the stack
    ready, so that a template that fails or is too big (see model/templates.py) is refused
    here, at its line, rather than when it is planned. The addresses are stand-ins."""
    peers: dict[str, list[dict[str, Any]]] = {}
    n = 0
    for name, role in model.roles.items():
        peers[name] = []
        for i in range(role.count):
            n += 1
            peers[name].append(templates.peer(InstanceKey(model.stack, name, i).name,
                                              f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", i))
    problems = []
    steps = Steps()  # the stack's budget, as at plan: not a million steps a file
    for name, role in model.roles.items():
        if not role.count or not role.files:
            continue
        first = InstanceKey(model.stack, name, 0)
        visible = {r: templates.role_view(peers[r], peers[r], *_primary(model, r, peers[r]))
                   for r in (name, *role.uses)}
        # What _check_own_ready cannot see by name: `{% set me = roles[role.name] %}`.
        own = visible[name] = _Watched(visible[name])
        named = _own_ready_files(name, role)
        ctx = templates.context(stack=model.stack, role=name, count=role.count, env=role.env,
                                name=first.name, ip=peers[name][0]["ip"], index=0,
                                instance_id=first.id, roles=visible,
                                primary=bool(role.ha and role.ha.primary))
        disk = role.resources.disk if role.resources and role.resources.disk else None
        disk = disk or Resources().disk
        used = 0
        # In the order the renderer takes them, so the instance's bound falls on the same one.
        for key in sorted(role.files, key=normalize_file_path):
            limit, too_big = templates.file_limit(used, disk)
            own.read = False
            try:
                compiled, _ = templates.compile_template(role.files[key])
                used += len(templates.render(compiled, ctx, limit, too_big, steps).encode())
            except templates.RenderError as e:
                problems.append(doc.problem(("roles", name, "files", key),
                                            f"template failed: {e}"))
                break  # the files after it would be measured against a wrong total
            if own.read and _cannot_settle(role) and key not in named:
                problems.append(_own_ready_problem(doc, name, key, None))
    return problems


class _Watched(dict[str, Any]):
    """A role's view (templates.role_view) that notes whether a template read its `ready`."""

    read = False

    def __getitem__(self, key: str) -> Any:
        self.read = self.read or key == "ready"
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read = self.read or key == "ready"
        return super().get(key, default)


def _primary(model: StackModel, name: str,
             peers: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int]:
    """As the renderer sees a primary role at first: its first instance, in term 1."""
    ha = model.roles[name].ha
    return (peers[0] if peers else None, 1) if ha and ha.primary else (None, 0)


def _cannot_settle(role: RoleModel) -> bool:
    """Whether a file of the role that lists its own ready instances would change at each
    of their restarts, for ever. A restart without a reload takes an instance with a check
    out of the ready set until it passes again: its peers' files (and its own) change, they
    restart, and so on in turn. One without a check is ready again by the next look."""
    return role.reload is None and role.health is not None


def _own_ready_files(name: str, role: RoleModel) -> dict[str, int]:
    """The role's files that name its own `roles.<name>.ready`, each at its template line."""
    if not _cannot_settle(role):
        return {}
    found = {}
    for key, text in role.files.items():
        try:
            line = templates.ready_reads(text, name).get(name)
        except templates.RenderError:
            continue  # the schema refused it already
        if line is not None:
            found[key] = line
    return found


def _check_own_ready(model: StackModel, doc: Document) -> list[SpecProblem]:
    return [_own_ready_problem(doc, name, key, line)
            for name, role in model.roles.items()
            for key, line in _own_ready_files(name, role).items()]


def _own_ready_problem(doc: Document, name: str, key: str, line: int | None) -> SpecProblem:
    where = f" (template line {line})" if line and line > 1 else ""
    return doc.problem(
        ("roles", name, "files", key),
        f"lists {name}'s own ready instances{where}, but {name} cannot reload: every "
        "restart would change its peers' files and restart them in turn; give "
        f"{name} a `reload:` (a signal or an exec), or list roles.{name}.instances (all of "
        "them, ready or not)")


def _check_host_ports(model: StackModel, doc: Document) -> list[SpecProblem]:
    # One stack may land on one host, so a host port can be published only once.
    problems = []
    first: dict[int, Path] = {}
    for name, role in model.roles.items():
        for i, port in enumerate(role.ports):
            path = ("roles", name, "ports", i)
            if port.host_port in first:
                earlier = format_path(first[port.host_port])
                problems.append(doc.problem(
                    path, f"host port {port.host_port} is already published by {earlier}"))
            else:
                first[port.host_port] = path
    return problems


def _check_files(model: StackModel, doc: Document) -> list[SpecProblem]:
    problems = []
    for name, role in model.roles.items():
        first: dict[str, str] = {}
        for key in role.files:
            path = normalize_file_path(key)
            if path in first:
                problems.append(doc.problem(
                    ("roles", name, "files", key),
                    f"same file as {first[path]!r} once normalized to {path}", at_key=True))
                continue
            first[path] = key
        # A file cannot also be a directory of another file (nor of /etc/hostname).
        for path, key in first.items():
            parents = {p for p in (*first, "/etc/hostname") if path.startswith(p + "/")}
            if parents:
                problems.append(doc.problem(
                    ("roles", name, "files", key),
                    f"{path} would be inside the file {min(parents)}", at_key=True))
    return problems
