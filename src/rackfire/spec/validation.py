"""Pydantic's validation errors as problems at their file, line and field: one translation
for every file rackfire reads (stack files, hosts files)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from rackfire.errors import SpecError, SpecProblem
from rackfire.model.units import format_size
from rackfire.spec.schema import allowed_keys, describe
from rackfire.spec.yamltree import Document, read_yaml

M = TypeVar("M", bound=BaseModel)

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def validated(text: str, filename: str, kind: str, limit: int, root: type[M],
              not_a_mapping: Callable[[Document], SpecProblem],
              crosscheck: Callable[[M, Document], list[SpecProblem]]) -> tuple[M, Document]:
    """A file's text as its validated model: YAML, then the model's own rules, then the
    rules between entries; every problem found at once, or a SpecError with them all."""
    # Characters are at most as many as bytes: encode only a text that may be under.
    if len(text) > limit or len(text.encode()) > limit:
        raise too_large(filename, kind, limit)
    doc = read_yaml(text, filename)
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        raise SpecError(sort_problems([*problems, not_a_mapping(doc)]))
    try:
        model = root.model_validate(doc.data)
    except ValidationError as e:
        raise SpecError(sort_problems(problems + from_validation(e, doc, root))) from None
    problems += crosscheck(model, doc)
    if problems:
        raise SpecError(sort_problems(problems))
    return model, doc


def too_large(filename: str, kind: str, limit: int) -> SpecError:
    return SpecError([SpecProblem(filename, 1, 1, "", f"the {kind} is larger than "
                                  f"{format_size(limit)}iB, the limit for one {kind}")])


def sort_problems(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(set(problems), key=lambda p: (p.line, p.column, p.field, p.message))


def from_validation(error: ValidationError, doc: Document,
                    root: type[BaseModel]) -> list[SpecProblem]:
    """Pydantic's errors as problems at their place in the file."""
    errors = error.errors(include_url=False)
    # A typo'd key also makes its correct spelling "missing": report only the typo.
    suggested = {(*e["loc"][:-1], _closest(e["loc"], root)) for e in errors
                 if e["type"] == "extra_forbidden"}
    problems = []
    for e in errors:
        loc = tuple(e["loc"])
        if any(loc[:n] in doc.broken for n in range(len(loc) + 1)):
            continue
        if e["type"] == "missing":
            if loc not in suggested:
                problems.append(doc.problem(loc, f"missing required key {loc[-1]!r}"))
        elif e["type"] == "extra_forbidden":
            problems.append(doc.problem(loc, _unknown_key(loc, root), at_key=True))
        elif loc and loc[-1] == "[key]":  # pydantic's marker for a bad mapping key
            problems.append(doc.problem(loc[:-1], _message(e), at_key=True))
        else:
            problems.append(doc.problem(loc, _message(e)))
    return problems


def _closest(loc: tuple[str | int, ...], root: type[BaseModel]) -> str | None:
    matches = difflib.get_close_matches(str(loc[-1]), allowed_keys(loc[:-1], root), n=1)
    return matches[0] if matches else None


def _unknown_key(loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    message = f"unknown key {loc[-1]!r}"
    allowed = allowed_keys(loc[:-1], root)
    if allowed:
        message += f"; allowed: {', '.join(allowed)}"
    closest = _closest(loc, root)
    if closest:
        message += f"; did you mean {closest!r}?"
    return message


def _message(e: ErrorDetails) -> str:
    kind, value = e["type"], e.get("input")
    ctx = e.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    return f"{e['msg'].replace('Input should be', 'must be')}, got {describe(value)}"
