"""Load a stack file: YAML -> pydantic validation -> cross-checks -> StackSpec.

Invariant: the only exception that leaves this module is SpecError, carrying every problem
found, sorted by position. Problems found by one stage do not stop the next stage that can
still run, so one run reports as much as possible; cross-checks need well-typed data and run
only once validation passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rackfire.errors import SpecError, SpecProblem
from rackfire.model.stack import StackSpec
from rackfire.spec.convert import to_stack_spec
from rackfire.spec.crosscheck import crosscheck
from rackfire.spec.schema import StackModel, describe
from rackfire.spec.validation import too_large, validated
from rackfire.spec.yamltree import Document

MAX_STACK_FILE = 1024 * 1024
"""A stack file is a few KB; one of many MB costs the server seconds and hundreds of MB."""


def load_stack_file(path: str | Path) -> StackSpec:
    """Load a stack file; relative paths in it are relative to its directory."""
    path = Path(path)
    return load_stack_text(read_spec_file(path, "stack file"), str(path),
                           base_dir=path.parent)


def read_spec_file(path: Path, kind: str, limit: int = MAX_STACK_FILE) -> str:
    """A file's text, or a SpecError naming it (missing, a directory, too large, not
    UTF-8 text with its line and column)."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)  # never more than the limit, whatever it is
    except FileNotFoundError:
        raise _file_error(path, "file not found") from None
    except IsADirectoryError:
        raise _file_error(path, f"is a directory, not a {kind}") from None
    except OSError as e:
        raise _file_error(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > limit:
        raise too_large(str(path), kind, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        problem = SpecProblem(str(path), line, e.start - line_start + 1, "", "not UTF-8 text")
        raise SpecError([problem]) from None


def load_stack_text(text: str, filename: str, base_dir: Path | None = None) -> StackSpec:
    """Load a stack file's text; `filename` is for messages, `base_dir` anchors relative
    paths. Without it (the server's case) paths stay as the file writes them: the server
    never resolves a client's path, it is sent what they name (api: StackSource)."""
    model, _ = validated(text, filename, "stack file", MAX_STACK_FILE, StackModel,
                         _not_a_mapping, crosscheck)
    return to_stack_spec(model, base_dir)


def stack_json_schema() -> dict[str, Any]:
    """JSON Schema of the stack file, for editors."""
    schema = StackModel.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _file_error(path: Path, message: str) -> SpecError:
    return SpecError([SpecProblem(str(path), 0, 0, "", message)])


def _not_a_mapping(doc: Document) -> SpecProblem:
    expected = "a mapping with keys stack, images and roles"
    if doc.data is None and () not in doc.values:
        return SpecProblem(doc.file, 1, 1, "", f"the file is empty; expected {expected}")
    return doc.problem((), f"expected {expected} at the top level, got {describe(doc.data)}")
