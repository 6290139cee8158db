"""The API's parameter types and error responses, defined once and reused by every route, so
that the OpenAPI states each constraint a handler enforces (a refusal of a request the schema
allows is a bug in the schema) and each error an operation can answer."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from rackfire.api.limits import size_text
from rackfire.model.hostsfile import HOST_NAME, LABEL_KEY, LABEL_VALUE
from rackfire.model.stack import MAX_COUNT, NAME_PATTERN

# The stack/role/image name rule of the stack files (model/stack.py), unanchored so that it
# composes into the instance patterns below.
_NAME = f"(?:{NAME_PATTERN.replace('^', '').replace('$', '')})"
_INDEX = f"[0-9]{{1,{len(str(MAX_COUNT - 1))}}}"  # 0 .. MAX_COUNT - 1 (a power of ten)
INSTANCE_ID_PATTERN = rf"^{_NAME}\.{_NAME}\.{_INDEX}$"
# What Target.parse takes as one instance: STACK/ROLE/INDEX, STACK/ROLE-INDEX or the id.
INSTANCE_PATTERN = rf"^{_NAME}(?:/{_NAME}/{_INDEX}|/{_NAME}-{_INDEX}|\.{_NAME}\.{_INDEX})$"
# A stack, a role of it or one instance, as the CLI names them: STACK[/ROLE[/INDEX]].
TARGET_PATTERN = rf"^{_NAME}(?:/{_NAME}(?:/{_INDEX})?)?$"
DIGEST_PATTERN = r"^[0-9a-f]{64}$"
MAX_INDEX = MAX_COUNT - 1
DB_INT = (1 << 63) - 1  # the store's integers (an event id)

_NAME_DOC = "1 to 32 lowercase letters, digits and '-', starting with a letter"

# Path parameters.
StackPath = Annotated[str, Path(pattern=NAME_PATTERN, description=f"a stack: {_NAME_DOC}")]
RolePath = Annotated[str, Path(pattern=NAME_PATTERN, description=f"a role: {_NAME_DOC}")]
ImagePath = Annotated[str, Path(pattern=NAME_PATTERN, description=f"an image: {_NAME_DOC}")]
HostPath = Annotated[str, Path(pattern=HOST_NAME.pattern, max_length=63,
                               description="a host: lowercase letters, digits and '-'")]
InstanceIdPath = Annotated[str, Path(pattern=INSTANCE_ID_PATTERN,
                                     description="STACK.ROLE.INDEX, e.g. shop.web.0")]
DigestPath = Annotated[str, Path(pattern=DIGEST_PATTERN, description="64 lowercase hex digits")]

# Query parameters.
StackQuery = Annotated[str, Query(pattern=NAME_PATTERN, description="a stack")]
OptStackQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this stack")]
OptRoleQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this role")]
OptIndexQuery = Annotated[int | None, Query(ge=0, le=MAX_INDEX,
                                            description="only this instance of the role")]

# Body fields.
Name = Annotated[str, Field(pattern=NAME_PATTERN, description=_NAME_DOC)]
HostName = Annotated[str, Field(pattern=HOST_NAME.pattern, max_length=63)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
TargetField = Annotated[str, Field(pattern=TARGET_PATTERN,
                                   description="STACK, STACK/ROLE or STACK/ROLE/INDEX")]
Digest = Annotated[str, Field(pattern=DIGEST_PATTERN)]
Labels = Annotated[dict[Annotated[str, Field(pattern=LABEL_KEY.pattern)],
                        Annotated[str, Field(pattern=LABEL_VALUE.pattern)]],
                   Field(json_schema_extra={"additionalProperties": False})]


def _integral(value: object) -> object:
    # JSON's 1.0 is the integer 1 to a JSON Schema, so it is to this API too.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integral = BeforeValidator(_integral)


def size_schema(minimum: int) -> WithJsonSchema:
    """A size at least `minimum` bytes: what the schema promises is accepted (the server
    takes more spellings, e.g. 1.5GiB, and refuses a size under the minimum)."""
    return WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": minimum, "maximum": 1 << 62},
        {"type": "string", "pattern": r"^(?:[1-9][0-9]{2,6}[Mm]|[1-9][0-9]{0,5}[GgTt])(?:i?[Bb])?$",
         "description": "100M to 9999999M, or 1G to 999999T"}]})


class Operation(StrEnum):
    STOP = "stop"
    START = "start"
    RESTART = "restart"


class Problem(BaseModel):
    """One problem of a stack file (errors.SpecProblem)."""

    file: str
    line: int
    column: int
    field: str = Field(description="the field's path, e.g. roles.web.count; '' for the file")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: refused, not_found, conflict, ...")
    message: str
    hint: str = ""
    problems: list[Problem] = Field(
        [], description="invalid_spec only: every problem of the file, all at once")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {code, message, hint}}`."""

    error: ErrorDetail


_MEANING = {
    400: "refused before anything changed (the request cannot be carried out as it is)",
    401: "missing or wrong credential",
    404: "a stack, role, instance, image or host named in the request does not exist",
    409: "conflicts with the current state (changed meanwhile, exists already, in use)",
    413: "the request body is larger than this operation takes",
    422: "invalid request (parameters or body), or an invalid stack file",
    500: "an action failed while running (the next reconcile repairs what it can)",
    503: "a joined host's agent could not be reached",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, with the error body."""
    return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in statuses}


BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


def binary_body() -> dict[str, Any]:
    """The OpenAPI of a route that reads its body itself, as a stream (of any media type:
    the content is checked, not the header)."""
    return {"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": BINARY}}}}


def text_stream(description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the 200 of a route that streams text (a log) as it comes."""
    return {200: {"description": description,
                  "content": {"text/plain": {"schema": {"type": "string"}}}}}


def add_common_errors(schema: dict[str, Any], public: set[str], limits: dict[str, int]) -> None:
    """Document in the OpenAPI what the middleware and the exception handlers answer for
    every route: 401 (the token; not for public paths), 413 (a body over its limit) and 422
    in the one error shape (FastAPI documents its own shape)."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            added = [422] if "422" in responses else []
            if path not in public:
                added.append(401)
            if "requestBody" in op:
                added.append(413)
                op["requestBody"].setdefault(
                    "description", f"at most {size_text(limits_for(path, limits))}")
            for s in added:
                responses[str(s)] = {"description": _MEANING[s],
                                     "content": {"application/json": {"schema": ref}}}
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def limits_for(path: str, limits: dict[str, int]) -> int:
    """The body limit of a path: the upload routes' own, else the JSON one (key "")."""
    for suffix, limit in limits.items():
        if suffix and path.endswith(suffix):
            return limit
    return limits[""]
