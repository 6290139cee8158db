"""One report from the load-test clients' results (client.py's JSON, version 1). Pure.

A result that is missing (None), malformed or of another version counts as one error of
kind `no_result`; the others are merged: counts added, latency histograms merged, rates
summed (the clients run side by side, from one start barrier).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rackfire.loadgen.histogram import Histogram

KINDS = ("connect", "timeout", "reset", "http_4xx", "http_5xx", "other")
NO_RESULT = "no_result"


@dataclass(frozen=True, slots=True)
class ClientResult:
    """What merge needs of one client's result, checked."""

    rate: float
    duration: float
    started: float
    finished: float
    issue_window: float
    sent: int
    completed: int
    ok: int
    errors: Mapping[str, int]
    statuses: Mapping[str, int]
    latency: Histogram


@dataclass(frozen=True, slots=True)
class Report:
    clients: int  # results expected (given to merge)
    reporting: int  # of them, valid
    sent: int
    completed: int  # got an HTTP response, any status
    ok: int  # of them, 1xx-3xx
    duration: float  # s, from the first client's start to the last one's finish
    throughput: float  # completed / duration
    intended_rate: float  # req/s, the clients' LOAD_RATE summed
    achieved_rate: float  # req/s the clients sent at, summed
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: Mapping[str, int]  # KINDS and no_result, all present
    statuses: Mapping[str, int]  # "200": n, ascending

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"], d["statuses"] = dict(self.errors), dict(self.statuses)
        return d

    def rows(self) -> list[tuple[str, str]]:
        """(what, value) rows for a two-column table."""
        errors = ", ".join(f"{k} {n}" for k, n in self.errors.items() if n) or "none"
        statuses = ", ".join(f"{k} {n}" for k, n in self.statuses.items()) or "none"
        return [
            ("clients", f"{self.reporting}/{self.clients}"),
            ("rate", f"{self.achieved_rate:.1f}/s achieved of {self.intended_rate:.1f}/s"),
            ("requests", f"{self.sent} sent, {self.completed} answered, {self.ok} ok"),
            ("duration", f"{self.duration:.2f} s"),
            ("throughput", f"{self.throughput:.1f}/s"),
            ("latency", f"p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, "
                        f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"),
            ("errors", errors),
            ("statuses", statuses),
        ]


def decode(raw: str | bytes | None) -> object:
    """A result file's text as merge takes it: None (missing) or JSON; text that is not
    JSON is returned as is, for merge to count as a `no_result`."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def merge(results: Sequence[object]) -> Report:
    """One report of every client's result; a missing or malformed one is a `no_result`."""
    valid = [r for r in map(parse, results) if r is not None]
    errors = dict.fromkeys((*KINDS, NO_RESULT), 0)
    errors[NO_RESULT] = len(results) - len(valid)
    statuses: dict[str, int] = {}
    latency = Histogram()
    for r in valid:
        for k, n in r.errors.items():
            errors[k] = errors.get(k, 0) + n
        for k, n in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + n
        latency.merge(r.latency)
    duration = (max(r.finished for r in valid) - min(r.started for r in valid)
                if valid else 0.0)
    completed = sum(r.completed for r in valid)

    def ms(us: int) -> float:
        return round(us / 1000, 3)

    return Report(
        clients=len(results), reporting=len(valid), sent=sum(r.sent for r in valid),
        completed=completed, ok=sum(r.ok for r in valid), duration=round(duration, 3),
        throughput=round(completed / duration, 2) if duration > 0 else 0.0,
        intended_rate=round(sum(r.rate for r in valid), 2),
        achieved_rate=round(sum(r.sent / max(r.duration, r.issue_window) for r in valid), 2),
        p50_ms=ms(latency.percentile(50)), p95_ms=ms(latency.percentile(95)),
        p99_ms=ms(latency.percentile(99)), max_ms=ms(latency.max),
        errors=errors, statuses=dict(sorted(statuses.items(), key=lambda kv: int(kv[0]))))


def parse(data: object) -> ClientResult | None:
    """The checked result, or None if it is not a version 1 client result."""
    if not isinstance(data, dict) or data.get("version") != 1:
        return None
    try:
        r = ClientResult(
            rate=_real(data, "rate"), duration=_real(data, "duration"),
            started=_real(data, "started"), finished=_real(data, "finished"),
            issue_window=_real(data, "issue_window"), sent=_count(data, "sent"),
            completed=_count(data, "completed"), ok=_count(data, "ok"),
            errors=_counts(data, "errors"), statuses=_counts(data, "statuses"),
            latency=Histogram.from_json(data.get("latency")))
    except ValueError:
        return None
    if (r.duration <= 0 or r.finished < r.started or not r.ok <= r.completed <= r.sent
            or r.latency.count != r.completed or set(r.errors) != set(KINDS)
            or not all(k.isdigit() and len(k) == 3 for k in r.statuses)):
        return None
    return r


def _real(d: dict[Any, Any], key: str) -> float:
    v = d.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(key)
    return float(v)


def _count(d: dict[Any, Any], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(key)
    return v


def _counts(d: dict[Any, Any], key: str) -> dict[str, int]:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ValueError(key)
    return {str(k): _count(v, k) for k in v}
