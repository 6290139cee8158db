"""What rendering a template may spend (`templates.py` says why each limit is there): the
limits, the budget of the render in progress, what an operation is charged for the size of
what it reads and makes, and estimates of what a call would make, taken before it runs.
Pure.

A limit passed raises `OverLimit`, which `templates.render` turns into a RenderError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context

MiB = 1 << 20
MAX_VALUE = MiB  # characters of a string, items of a list, while rendering
MAX_STEPS = 1_000_000  # loop steps and calls while rendering one file
MAX_STACK_STEPS = 20_000_000  # ... and all the files of a stack's instances: seconds
MAX_INT_BITS = 4096
MAX_HELD = 16 * MiB  # characters macros and `{% set %}` blocks make while rendering one file
# Room for what a padding/joining call makes before its result is checked against MAX_VALUE.
_MAX_ESTIMATE = 4 * MAX_VALUE
_NUMBER = re.compile(r"\d+")
CALL_COST = 5  # a call (a macro's, or entering a loop) costs about as much as five steps
# What work linear in a value's size costs, in units (a character; an item of a list or dict
# is `_ITEM` of them) per step. Measured against a loop step (~0.5 us): copying or comparing
# takes ~0.05 us a KiB, a str method or C filter up to ~1.3 us (`upper`), the filters
# written in Python (`wordwrap`, `max`, `title`...) ~0.2 us a character.
_ITEM = 16
COPY = 1024
CALL = 256
SLOW = 2


class OverLimit(Exception):  # always turned into a RenderError
    pass


@dataclass(slots=True)
class Steps:
    """What is left of a budget of steps shared by several renders."""

    left: int = MAX_STACK_STEPS
    total: int = MAX_STACK_STEPS


@dataclass(slots=True)
class Budget:
    steps: int
    message: str
    held: int = 0
    # What comparisons have read of a list or dict, by id (each compared again costs no
    # walk: `p in roles.web.ready` in a loop over peers); forgotten when a method changes one.
    weighed: dict[int, tuple[Any, int]] = field(default_factory=dict)


BUDGET: ContextVar[Budget | None] = ContextVar("rackfire_template_budget", default=None)


def step(cost: int = 1) -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.steps -= cost
        if budget.steps < 0:
            raise OverLimit(budget.message)


def charge(per_step: int, *values: Any) -> None:
    """Work linear in the (top-level) size of `values`: copying them, scanning them."""
    units = 0
    for v in values:
        if isinstance(v, str | bytes):
            units += len(v)
        elif isinstance(v, list | tuple | dict | set | frozenset | range):
            units += _ITEM * len(v)
    step(units // per_step)  # on top of the step the operation costs anyway


def weigh(value: Any) -> Any:
    """Charge for a comparison or `in`, which reads all of a value (a list's items, their
    strings): walked as far as the budget goes, so a list of many references to one long
    string costs what comparing it takes."""
    budget = BUDGET.get()
    if budget is None:
        return value
    if isinstance(value, str | bytes):
        step(len(value) // COPY)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        known = budget.weighed.get(id(value))
        if known is None or known[0] is not value:
            known = (value, measure(value, max(budget.steps, 0) * COPY))
            if len(value) >= 16:  # worth keeping; and not all the lists a loop makes
                if len(budget.weighed) >= 256:
                    budget.weighed.clear()
                budget.weighed[id(value)] = known
        step(known[1] // COPY)
    return value


@pass_context  # so that Jinja does not run it at compile time on a constant
def held(_context: Context, value: Any) -> Any:
    """What a macro, a call or `{% set %}` block or a recursive loop writes: kept in a list
    until the body ends, then joined (a loop of 100,000 writing a 1 MB string would make
    100 GB), so bounded and charged as it is written."""
    budget = BUDGET.get()
    if budget is not None:
        n = len(value) if isinstance(value, str) else measure(value)
        budget.held += n
        step(n // COPY)
        if budget.held > MAX_HELD:
            raise OverLimit(f"macros and blocks make more than {MAX_HELD:,} characters")
    return value


def copied(value: Any) -> Any:
    """A slice (`s[1:]`), which copies."""
    charge(COPY, value)
    return value


def measure(value: Any, cap: int = _MAX_ESTIMATE) -> int:
    """About how many characters `value` is once written out, counted only up to `cap`: a
    list of a million references to one long string is short, but not once written. The
    walk, a Python loop, costs a step every two items."""
    total, todo, seen = 0, [value], 0
    while todo and total <= cap:
        v = todo.pop()
        seen += 1
        if seen % 4096 == 0:
            step(4096 // 2)
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, dict):
            total += 2 + 2 * len(v)
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            todo.extend(v)
        else:
            total += 8
    step(seen % 4096 // 2)
    return total


def sized(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) and \
            len(value) > MAX_VALUE:
        raise OverLimit(f"a value of {len(value):,} characters or items; the limit is "
                        f"{MAX_VALUE:,}")
    if isinstance(value, list | tuple | dict | set | frozenset) and \
            measure(value) > _MAX_ESTIMATE:
        raise OverLimit(f"a value of more than {_MAX_ESTIMATE:,} characters once written")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise OverLimit(f"a number of more than {MAX_INT_BITS} bits")
    return value


def at_most(estimate: int, what: str) -> None:
    if estimate > _MAX_ESTIMATE:
        raise OverLimit(f"{what} would make about {estimate:,} characters; the limit is "
                        f"{MAX_VALUE:,}")


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else measure(value)


def finalize(value: Any) -> Any:
    """Every `{{ value }}`, before it is written out."""
    if isinstance(value, list | tuple | dict | set | frozenset):
        sized(value)
    return value


def format_estimate(fmt: str, args: Iterable[Any]) -> int:
    """An upper bound of `fmt % args` or `fmt.format(*args)`: widths written in the format,
    widths taken from the arguments (`*`, `{:{}}`), and every argument at every field."""
    args = list(args)
    fields = fmt.count("%") + fmt.count("{")
    written = sum(int(n) if len(n) < 12 else 10**12 for n in _NUMBER.findall(fmt))
    biggest = max((abs(_int(a)) for a in args), default=0)
    longest = max((_length(a) for a in args if not isinstance(a, int)), default=0)
    return len(fmt) + written + fields * (biggest + longest + 32)


def join_estimate(items: list[Any], sep: str) -> int:
    step(len(items) // 4)  # a Python loop over them
    return sum(_length(x) for x in items) + len(sep) * max(len(items) - 1, 0)


def _replace_estimate(s: str, old: str, new: str) -> int:
    return len(s) + (s.count(old) if old else len(s) + 1) * len(new)


def padding_estimate(name: str, s: str, args: tuple[Any, ...],
                     kwargs: Mapping[str, Any]) -> int | None:
    """What a str method or filter of that name would make, if it can grow its input."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(s), abs(_int(kwargs.get("width", first))))
    if name == "expandtabs":
        return len(s) * max(_int(kwargs.get("tabsize", first), 8), 1)
    if name == "indent":
        width = kwargs.get("width", first if args else 4)
        per_line = _length(width) if isinstance(width, str) else abs(_int(width, 4))
        return len(s) + (s.count("\n") + 1) * per_line
    if name == "wordwrap":
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else None) or "\n"
        return len(s) * (1 + _length(wrap))
    if name == "replace" and len(args) >= 2:
        return _replace_estimate(s, str(args[0]), str(args[1]))
    if name in ("format", "format_map"):
        values = [*args, *kwargs.values()]
        if name == "format_map" and args and isinstance(args[0], Mapping):
            values = list(args[0].values())
        return format_estimate(s, values)
    return None
