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

This module compiles and renders, and says what a template sees. The limits, the budget and
what each operation costs are in `template_budget.py`; the sandbox that charges them, and
refuses the tags that read other templates, in `template_sandbox.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateNotFound, nodes
from jinja2.meta import find_undeclared_variables

from rackfire.model.template_budget import (
    BUDGET,
    MAX_STEPS,
    Budget,
    MiB,
    OverLimit,
    Steps,
)
from rackfire.model.template_sandbox import ENV, Instrument, forbidden_message, forbidden_tag
from rackfire.model.units import format_size

MAX_FILE_BYTES = MiB
MAX_INSTANCE_BYTES = 16 * MiB


class RenderError(Exception):
    """A template failed or passed a limit; `line` is the template's own line, if known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f" (template line {self.line})" if self.line and self.line > 1 else ""
        return f"{self.message}{where}"


def instance_limit(disk: int | None) -> int:
    """The most an instance's rendered files may take: a quarter of its disk, 16 MiB at most."""
    return MAX_INSTANCE_BYTES if disk is None else min(MAX_INSTANCE_BYTES, disk // 4)


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
        tree = ENV.parse(text)
        forbidden = forbidden_tag(tree)
        if forbidden is not None:
            raise RenderError(forbidden_message(forbidden[0]), forbidden[1])
        reads_instance = "instance" in find_undeclared_variables(tree)
        Instrument().visit(tree)
        return ENV.from_string(tree), reads_instance
    except RenderError:
        raise
    except Exception as e:  # a template's failure, whatever it is
        raise _render_error(e) from None


def render(template: Template, context: Mapping[str, Any], limit: int, too_big: str,
           steps: Steps | None = None) -> str:
    """Render under the budget (`MAX_STEPS`, and what is left of `steps`), streaming: past
    `limit` bytes, stop with `too_big`."""
    if steps is not None and steps.left < MAX_STEPS:
        budget = Budget(steps.left, f"the stack's templates take more than {steps.total:,} "
                        "loop steps and calls for all its instances")
    else:
        budget = Budget(MAX_STEPS, f"more than {MAX_STEPS:,} loop steps and calls")
    start = budget.steps
    token = BUDGET.set(budget)
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
            ENV.handle_exception()  # raises it again, its frames at the template's lines
        out = "".join(parts)
        if not out.isascii() and len(out.encode()) > limit:
            raise RenderError(too_big)
        return out
    except RenderError:
        raise
    except Exception as e:  # a template's failure, whatever it is
        raise _render_error(e) from None
    finally:
        BUDGET.reset(token)
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
    if isinstance(e, OverLimit):
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


def ready_reads(text: str, role: str) -> dict[str, int]:
    """The roles whose `.ready` the template of `role` names (`roles.db.ready`,
    `roles['db'].ready`; `roles[role.name].ready` is `role`'s), each with the first line that
    does, wherever it is (a branch not taken too). A read through another name (`{% set r =
    roles.db %}{{ r.ready }}`) is not seen here. Raises RenderError."""
    try:
        tree = ENV.parse(text)
    except Exception as e:  # a template's failure, whatever it is
        raise _render_error(e) from None
    found: dict[str, int] = {}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)  # (what find_all is typed as)
        owner = _named_role(node.node, role) if _key(node) == "ready" else None
        if owner is not None and node.lineno < found.get(owner, node.lineno + 1):
            found[owner] = node.lineno
    return found


def _key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    """`x.key` or `x['key']`."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    arg = node.arg
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None


def _named_role(node: nodes.Node, role: str) -> str | None:
    """The role `roles.<r>`, `roles['r']` or `roles[role.name]` names."""
    if not isinstance(node, nodes.Getattr | nodes.Getitem) or not (
            isinstance(node.node, nodes.Name) and node.node.name == "roles"):
        return None
    arg = getattr(node, "arg", None)
    if isinstance(arg, nodes.Getattr) and arg.attr == "name" and \
            isinstance(arg.node, nodes.Name) and arg.node.name == "role":
        return role
    return _key(node)


def peer(name: str, ip: str, index: int) -> dict[str, Any]:
    return {"name": name, "ip": ip, "index": index}


def role_view(instances: list[dict[str, Any]], ready: list[dict[str, Any]],
              primary: dict[str, Any] | None = None, term: int = 0) -> dict[str, Any]:
    """`primary` (and its `term`): a primary role's primary instance, else None."""
    return {"instances": instances, "count": len(instances), "ready": ready,
            "primary": primary, "term": term}


def context(*, stack: str, role: str, count: int, env: Mapping[str, str], name: str, ip: str,
            index: int, instance_id: str, roles: Mapping[str, Any],
            primary: bool = False) -> dict[str, Any]:
    """What a template sees; `roles` is the role itself and those it `uses`, by role_view."""
    return {
        "instance": {"name": name, "ip": ip, "index": index, "id": instance_id, "role": role,
                     "primary": primary},
        "role": {"name": role, "count": count},
        "stack": {"name": stack},
        "roles": roles,
        "env": dict(env),
    }


HINT = ("templates see instance.{name,ip,index,primary}, role, stack, env, and "
        "roles.<r>.instances, .ready, .count, .primary and .term for the role itself and the "
        "roles it `uses`")
