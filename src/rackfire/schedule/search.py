"""Finding the best host for one instance, two ways that always agree: ask every host (to
explain the choice), or keep an index of the hosts in rank order (to place 100,000
instances on 5,000 hosts in seconds rather than hours)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Protocol

from rackfire.model.host import CPU_SLACK, Host
from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask, RoleRef, Strategy, role_of
from rackfire.schedule.feasibility import Check, Ledger, Rejection, check
from rackfire.schedule.ranking import Candidate, free_after, ranked, score

Found = tuple[tuple[Candidate, ...], tuple[Rejection, ...]]
"""The hosts that can take the instance, best first, and the other hosts' failed checks."""


class Search(Protocol):
    def place(self, key: InstanceKey, ask: Ask) -> Found:
        """Find the best host for `key` and add it to the ledger there."""


class Exhaustive:
    """Every host checked and scored: hosts x instances of work, with every reason kept."""

    def __init__(self, hosts: Mapping[str, Host], ledger: Ledger) -> None:
        self.hosts, self.ledger = hosts, ledger

    def find(self, key: InstanceKey, ask: Ask, names: Iterable[str]) -> Found:
        rejected: list[Rejection] = []
        fits: list[Candidate] = []
        for name in names:
            why = check(self.hosts[name], key, ask, self.ledger)
            if why:
                rejected.extend(why)
            else:
                fits.append(Candidate(name, score(self.hosts[name], key, ask, self.ledger)))
        return ranked(fits), tuple(rejected)

    def place(self, key: InstanceKey, ask: Ask) -> Found:
        best, rejected = self.find(key, ask, sorted(self.hosts))
        if best:
            self.ledger.add(key, best[0].host, ask.need)
        return best, rejected


Rank = tuple[float | str, ...]  # a host's rank for one kind of instance, its name last


class Indexed:
    """Per kind of instance (role and ask), a heap of the hosts that pass the checks that
    never change within one run (state, runtime, labels), ordered by rank.

    Within one run the ledger only grows, so a host that stops fitting never fits again (it
    is dropped), and a spread rank only gets worse (fewer free, more of the role): a heap
    entry is a lower bound, re-ranked when it reaches the top. A binpack rank only gets
    better, and only on the host that took an instance: that host is pushed again with its
    new rank into every binpack heap. Either way the top entry whose rank is still exact
    is the best host, the same one `Exhaustive` ranks first (ties go to the name)."""

    def __init__(self, hosts: Mapping[str, Host], ledger: Ledger) -> None:
        self.hosts, self.ledger = hosts, ledger
        self.heaps: dict[tuple[RoleRef, Ask], list[Rank]] = {}
        # Why nothing fits, per kind, and how many instances were placed when it was asked:
        # thousands that fit nowhere must not each check every host again.
        self.refused: dict[tuple[RoleRef, Ask], tuple[int, Found]] = {}
        self.added = 0
        # Binpack heaps, with the hosts each may hold.
        self.binpack: list[tuple[RoleRef, Ask, list[Rank], set[str]]] = []

    def place(self, key: InstanceKey, ask: Ask) -> Found:
        role = role_of(key)
        heap = self.heaps.get((role, ask))
        if heap is None:
            heap = self._build(role, ask)
        chosen = self._top(heap, role, ask)
        if chosen is None:  # nothing fits: say why for every host, once per ledger state
            seen = self.refused.get((role, ask))
            if seen is None or seen[0] != self.added:
                found = Exhaustive(self.hosts, self.ledger).find(key, ask, sorted(self.hosts))
                seen = self.refused[role, ask] = (self.added, found)
            return seen[1]
        best = Candidate(chosen, score(self.hosts[chosen], key, ask, self.ledger))
        self.ledger.add(key, chosen, ask.need)
        self.added += 1
        for r, a, h, members in self.binpack:
            if chosen in members and self._fits(chosen, r, a):
                heapq.heappush(h, self._rank(chosen, r, a))
        return (best,), ()

    def _build(self, role: RoleRef, ask: Ask) -> list[Rank]:
        probe = InstanceKey(role[0], role[1], 0)
        heap = [self._rank(name, role, ask) for name, host in self.hosts.items()
                if not _static(check(host, probe, ask, self.ledger))
                and self._fits(name, role, ask)]
        heapq.heapify(heap)
        self.heaps[role, ask] = heap
        if ask.strategy is Strategy.BINPACK:
            self.binpack.append((role, ask, heap, {str(r[-1]) for r in heap}))
        return heap

    def _top(self, heap: list[Rank], role: RoleRef, ask: Ask) -> str | None:
        while heap:
            stored = heap[0]
            name = str(stored[-1])
            if not self._fits(name, role, ask):
                heapq.heappop(heap)
                continue
            now = self._rank(name, role, ask)
            if now == stored:
                return name
            heapq.heappop(heap)
            if now > stored:  # spread: worse than it was; a better binpack entry is queued
                heapq.heappush(heap, now)
        return None

    def _fits(self, name: str, role: RoleRef, ask: Ask) -> bool:
        """The checks that depend on the ledger, exactly as `check` makes them."""
        if ask.distinct_hosts and self.ledger.count_on_host(name, role):
            return False
        total, used, need = self.ledger.total(name), self.ledger.used(name), ask.need
        return (need.cpus <= (total.cpus - used.cpus) + CPU_SLACK
                and need.memory <= total.memory - used.memory
                and need.disk <= total.disk - used.disk)

    def _rank(self, name: str, role: RoleRef, ask: Ask) -> Rank:
        free = free_after(self.ledger, name, ask.need)
        if ask.strategy is Strategy.BINPACK:
            return (free, name)
        return (self.ledger.count_on_host(name, role), self.ledger.count_on_rack(name, role),
                -free, name)


_DYNAMIC = frozenset({Check.DISTINCT, Check.CPU, Check.MEMORY, Check.DISK})


def _static(rejections: tuple[Rejection, ...]) -> bool:
    """Whether a host failed a check that no placement in this run can change."""
    return any(r.check not in _DYNAMIC for r in rejections)
