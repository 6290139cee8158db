"""The Jinja sandbox a role's templates run in (`templates.py` says what it bounds and why):
an environment with no templates to load, whose operators, calls, filters and tests charge
the budget of the render in progress (`template_budget.py`), and a pass over each parsed
template that routes loops, `~`, slices, comparisons and what joined bodies write through
it. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, TemplateNotFound, nodes
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, modifies_known_mutable
from jinja2.visitor import NodeTransformer

from rackfire.model.template_budget import (
    BUDGET,
    CALL,
    CALL_COST,
    COPY,
    MAX_INT_BITS,
    SLOW,
    OverLimit,
    at_most,
    charge,
    copied,
    finalize,
    format_estimate,
    held,
    join_estimate,
    measure,
    padding_estimate,
    sized,
    step,
    weigh,
)

_FORBIDDEN_TAGS: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Include, "include"), (nodes.Import, "import"), (nodes.FromImport, "import"),
    (nodes.Extends, "extends"))
_SLOW_FILTERS = frozenset({
    "capitalize", "dictsort", "e", "escape", "float", "forceescape", "groupby", "int", "max",
    "min", "pprint", "sort", "striptags", "sum", "title", "tojson", "unique", "urlencode",
    "urlize", "wordcount", "wordwrap", "xmlattr"})
_COMPARING_TESTS = frozenset({
    "in", "eq", "equalto", "==", "ne", "!=", "lt", "<", "lessthan", "le", "<=", "gt", ">",
    "greaterthan", "ge", ">="})


def forbidden_tag(tree: nodes.Template) -> tuple[str, int] | None:
    """The first `include`/`import`/`extends` of a parsed template and its line."""
    found = [(node.lineno, tag) for cls, tag in _FORBIDDEN_TAGS for node in tree.find_all(cls)]
    if not found:
        return None
    line, tag = min(found)
    return tag, line


def forbidden_message(tag: str) -> str:
    return f"{{% {tag} %}} is not allowed: a file's template cannot read other templates"


class _NoTemplates(BaseLoader):
    def get_source(self, environment: Environment, template: str) -> Any:
        raise TemplateNotFound(template, forbidden_message("include"))


class _Bounded(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        step()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_INT_BITS:
            raise OverLimit(f"{left} ** {right} has more than {MAX_INT_BITS} bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and isinstance(seq, str | list | tuple):
                    at_most(measure(seq) * n, "`*`")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise OverLimit(f"a product of more than {MAX_INT_BITS} bits")
        if operator == "%" and isinstance(left, str):
            at_most(format_estimate(left, right if isinstance(right, tuple) else (right,)),
                    "`%` formatting")
        result = sized(super().call_binop(context, operator, left, right))
        charge(COPY, result)
        return result

    def call(__self, __context: Context, __obj: Any,
             *args: Any, **kwargs: Any) -> Any:
        step(CALL_COST)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "")
        budget = BUDGET.get()
        if budget is not None and budget.weighed and modifies_known_mutable(owner, name):
            budget.weighed.clear()  # `l.append(s)`: what was read of `l` is no longer true
        if isinstance(owner, str):
            if name == "join" and args:
                items = list(args[0])
                at_most(join_estimate(items, owner), "join")
                args = (items, *args[1:])
            else:
                estimate = padding_estimate(name, owner, args, kwargs)
                if estimate is not None:
                    at_most(estimate, name)
        result = sized(super().call(__context, __obj, *args, **kwargs))
        # A method reads its object (`s.count(x)`), a call its arguments; both make `result`.
        if owner is not __self:  # the helpers of Instrument charge for themselves
            charge(CALL, owner, result, *args, *kwargs.values())
        return result


    def rackfire_iterate(self, iterable: Any) -> Iterator[Any]:
        """Each step of a `for` loop costs one step of the budget."""
        for item in iterable:
            step()
            yield item

    def rackfire_concat(self, *parts: Any) -> str:
        """`a ~ b`, checked like `+`."""
        texts = [str(p) for p in parts]
        at_most(sum(len(t) for t in texts), "`~`")
        result = str(sized("".join(texts)))
        charge(COPY, result)
        return result


def _guarded_filter(name: str, fn: Callable[..., Any], env: _Bounded) -> Callable[..., Any]:
    # The filters Jinja passes the environment or context to take it first.
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    slow = name in _SLOW_FILTERS

    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        step()
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
            at_most(join_estimate(items, sep), "join")
            args = (*head[:-1], items, *rest)
        elif name == "format" and isinstance(value, str):
            at_most(format_estimate(value, [*rest, *kwargs.values()]), "format")
        elif isinstance(value, str):
            estimate = padding_estimate(name, value, tuple(rest), kwargs)
            if estimate is not None:
                at_most(estimate, name)
        result = sized(fn(*args, **kwargs))
        charge(SLOW if slow else CALL, value, result)
        return result

    return guarded


def _guarded_test(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for a in (*args, *kwargs.values()):
            weigh(a)
        return fn(*args, **kwargs)

    return guarded


def _environment() -> _Bounded:
    env = _Bounded(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                   loader=_NoTemplates(), finalize=finalize)
    env.globals.pop("lipsum", None)  # lipsum(n=...) writes as many paragraphs as asked
    # A file must render the same at every plan: one that does not is reconfigured forever.
    env.filters.pop("random", None)
    env.filters = {name: _guarded_filter(name, fn, env) for name, fn in env.filters.items()}
    # What Instrument wraps values in: filters, called directly (not through the sandbox's
    # `call`, which costs `CALL_COST` and measures what it returns).
    env.filters.update(rackfire_held=held, rackfire_weigh=weigh, rackfire_copied=copied)
    tests: dict[str, Any] = env.tests  # typed by Jinja as `function`, which is callable
    env.tests = {name: _guarded_test(fn) if name in _COMPARING_TESTS else fn
                 for name, fn in tests.items()}
    return env


ENV = _environment()


class Instrument(NodeTransformer):
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
    node.set_environment(ENV)
    return node


def _helper(name: str, args: list[nodes.Expr], at: nodes.Node) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None)
    call.set_lineno(at.lineno)
    call.set_environment(ENV)
    return call

