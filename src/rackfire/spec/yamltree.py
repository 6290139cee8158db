"""Safe YAML -> plain data, remembering where every key and value was written.

The text is composed into a node tree with SafeLoader (no Python tags) and plain data is built
from the nodes here, rather than by yaml.safe_load, so that every path keeps its 1-based line
and column for error messages. Along the way:

- mapping keys are taken as written, so `on:` or `yes:` stay strings and never become booleans;
- duplicate keys are problems, not silent overwrites; `<<` merge keys are honoured;
- alias expansion and nesting are bounded, so a small hostile file cannot blow up memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rackfire.errors import SpecError, SpecProblem

Path = tuple[str | int, ...]
"""Where a value sits in the document: mapping keys and list indexes from the top."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000
_MAX_DEPTH = 64
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


def format_path(path: Path) -> str:
    """`roles.web.ports[0]`; keys that are not plain words are quoted: `files["/etc/x"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_SEGMENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


@dataclass(slots=True)
class Document:
    """The plain data of one stack file and the position of each of its keys and values."""

    file: str
    data: Any = None
    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)
    containers: set[Path] = field(default_factory=set)
    broken: set[Path] = field(default_factory=set)  # already reported; None stands in for them
    problems: list[SpecProblem] = field(default_factory=list)

    def mark(self, path: Path, *, at_key: bool = False) -> Mark:
        """Where to point for a problem at `path`.

        A missing path points at its nearest existing parent. Mappings and lists point at
        their key, since their value starts on the line of their first entry.
        """
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            want_key = (at_key and end == len(path)) or prefix in self.containers
            if want_key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Mark(1, 1)

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> SpecProblem:
        m = self.mark(path, at_key=at_key)
        return SpecProblem(self.file, m.line, m.column, format_path(path), message)


def read_yaml(text: str, file: str) -> Document:
    """Parse `text`; a YAML syntax error raises SpecError, structural problems are collected.

    `data` is None for an empty document.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise SpecError([_syntax_problem(e, file)]) from None
    except yaml.YAMLError as e:
        raise SpecError([SpecProblem(file, 1, 1, "", f"invalid YAML: {e}")]) from None
    except RecursionError:
        raise SpecError([SpecProblem(file, 1, 1, "", "invalid YAML: nested too deeply")]) from None
    doc = Document(file)
    if root is not None:
        doc.data = _Builder(doc).build(root, ())
    return doc


def _syntax_problem(e: yaml.MarkedYAMLError, file: str) -> SpecProblem:
    mark = e.problem_mark or e.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = " ".join(part for part in (e.context, e.problem) if part)
    return SpecProblem(file, line, column, "", f"invalid YAML: {message}")


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


_Pair = tuple[Node, Node]


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.constructor = SafeConstructor()
        self.count = 0
        self.exhausted = False
        self.active: set[int] = set()  # ids of the collections being built: alias cycles

    def build(self, node: Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            if not self.exhausted:  # once: every later node would fail the same way
                self.exhausted = True
                self._replace(path, node, f"more than {_MAX_NODES} values once aliases are "
                              "expanded; the document is too large")
            return None
        if len(path) > _MAX_DEPTH:
            self._replace(path, node, f"nested more than {_MAX_DEPTH} levels deep")
            return None
        self.doc.values[path] = _mark(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.active:
            self._replace(path, node, "an alias refers to a node that contains it")
            return None
        self.active.add(id(node))
        self.doc.containers.add(path)
        try:
            if isinstance(node, SequenceNode):
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            return self._mapping(node, path)
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        try:
            return self.constructor.construct_object(node)
        except yaml.MarkedYAMLError as e:
            self._replace(path, node, e.problem or "cannot read this value")
            return None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        merged, own = self._pairs(node, path)
        result: dict[str, Any] = {}
        own_keys: dict[str, Mark] = {}
        for i, (key_node, value_node) in enumerate(merged + own):
            if not isinstance(key_node, ScalarNode):
                self._fail(path, key_node, "keys must be plain strings, not lists or mappings")
                continue
            key = key_node.value  # as written: `on:` must not become True
            is_own = i >= len(merged)
            if is_own and key in own_keys:
                first = own_keys[key]
                self._fail((*path, key), key_node, f"duplicate key {key!r} (first at line "
                           f"{first.line}, column {first.column})")
                continue
            if is_own:
                own_keys[key] = _mark(key_node)
            self.doc.keys[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _pairs(self, node: MappingNode, path: Path) -> tuple[list[_Pair], list[_Pair]]:
        """(merged, own): pairs brought in by `<<` merge keys, then the mapping's own pairs.

        Own pairs override merged ones; among merged sources the first listed wins, so they
        are returned last.
        """
        merged: list[_Pair] = []
        own: list[_Pair] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in reversed(sources):
                if not isinstance(source, MappingNode) or id(source) in self.active:
                    self._fail(path, source, "`<<` must merge mappings that do not contain it")
                    continue
                self.active.add(id(source))
                source_merged, source_own = self._pairs(source, path)
                self.active.discard(id(source))
                merged += source_merged + source_own
        return merged, own

    def _replace(self, path: Path, node: Node, message: str) -> None:
        """Report a value that cannot be built; it becomes None, which is not reported again."""
        self.doc.broken.add(path)
        self._fail(path, node, message)

    def _fail(self, path: Path, node: Node, message: str) -> None:
        m = _mark(node)
        self.doc.problems.append(
            SpecProblem(self.doc.file, m.line, m.column, format_path(path), message)
        )
