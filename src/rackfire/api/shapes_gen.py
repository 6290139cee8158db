"""Write api/shapes.py from api/answers.py: `python -m rackfire.api.shapes_gen` (`--check`
only says whether the file is up to date; tests/unit/test_client_shapes.py checks it too).

Each answer model becomes a TypedDict of the JSON the client receives, field for field and
in the same order: a nested model is its shape, an enum the Literal of its values (under
the enum's name), a number that may be whole (`Number`, `Seconds`) `int | float`, a
RootModel an alias of what its root is. A field type with no JSON counterpart here stops
the generator, so a new kind of field is a decision, not a silent `Any`.

Only this generator imports pydantic for the shapes: the CLI imports api/shapes.py (stdlib
typing, under TYPE_CHECKING), never this module or api/answers.py.
"""

from __future__ import annotations

import inspect
import json
import keyword
import sys
import textwrap
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, RootModel

from rackfire.api import answers

SHAPES = Path(__file__).with_name("shapes.py")
COMMAND = "python -m rackfire.api.shapes_gen"
WIDTH = 100  # ruff's line-length

HEADER = f'''"""The JSON of the API's answers as TypedDicts: what api/client.py's methods return.

GENERATED from api/answers.py by `{COMMAND}`: do not edit
(tests/unit/test_client_shapes.py checks that it is up to date). One TypedDict per answer
model, `XAnswer` -> `XShape`, with the model's fields in its order; an enum is the Literal of
its values (the JSON carries the value), under the enum's name. Standard typing only, so
that the CLI's types cost it no import (pydantic and fastapi are the server's).
"""

from __future__ import annotations

'''


def shape_name(model: type[BaseModel]) -> str:
    return model.__name__.removesuffix("Answer") + "Shape"


def models() -> list[type[BaseModel]]:
    """The answer models, in the order api/answers.py defines them."""
    # pydantic keeps each parametrized `RootModel[...]` in the module too, by that name.
    return [v for k, v in vars(answers).items()
            if inspect.isclass(v) and issubclass(v, BaseModel)
            and v.__module__ == answers.__name__ and k.isidentifier()]


class _Renderer:
    def __init__(self) -> None:
        self.enums: dict[str, type[Enum]] = {}
        self.typing: set[str] = {"TypedDict"}

    def of(self, t: Any, where: str) -> str:
        origin, args = typing.get_origin(t), typing.get_args(t)
        if origin is Annotated:
            return self.of(args[0], where)
        if t is type(None):
            return "None"
        if t is Any:
            self.typing.add("Any")
            return "Any"
        if origin in (Union, types.UnionType):
            return " | ".join(dict.fromkeys(self.of(a, where) for a in args))
        if origin is list:
            return f"list[{self.of(args[0], where)}]"
        if origin is dict:
            return f"dict[{self.of(args[0], where)}, {self.of(args[1], where)}]"
        if inspect.isclass(t) and issubclass(t, Enum):
            if self.enums.setdefault(t.__name__, t) is not t:
                raise TypeError(f"{where}: two enums named {t.__name__}")
            return t.__name__
        if inspect.isclass(t) and issubclass(t, BaseModel) and t in models():
            return shape_name(t)
        if t in (str, int, float, bool):
            return str(t.__name__)
        raise TypeError(f"{where}: no JSON shape for {t!r}; teach {__name__} what the client "
                        "receives for it")

    def model(self, model: type[BaseModel]) -> list[str]:
        name = shape_name(model)
        doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
        if issubclass(model, RootModel):
            self.typing.add("TypeAlias")
            root = self.of(model.model_fields["root"].annotation, model.__name__)
            return [*(f"# {line}".rstrip() for line in doc.splitlines()),
                    f"{name}: TypeAlias = {root}"]
        lines = [f"class {name}(TypedDict):"]
        if doc:
            lines += [*textwrap.indent(f'"""{doc}"""', "    ").splitlines(), ""]
        for field, info in model.model_fields.items():
            if info.exclude:  # never in the JSON
                continue
            key = info.serialization_alias or info.alias or field
            if not key.isidentifier() or keyword.iskeyword(key):
                raise TypeError(f"{model.__name__}.{field}: {key!r} cannot be a TypedDict "
                                "key in class syntax")
            line = f"    {key}: {self.of(info.annotation, f'{model.__name__}.{field}')}"
            note = " ".join((info.description or "").split())
            if note and len(f"{line}  # {note}") <= WIDTH:
                line += f"  # {note}"
            elif note:
                lines += textwrap.wrap(note, WIDTH, initial_indent="    # ",
                                       subsequent_indent="    # ")
            lines.append(line)
        return lines

    def enum(self, name: str, enum: type[Enum]) -> list[str]:
        self.typing.add("Literal")
        self.typing.add("TypeAlias")
        values = ", ".join(json.dumps(m.value) for m in enum)
        head = f"{name}: TypeAlias = Literal["
        if len(head) + len(values) + 1 <= WIDTH:
            return [f"{head}{values}]"]
        body = textwrap.wrap(values, WIDTH - 1, initial_indent="    ",  # 1: the "]"
                             subsequent_indent="    ", break_long_words=False,
                             break_on_hyphens=False)
        return [head, *body[:-1], body[-1] + "]"] if body else [head + "]"]


def render() -> str:
    """The text of api/shapes.py, as the answer models are now."""
    r = _Renderer()
    blocks = [r.model(m) for m in models()]
    enums = [r.enum(n, e) for n, e in sorted(r.enums.items())]
    assert not set(r.enums) & {shape_name(m) for m in models()}
    text = HEADER + f"from typing import {', '.join(sorted(r.typing))}\n\n"
    text += "# The enums of the answers, as the JSON carries them: their values.\n"
    text += "\n".join("\n".join(e) for e in enums) + "\n"
    return text + "".join("\n\n" + "\n".join(b) + "\n" for b in blocks)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--check"]):
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    text = render()
    current = SHAPES.read_text() if SHAPES.exists() else ""
    if argv == ["--check"]:
        if current != text:
            print(f"{SHAPES} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        SHAPES.write_text(text)
        print(f"wrote {SHAPES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
