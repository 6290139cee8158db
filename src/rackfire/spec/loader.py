"""Load a stack file: YAML -> pydantic validation -> cross-checks -> StackSpec.

Invariant: the only exception that leaves this module is SpecError, carrying every problem
found, sorted by position. Problems found by one stage do not stop the next stage that can
still run, so one run reports as much as possible; cross-checks need well-typed data and run
only once validation passed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rackfire.errors import SpecError, SpecProblem
from rackfire.model.stack import StackSpec
from rackfire.model.units import format_size
from rackfire.spec.convert import to_stack_spec
from rackfire.spec.crosscheck import crosscheck
from rackfire.spec.schema import StackModel, allowed_keys, describe
from rackfire.spec.yamltree import Document, read_yaml

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


MAX_STACK_FILE = 1024 * 1024
"""A stack file is a few KB; one of many MB costs the server seconds and hundreds of MB."""


def load_stack_file(path: str | Path) -> StackSpec:
    """Load a stack file; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STACK_FILE + 1)  # never more than the limit, whatever it is
    except FileNotFoundError:
        raise _file_error(path, "file not found") from None
    except IsADirectoryError:
        raise _file_error(path, "is a directory, not a stack file") from None
    except OSError as e:
        raise _file_error(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_STACK_FILE:
        raise _too_large(str(path))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        problem = SpecProblem(str(path), line, e.start - line_start + 1, "", "not UTF-8 text")
        raise SpecError([problem]) from None
    return load_stack_text(text, str(path), base_dir=path.parent)


def load_stack_text(text: str, filename: str, base_dir: Path | None = None) -> StackSpec:
    """Load a stack file's text; `filename` is for messages, `base_dir` anchors relative
    paths. Without it (the server's case) paths stay as the file writes them: the server
    never resolves a client's path, it is sent what they name (api: StackSource)."""
    # Characters are at most as many as bytes: encode only a text that may be under.
    if len(text) > MAX_STACK_FILE or len(text.encode()) > MAX_STACK_FILE:
        raise _too_large(filename)
    doc = read_yaml(text, filename)
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        raise SpecError(_sorted([*problems, _not_a_mapping(doc)]))
    try:
        model = StackModel.model_validate(doc.data)
    except ValidationError as e:
        raise SpecError(_sorted(problems + _from_validation(e, doc))) from None
    problems += crosscheck(model, doc)
    if problems:
        raise SpecError(_sorted(problems))
    return to_stack_spec(model, base_dir)


def stack_json_schema() -> dict[str, Any]:
    """JSON Schema of the stack file, for editors."""
    schema = StackModel.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _too_large(filename: str) -> SpecError:
    return SpecError([SpecProblem(filename, 1, 1, "", "the stack file is larger than "
                                  f"{format_size(MAX_STACK_FILE)}iB, the limit for one stack "
                                  "file")])


def _file_error(path: Path, message: str) -> SpecError:
    return SpecError([SpecProblem(str(path), 0, 0, "", message)])


def _not_a_mapping(doc: Document) -> SpecProblem:
    expected = "a mapping with keys stack, images and roles"
    if doc.data is None and () not in doc.values:
        return SpecProblem(doc.file, 1, 1, "", f"the file is empty; expected {expected}")
    return doc.problem((), f"expected {expected} at the top level, got {describe(doc.data)}")


def _sorted(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(set(problems), key=lambda p: (p.line, p.column, p.field, p.message))


def _from_validation(error: ValidationError, doc: Document) -> list[SpecProblem]:
    errors = error.errors(include_url=False)
    # A typo'd key also makes its correct spelling "missing": report only the typo.
    suggested = {(*e["loc"][:-1], _closest(e["loc"])) for e in errors
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
            problems.append(doc.problem(loc, _unknown_key(loc), at_key=True))
        elif loc and loc[-1] == "[key]":  # pydantic's marker for a bad mapping key
            problems.append(doc.problem(loc[:-1], _message(e), at_key=True))
        else:
            problems.append(doc.problem(loc, _message(e)))
    return problems


def _closest(loc: tuple[str | int, ...]) -> str | None:
    matches = difflib.get_close_matches(str(loc[-1]), allowed_keys(loc[:-1]), n=1)
    return matches[0] if matches else None


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    message = f"unknown key {loc[-1]!r}"
    allowed = allowed_keys(loc[:-1])
    if allowed:
        message += f"; allowed: {', '.join(allowed)}"
    closest = _closest(loc)
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
