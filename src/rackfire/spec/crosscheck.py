"""Rules between entries of a stack file: references between roles and uniqueness.

Runs only on a StackModel that validated, so every value already has its type. Each problem
points at the later of two clashing entries and names the earlier one.
"""

from __future__ import annotations

from rackfire.errors import SpecProblem
from rackfire.spec.schema import StackModel, normalize_file_path
from rackfire.spec.yamltree import Document, Path, format_path


def crosscheck(model: StackModel, doc: Document) -> list[SpecProblem]:
    return [*_check_uses(model, doc), *_check_host_ports(model, doc), *_check_files(model, doc)]


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
