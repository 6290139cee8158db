"""Ranking the hosts that passed every check: a score per host, compared by the role's
strategy; equal scores go to the host whose name sorts first."""

from __future__ import annotations

from dataclasses import dataclass

from rackfire.model.host import Host, Reservation
from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask, Strategy, role_of
from rackfire.schedule.feasibility import Ledger


@dataclass(frozen=True, slots=True)
class Score:
    strategy: Strategy
    role_on_host: int  # instances of the same role already on the host
    role_on_rack: int  # ... on the host's rack (the host alone when it has no rack)
    rack: str | None
    free: float  # mean share of cpu, memory and disk left free after placing: 0..1

    def rank(self) -> tuple[float, ...]:
        """Lower is better."""
        if self.strategy is Strategy.BINPACK:
            return (self.free,)
        return (self.role_on_host, self.role_on_rack, -self.free)


@dataclass(frozen=True, slots=True)
class Candidate:
    host: str
    score: Score


def score(host: Host, key: InstanceKey, ask: Ask, ledger: Ledger) -> Score:
    role = role_of(key)
    return Score(ask.strategy, ledger.count_on_host(host.name, role),
                 ledger.count_on_rack(host.name, role), host.rack,
                 free_after(ledger, host.name, ask.need))


def free_after(ledger: Ledger, host: str, need: Reservation) -> float:
    """The mean share of cpu, memory and disk left on `host` once `need` is placed there."""
    total, used = ledger.total(host), ledger.used(host)
    # Scalar arithmetic, not Reservation sums: the index calls this a million times a run.
    shares = [((t - u) - n) / t for t, u, n in ((total.cpus, used.cpus, need.cpus),
                                                (total.memory, used.memory, need.memory),
                                                (total.disk, used.disk, need.disk)) if t > 0]
    # Rounded so that equal hosts score exactly equal whatever the float noise.
    return round(sum(shares) / len(shares), 9) if shares else 0.0


def ranked(candidates: list[Candidate]) -> tuple[Candidate, ...]:
    """Best first; the host name breaks ties, so the order hosts came in never matters."""
    return tuple(sorted(candidates, key=lambda c: (c.score.rank(), c.host)))
