"""A placement as text lines, for `rackfire plan --explain`: per instance the chosen host and
its score, then every other host, ranked lower (on which criterion) or rejected (why)."""

from __future__ import annotations

from rackfire.schedule.ask import Strategy
from rackfire.schedule.feasibility import Rejection
from rackfire.schedule.placement import Decision, Placement
from rackfire.schedule.ranking import Candidate, Score


def explain(placement: Placement) -> list[str]:
    lines: list[str] = []
    for d in placement.decisions:
        lines.extend(explain_decision(d))
    return lines


def explain_decision(d: Decision) -> list[str]:
    if d.kept:
        return [f"{d.key} stays on {d.host}"]
    if not d.ranked:
        was = f"; it was on {d.previous} ({_reasons(d.left)})" if d.previous else ""
        head = f"{d.key} not placed: no host can take it{was}"
        return [head, *_rejected(d.rejected)] if d.rejected else [head + " (no hosts)"]
    best = d.ranked[0]
    moved = f", moved from {d.previous} ({_reasons(d.left)})" if d.previous else ""
    lines = [f"{d.key} -> {best.host}{moved} ({show_score(best.score, d.key.role)})"]
    for place, c in enumerate(d.ranked[1:], start=2):
        lines.append(f"  {c.host}: ranked {place}: {_lower(c, best, d.key.role)}")
    return lines + _rejected(d.rejected)


def show_score(s: Score, role: str) -> str:
    if s.strategy is Strategy.BINPACK:
        return f"binpack: {_pct(s.free)} free after"
    rack = f"{s.role_on_rack} on rack {s.rack}" if s.rack else "no rack"
    return f"spread: {s.role_on_host} {role} on host, {rack}, {_pct(s.free)} free after"


def _lower(c: Candidate, best: Candidate, role: str) -> str:
    """The first criterion on which `c` lost to `best`."""
    s, b = c.score, best.score
    if s.strategy is Strategy.BINPACK:
        if s.free != b.free:
            return f"{_pct(s.free)} free after (vs {_pct(b.free)}): a looser fit"
    elif s.role_on_host != b.role_on_host:
        return f"{s.role_on_host} {role} on host (vs {b.role_on_host})"
    elif s.role_on_rack != b.role_on_rack:
        return f"{s.role_on_rack} {role} on rack {s.rack or '(none)'} (vs {b.role_on_rack})"
    elif s.free != b.free:
        return f"{_pct(s.free)} free after (vs {_pct(b.free)})"
    return f"same score; {best.host} sorts first"


def _rejected(rejections: tuple[Rejection, ...]) -> list[str]:
    by_host: dict[str, list[Rejection]] = {}
    for r in rejections:
        by_host.setdefault(r.host, []).append(r)
    return [f"  {h}: rejected: {_reasons(rs)}" for h, rs in by_host.items()]


def _reasons(rejections: tuple[Rejection, ...] | list[Rejection]) -> str:
    return "; ".join(str(r) for r in rejections)


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"
