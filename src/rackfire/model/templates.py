"""The templates of a role's `files`: one bounded Jinja environment, shared by the stack
file's checks (`spec/`, which renders each file once at load for a file:line error) and the
renderer (`plan/render.py`). Pure.

A stack file comes from whoever can reach the API, so a template must not be able to read
other files, nor make the server compute or hold more than a config file needs:

- `include`, `import` and `extends` are refused (in the parse tree, and by a loader that has
  no templates);
- `*`, `**`, `%`, `+` and `~` are intercepted (which also keeps Jinja from folding `'x' * N`
  into a constant at compile time): a string or list never exceeds `MAX_VALUE` items, an
  integer `MAX_INT_BITS` bits;
- filters and methods that pad, repeat or join (`center`, `indent`, `replace`, `join`,
  `format`...) are checked against the size of what they would make before they run;
- loop steps and calls of one file draw from `MAX_STEPS`, and all the files of a stack's
  instances from a `Steps` of `MAX_STACK_STEPS` (so a role of thousands cannot spend
  minutes of the server's CPU on each plan); an operation that copies, compares or scans
  (`~`, `+`, `==`, `in`, a slice, a method, a filter) costs steps for the size of what it
  reads and makes, so a loop over a 1 MB string costs what it takes, not a step a turn;
- output is counted as it streams: a file stops at `MAX_FILE_BYTES`, an instance's files
  at `instance_limit` (they go into its config layer, on its disk); what macros, call and
  `{% set %}` blocks and recursive loops make (held in memory, and joined) at `MAX_HELD`.

Any failure, Jinja's or Python's (`1/0`, a macro that calls itself), is a `RenderError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import Any

from jinja2 import (
    BaseLoader,
    Environment,
    StrictUndefined,
    Template,
    TemplateNotFound,
    nodes,
    pass_context,
)
from jinja2.filters import make_attrgetter
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, modifies_known_mutable
from jinja2.visitor import NodeTransformer

from rackfire.model.units import format_size

MiB = 1 << 20
MAX_FILE_BYTES = MiB
MAX_INSTANCE_BYTES = 16 * MiB
MAX_VALUE = MiB  # characters of a string, items of a list, while rendering
MAX_STEPS = 1_000_000  # loop steps and calls while rendering one file
MAX_STACK_STEPS = 20_000_000  # ... and all the files of a stack's instances: seconds
MAX_INT_BITS = 4096
MAX_HELD = 16 * MiB  # characters macros and `{% set %}` blocks make while rendering one file
# Room for what a padding/joining call makes before its result is checked against MAX_VALUE.
_MAX_ESTIMATE = 4 * MAX_VALUE
_FORBIDDEN_TAGS: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Include, "include"), (nodes.Import, "import"), (nodes.FromImport, "import"),
    (nodes.Extends, "extends"))
_NUMBER = re.compile(r"\d+")
_CALL_COST = 5  # a call (a macro's, or entering a loop) costs about as much as five steps
# What work linear in a value's size costs, in units (a character; an item of a list or dict
# is `_ITEM` of them) per step. Measured against a loop step (~0.5 us): copying or comparing
# takes ~0.05 us a KiB, a str method or C filter up to ~1.3 us (`upper`), the filters
# written in Python (`wordwrap`, `max`, `title`...) ~0.2 us a character.
_ITEM = 16
_COPY = 1024
_CALL = 256
_SLOW = 2
_SLOW_FILTERS = frozenset({
    "capitalize", "dictsort", "e", "escape", "float", "forceescape", "groupby", "int", "max",
    "min", "pprint", "sort", "striptags", "sum", "title", "tojson", "unique", "urlencode",
    "urlize", "wordcount", "wordwrap", "xmlattr"})
_COMPARING_TESTS = frozenset({
    "in", "eq", "equalto", "==", "ne", "!=", "lt", "<", "lessthan", "le", "<=", "gt", ">",
    "greaterthan", "ge", ">="})


class RenderError(Exception):
    """A template failed or passed a limit; `line` is the template's own line, if known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f" (template line {self.line})" if self.line and self.line > 1 else ""
        return f"{self.message}{where}"


class _Limit(Exception):  # always turned into a RenderError
    pass


def instance_limit(disk: int | None) -> int:
    """The most an instance's rendered files may take: a quarter of its disk, 16 MiB at most."""
    return MAX_INSTANCE_BYTES if disk is None else min(MAX_INSTANCE_BYTES, disk // 4)


def forbidden_tag(tree: nodes.Template) -> tuple[str, int] | None:
    """The first `include`/`import`/`extends` of a parsed template and its line."""
    found = [(node.lineno, tag) for cls, tag in _FORBIDDEN_TAGS for node in tree.find_all(cls)]
    if not found:
        return None
    line, tag = min(found)
    return tag, line


def forbidden_message(tag: str) -> str:
    return f"{{% {tag} %}} is not allowed: a file's template cannot read other templates"


# -- the budget of the render in progress -----------------------------------------------------


@dataclass(slots=True)
class Steps:
    """What is left of a budget of steps shared by several renders."""

    left: int = MAX_STACK_STEPS
    total: int = MAX_STACK_STEPS


@dataclass(slots=True)
class _Budget:
    steps: int
    message: str
    held: int = 0
    # What comparisons have read of a list or dict, by id (each compared again costs no
    # walk: `p in roles.web.ready` in a loop over peers); forgotten when a method changes one.
    weighed: dict[int, tuple[Any, int]] = field(default_factory=dict)


_BUDGET: ContextVar[_Budget | None] = ContextVar("rackfire_template_budget", default=None)


def _step(cost: int = 1) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.steps -= cost
        if budget.steps < 0:
            raise _Limit(budget.message)


def _charge(per_step: int, *values: Any) -> None:
    """Work linear in the (top-level) size of `values`: copying them, scanning them."""
    units = 0
    for v in values:
        if isinstance(v, str | bytes):
            units += len(v)
        elif isinstance(v, list | tuple | dict | set | frozenset | range):
            units += _ITEM * len(v)
    _step(units // per_step)  # on top of the step the operation costs anyway


def _weigh(value: Any) -> Any:
    """Charge for a comparison or `in`, which reads all of a value (a list's items, their
    strings): walked as far as the budget goes, so a list of many references to one long
    string costs what comparing it takes."""
    budget = _BUDGET.get()
    if budget is None:
        return value
    if isinstance(value, str | bytes):
        _step(len(value) // _COPY)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        known = budget.weighed.get(id(value))
        if known is None or known[0] is not value:
            known = (value, _measure(value, max(budget.steps, 0) * _COPY))
            if len(value) >= 16:  # worth keeping; and not all the lists a loop makes
                if len(budget.weighed) >= 256:
                    budget.weighed.clear()
                budget.weighed[id(value)] = known
        _step(known[1] // _COPY)
    return value


@pass_context  # so that Jinja does not run it at compile time on a constant
def _held(_context: Context, value: Any) -> Any:
    """What a macro, a call or `{% set %}` block or a recursive loop writes: kept in a list
    until the body ends, then joined (a loop of 100,000 writing a 1 MB string would make
    100 GB), so bounded and charged as it is written."""
    budget = _BUDGET.get()
    if budget is not None:
        n = len(value) if isinstance(value, str) else _measure(value)
        budget.held += n
        _step(n // _COPY)
        if budget.held > MAX_HELD:
            raise _Limit(f"macros and blocks make more than {MAX_HELD:,} characters")
    return value


def _copied(value: Any) -> Any:
    """A slice (`s[1:]`), which copies."""
    _charge(_COPY, value)
    return value


def _measure(value: Any, cap: int = _MAX_ESTIMATE) -> int:
    """About how many characters `value` is once written out, counted only up to `cap`: a
    list of a million references to one long string is short, but not once written. The
    walk, a Python loop, costs a step every two items."""
    total, todo, seen = 0, [value], 0
    while todo and total <= cap:
        v = todo.pop()
        seen += 1
        if seen % 4096 == 0:
            _step(4096 // 2)
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
    _step(seen % 4096 // 2)
    return total


def _sized(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) and \
            len(value) > MAX_VALUE:
        raise _Limit(f"a value of {len(value):,} characters or items; the limit is "
                     f"{MAX_VALUE:,}")
    if isinstance(value, list | tuple | dict | set | frozenset) and \
            _measure(value) > _MAX_ESTIMATE:
        raise _Limit(f"a value of more than {_MAX_ESTIMATE:,} characters once written")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Limit(f"a number of more than {MAX_INT_BITS} bits")
    return value


def _at_most(estimate: int, what: str) -> None:
    if estimate > _MAX_ESTIMATE:
        raise _Limit(f"{what} would make about {estimate:,} characters; the limit is "
                     f"{MAX_VALUE:,}")


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else _measure(value)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}`, before it is written out."""
    if isinstance(value, list | tuple | dict | set | frozenset):
        _sized(value)
    return value


def _format_estimate(fmt: str, args: Iterable[Any]) -> int:
    """An upper bound of `fmt % args` or `fmt.format(*args)`: widths written in the format,
    widths taken from the arguments (`*`, `{:{}}`), and every argument at every field."""
    args = list(args)
    fields = fmt.count("%") + fmt.count("{")
    written = sum(int(n) if len(n) < 12 else 10**12 for n in _NUMBER.findall(fmt))
    biggest = max((abs(_int(a)) for a in args), default=0)
    longest = max((_length(a) for a in args if not isinstance(a, int)), default=0)
    return len(fmt) + written + fields * (biggest + longest + 32)


def _join_estimate(items: list[Any], sep: str) -> int:
    _step(len(items) // 4)  # a Python loop over them
    return sum(_length(x) for x in items) + len(sep) * max(len(items) - 1, 0)


def _replace_estimate(s: str, old: str, new: str) -> int:
    return len(s) + (s.count(old) if old else len(s) + 1) * len(new)


def _padding_estimate(name: str, s: str, args: tuple[Any, ...],
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
        return _format_estimate(s, values)
    return None


# -- the environment -------------------------------------------------------------------------


class _NoTemplates(BaseLoader):
    def get_source(self, environment: Environment, template: str) -> Any:
        raise TemplateNotFound(template, forbidden_message("include"))


class _Bounded(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_INT_BITS:
            raise _Limit(f"{left} ** {right} has more than {MAX_INT_BITS} bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and isinstance(seq, str | list | tuple):
                    _at_most(_measure(seq) * n, "`*`")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _Limit(f"a product of more than {MAX_INT_BITS} bits")
        if operator == "%" and isinstance(left, str):
            _at_most(_format_estimate(left, right if isinstance(right, tuple) else (right,)),
                     "`%` formatting")
        result = _sized(super().call_binop(context, operator, left, right))
        _charge(_COPY, result)
        return result

    def call(__self, __context: Context, __obj: Any,
             *args: Any, **kwargs: Any) -> Any:
        _step(_CALL_COST)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "")
        budget = _BUDGET.get()
        if budget is not None and budget.weighed and modifies_known_mutable(owner, name):
            budget.weighed.clear()  # `l.append(s)`: what was read of `l` is no longer true
        if isinstance(owner, str):
            if name == "join" and args:
                items = list(args[0])
                _at_most(_join_estimate(items, owner), "join")
                args = (items, *args[1:])
            else:
                estimate = _padding_estimate(name, owner, args, kwargs)
                if estimate is not None:
                    _at_most(estimate, name)
        result = _sized(super().call(__context, __obj, *args, **kwargs))
        # A method reads its object (`s.count(x)`), a call its arguments; both make `result`.
        if owner is not __self:  # the helpers of _Instrument charge for themselves
            _charge(_CALL, owner, result, *args, *kwargs.values())
        return result


    def rackfire_iterate(self, iterable: Any) -> Iterator[Any]:
        """Each step of a `for` loop costs one step of the budget."""
        for item in iterable:
            _step()
            yield item

    def rackfire_concat(self, *parts: Any) -> str:
        """`a ~ b`, checked like `+`."""
        texts = [str(p) for p in parts]
        _at_most(sum(len(t) for t in texts), "`~`")
        result = str(_sized("".join(texts)))
        _charge(_COPY, result)
        return result


def _guarded_filter(name: str, fn: Callable[..., Any], env: _Bounded) -> Callable[..., Any]:
    # The filters Jinja passes the environment or context to take it first.
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    slow = name in _SLOW_FILTERS

    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        head, rest = args[:skip + 1], args[skip + 1:]
        value = head[-1] if len(head) > skip else None
        if slow and isinstance(value, Iterator):  # `range(n)|map(...)|max`: charged by size
            value = list(value)
            head = (*head[:-1], value)
            args = (*head, *rest)
        if name == "join" and value is not None:
            items = list(value)
            attribute = kwargs.pop("attribute", rest[1] if len(rest) > 1 else None)
            if attribute is not None:
                get = make_attrgetter(env, attribute)
                items = [get(x) for x in items]
                rest = rest[:1]
            sep = str(kwargs.get("d", rest[0] if rest else ""))
            _at_most(_join_estimate(items, sep), "join")
            args = (*head[:-1], items, *rest)
        elif name == "format" and isinstance(value, str):
            _at_most(_format_estimate(value, [*rest, *kwargs.values()]), "format")
        elif isinstance(value, str):
            estimate = _padding_estimate(name, value, tuple(rest), kwargs)
            if estimate is not None:
                _at_most(estimate, name)
        result = _sized(fn(*args, **kwargs))
        _charge(_SLOW if slow else _CALL, value, result)
        return result

    return guarded


def _guarded_test(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for a in (*args, *kwargs.values()):
            _weigh(a)
        return fn(*args, **kwargs)

    return guarded


def _environment() -> _Bounded:
    env = _Bounded(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                   loader=_NoTemplates(), finalize=_finalize)
    env.globals.pop("lipsum", None)  # lipsum(n=...) writes as many paragraphs as asked
    env.filters = {name: _guarded_filter(name, fn, env) for name, fn in env.filters.items()}
    # What _Instrument wraps values in: filters, called directly (not through the sandbox's
    # `call`, which costs `_CALL_COST` and measures what it returns).
    env.filters.update(rackfire_held=_held, rackfire_weigh=_weigh, rackfire_copied=_copied)
    tests: dict[str, Any] = env.tests  # typed by Jinja as `function`, which is callable
    env.tests = {name: _guarded_test(fn) if name in _COMPARING_TESTS else fn
                 for name, fn in tests.items()}
    return env


_ENV = _environment()


class _Instrument(NodeTransformer):
    """Route `for` loops, `~`, slices, the operands of comparisons and what bodies that
    are joined write through the environment's budgeted helpers."""

    def __init__(self) -> None:
        self.buffered = 0  # inside a macro, call or set block, recursive loop, filter block

    def _joined(self, node: nodes.Node) -> nodes.Node:
        self.buffered += 1
        try:
            self.generic_visit(node)
        finally:
            self.buffered -= 1
        return node

    visit_Macro = visit_CallBlock = visit_AssignBlock = visit_FilterBlock = _joined

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        if self.buffered:
            node.nodes = [_filter("rackfire_held", child, node) for child in node.nodes]
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        if node.recursive:  # its body is a function that joins what it writes
            self._joined(node)
        else:
            self.generic_visit(node)
        node.iter = _helper("rackfire_iterate", [node.iter], node)  # type: ignore[list-item]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _helper("rackfire_concat", list(node.nodes), node)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node.arg, nodes.Slice):  # compiled to obj[a:b], not getitem()
            return _filter("rackfire_copied", node, node)
        return node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        node.expr = _filter("rackfire_weigh", node.expr, node)
        for operand in node.ops:
            operand.expr = _filter("rackfire_weigh", operand.expr, operand)
        return node


def _filter(name: str, child: nodes.Expr, at: nodes.Node) -> nodes.Filter:
    node = nodes.Filter(child, name, [], [], None, None)
    node.set_lineno(at.lineno)
    node.set_environment(_ENV)
    return node


def _helper(name: str, args: list[nodes.Expr], at: nodes.Node) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None)
    call.set_lineno(at.lineno)
    call.set_environment(_ENV)
    return call


_CACHED_TEXT = 64 * 1024  # a cache of big templates would hold on to a lot of code


def compile_template(text: str) -> tuple[Template, bool]:
    """Compiled once per text, and whether it reads `instance` (if not, it renders the same
    for every instance of a role). Raises RenderError."""
    return _compile_cached(text) if len(text) <= _CACHED_TEXT else _compile(text)


@lru_cache(maxsize=1024)
def _compile_cached(text: str) -> tuple[Template, bool]:
    return _compile(text)


def _compile(text: str) -> tuple[Template, bool]:
    try:
        tree = _ENV.parse(text)
        forbidden = forbidden_tag(tree)
        if forbidden is not None:
            raise RenderError(forbidden_message(forbidden[0]), forbidden[1])
        reads_instance = "instance" in find_undeclared_variables(tree)
        _Instrument().visit(tree)
        return _ENV.from_string(tree), reads_instance
    except RenderError:
        raise
    except Exception as e:  # a template's failure, whatever it is
        raise _render_error(e) from None


def render(template: Template, context: Mapping[str, Any], limit: int, too_big: str,
           steps: Steps | None = None) -> str:
    """Render under the budget (`MAX_STEPS`, and what is left of `steps`), streaming: past
    `limit` bytes, stop with `too_big`."""
    if steps is not None and steps.left < MAX_STEPS:
        budget = _Budget(steps.left, f"the stack's templates take more than {steps.total:,} "
                         "loop steps and calls for all its instances")
    else:
        budget = _Budget(MAX_STEPS, f"more than {MAX_STEPS:,} loop steps and calls")
    start = budget.steps
    token = _BUDGET.set(budget)
    try:
        parts, size = [], 0
        try:  # as Template.render, less a generator's wrapper per chunk
            for chunk in template.root_render_func(template.new_context(dict(context))):
                size += len(chunk)  # characters: no more than its UTF-8 bytes
                if size > limit:
                    raise RenderError(too_big)
                parts.append(chunk)
        except RenderError:
            raise
        except Exception:
            _ENV.handle_exception()  # raises it again, its frames at the template's lines
        out = "".join(parts)
        if not out.isascii() and len(out.encode()) > limit:
            raise RenderError(too_big)
        return out
    except RenderError:
        raise
    except Exception as e:  # a template's failure, whatever it is
        raise _render_error(e) from None
    finally:
        _BUDGET.reset(token)
        if steps is not None:
            steps.left -= start - budget.steps


def _render_error(e: BaseException) -> RenderError:
    line = None
    tb = e.__traceback__
    while tb is not None:  # Jinja rewrites frames of the template to its own lines
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    line = getattr(e, "lineno", None) or line
    if isinstance(e, _Limit):
        return RenderError(f"too much: {e}", line)
    if isinstance(e, RecursionError):
        return RenderError("nested too deeply (does a macro call itself?)", line)
    if isinstance(e, MemoryError):
        return RenderError("out of memory", line)
    if isinstance(e, TemplateNotFound):
        return RenderError(forbidden_message("include"), line)
    message = getattr(e, "message", None) or str(e)
    module = type(e).__module__
    if not module.startswith("jinja2"):  # ZeroDivisionError, OverflowError...
        message = f"{type(e).__name__}: {message}"
    return RenderError(message, line)


def too_big_message(limit: int, *, instance: bool) -> str:
    if instance:
        return (f"the instance's files would take more than {format_size(limit)} (a quarter "
                f"of its disk, at most {format_size(MAX_INSTANCE_BYTES)})")
    return f"renders to more than {format_size(limit)}, the limit for one file"


def file_limit(used: int, disk: int | None) -> tuple[int, str]:
    """The bytes the next file of an instance may take, having used `used`, and what to say
    past them."""
    total = instance_limit(disk)
    left = total - used
    if left < MAX_FILE_BYTES:
        return max(left, 0), too_big_message(total, instance=True)
    return MAX_FILE_BYTES, too_big_message(MAX_FILE_BYTES, instance=False)


def peer(name: str, ip: str, index: int) -> dict[str, Any]:
    return {"name": name, "ip": ip, "index": index}


def role_view(instances: list[dict[str, Any]], ready: list[dict[str, Any]]) -> dict[str, Any]:
    return {"instances": instances, "count": len(instances), "ready": ready}


def context(*, stack: str, role: str, count: int, env: Mapping[str, str], name: str, ip: str,
            index: int, instance_id: str, roles: Mapping[str, Any]) -> dict[str, Any]:
    """What a template sees; `roles` is the role itself and those it `uses`, by role_view."""
    return {
        "instance": {"name": name, "ip": ip, "index": index, "id": instance_id, "role": role},
        "role": {"name": role, "count": count},
        "stack": {"name": stack},
        "roles": roles,
        "env": dict(env),
    }


HINT = ("templates see instance.{name,ip,index}, role, stack, env, and roles.<r>.instances, "
        ".ready and .count for the role itself and the roles it `uses`")
