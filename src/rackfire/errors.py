"""The one exception tree of rackfire.

    RackfireError                 code, http status, CLI exit code
    ├── SpecError                 a stack file is wrong: file, line, column, field path
    ├── PrereqError               a request was refused before anything changed
    │   ├── NotFound
    │   ├── Conflict              e.g. the stack changed since the plan was made
    │   │   └── StaleEpoch        a call meant for a host's earlier incarnation
    │   ├── TooLarge              a request body over its limit
    │   └── Unauthorized          a wrong credential (a host's, a join token)
    ├── ExecError                 an action failed while running (something may have changed;
    │                             the next reconcile repairs it)
    └── AgentOffline              the agent could not be reached (offline is not failed)
"""

from __future__ import annotations

from dataclasses import dataclass


class RackfireError(Exception):
    code = "error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """One problem in a stack file, located as precisely as the YAML allows."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"


class SpecError(RackfireError):
    code = "invalid_spec"
    http_status = 422

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["problems"] = [
            {"file": p.file, "line": p.line, "column": p.column, "field": p.field,
             "message": p.message}
            for p in self.problems
        ]
        return d


class PrereqError(RackfireError):
    code = "refused"
    http_status = 400


class NotFound(PrereqError):
    code = "not_found"
    http_status = 404


class Conflict(PrereqError):
    code = "conflict"
    http_status = 409


class StaleEpoch(Conflict):
    """A mutating call stamped with an epoch older than the host's: it was meant for an
    incarnation of the host that the controller has since given up on (fenced)."""

    code = "stale_epoch"


class StaleIncarnation(Conflict):
    """A create or restart of an older run of an instance than one the host was told of:
    the instance was placed again since (on another host, or here anew)."""

    code = "stale_incarnation"


class TooLarge(PrereqError):
    code = "too_large"
    http_status = 413


class Unauthorized(PrereqError):
    code = "unauthorized"
    http_status = 401


class ExecError(RackfireError):
    code = "exec_failed"
    http_status = 500


class AgentOffline(RackfireError):
    code = "agent_offline"
    http_status = 503
