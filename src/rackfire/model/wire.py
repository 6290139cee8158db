"""Model values to JSON and back, by their type hints: what crosses the wire between the
controller and a host's agent. Frozen dataclasses, enums, tuples (of any length or fixed),
lists, dicts with string keys, Optional, and the JSON scalars; nothing else, so a surprise
in the model is an error here rather than a silent loss on the other side."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Union, get_args, get_origin

JSON = Any


def encode(value: Any) -> JSON:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to an agent")


def decode(tp: Any, data: JSON) -> Any:
    """`data` as a value of type `tp` (a class or a typing form)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if data is None:
            return None
        if len(members) == 1:
            return decode(members[0], data)
        for m in members:  # e.g. float | int: the first that takes it
            try:
                return decode(m, data)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{data!r} is none of {tp}")
    if origin is tuple:
        args = get_args(tp)
        _expect(data, list, tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} items for {tp}, got {len(data)}")
        return tuple(decode(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        _expect(data, list, tp)
        return [decode(get_args(tp)[0], v) for v in data]
    if origin is dict:
        _expect(data, dict, tp)
        return {str(k): decode(get_args(tp)[1], v) for k, v in data.items()}
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        _expect(data, dict, tp)
        hints = _hints(tp)
        fields = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown fields {sorted(unknown)}")
        return tp(**{k: decode(hints[k], v) for k, v in data.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise TypeError(f"expected a number, got {data!r}")
        return float(data)
    if tp in (bool, int, str):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise TypeError(f"expected {tp.__name__}, got {data!r}")
        return data
    if tp is type(None) and data is None:
        return None
    raise TypeError(f"cannot read a {tp} from an agent")


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _expect(data: JSON, kind: type, tp: Any) -> None:
    if not isinstance(data, kind):
        raise TypeError(f"expected {kind.__name__} for {tp}, got {type(data).__name__}")
