"""Finding the best host for one instance, two ways that always agree: ask every host (to
explain the choice), or keep an index of the hosts in rank order (to place 100,000
instances on 5,000 hosts in seconds rather than hours)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
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
    """Per kind of instance (role and ask), the hosts that pass the checks that never change
    within one run (state, runtime, labels), in heaps ordered by rank.

    Within one run the ledger only grows, so a host that stops fitting never fits again (it
    is dropped), and a spread rank only gets worse (fewer free, more of the role): a heap
    entry is a lower bound, re-ranked when it reaches the top. Spread ranks the rack before
    the host's free share, so its heap holds racks, each with a heap of its hosts: one
    placement re-ranks one rack, not every host of it. A binpack rank only gets better,
    and only on the host that took an instance: that host is pushed again with its new rank
    into every binpack heap. Either way the top entry whose rank is still exact is the
    best host, the same one `Exhaustive` ranks first (ties go to the name)."""

    def __init__(self, hosts: Mapping[str, Host], ledger: Ledger) -> None:
        self.hosts, self.ledger = hosts, ledger
        # Bin-pack: hosts by rank, and which hosts the heap may hold at all.
        self.binpacks: dict[tuple[RoleRef, Ask], tuple[list[Rank], set[str]]] = {}
        # Spread: racks by the rank of their best host, and each rack's hosts.
        self.spreads: dict[tuple[RoleRef, Ask], tuple[list[Rank], dict[str, list[Rank]]]] = {}
        # Why nothing fits, per kind, and how many instances were placed when it was asked:
        # thousands that fit nowhere must not each check every host again.
        self.refused: dict[tuple[RoleRef, Ask], tuple[int, Found]] = {}
        self.added = 0

    def place(self, key: InstanceKey, ask: Ask) -> Found:
        role = role_of(key)
        if ask.strategy is Strategy.BINPACK:
            chosen = self._top(self._binpack(role, ask), role, ask, self._binpack_rank)
        else:
            chosen = self._top_rack(role, ask)
        if chosen is None:  # nothing fits: say why for every host, once per ledger state
            seen = self.refused.get((role, ask))
            if seen is None or seen[0] != self.added:
                found = Exhaustive(self.hosts, self.ledger).find(key, ask, sorted(self.hosts))
                seen = self.refused[role, ask] = (self.added, found)
            return seen[1]
        best = Candidate(chosen, score(self.hosts[chosen], key, ask, self.ledger))
        self.ledger.add(key, chosen, ask.need)
        self.added += 1
        for (r, a), (h, members) in self.binpacks.items():
            if chosen in members and self._fits(chosen, r, a):
                heapq.heappush(h, self._binpack_rank(chosen, r, a))
        return (best,), ()

    def _eligible(self, role: RoleRef, ask: Ask) -> list[str]:
        probe = InstanceKey(role[0], role[1], 0)
        return [name for name, host in self.hosts.items()
                if not _static(check(host, probe, ask, self.ledger))
                and self._fits(name, role, ask)]

    def _binpack(self, role: RoleRef, ask: Ask) -> list[Rank]:
        found = self.binpacks.get((role, ask))
        if found is None:
            names = self._eligible(role, ask)
            heap = [self._binpack_rank(n, role, ask) for n in names]
            heapq.heapify(heap)
            found = self.binpacks[role, ask] = (heap, set(names))
        return found[0]

    def _top_rack(self, role: RoleRef, ask: Ask) -> str | None:
        found = self.spreads.get((role, ask))
        if found is None:
            racks: dict[str, list[Rank]] = {}
            for name in self._eligible(role, ask):
                rack = self.hosts[name].rack
                # A host with no rack is a rack of its own (NUL: no label value has one).
                racks.setdefault("\0" + name if rack is None else rack, []).append(
                    self._host_rank(name, role, ask))
            for heap in racks.values():
                heapq.heapify(heap)
            # (-1, rack): below any real rank, so each rack is ranked when it first comes up.
            found = self.spreads[role, ask] = ([(-1, rack) for rack in racks], racks)
            heapq.heapify(found[0])
        outer, racks = found
        while outer:
            stored = outer[0]
            rack = str(stored[-1])
            heap = racks[rack]
            best = self._top(heap, role, ask, self._host_rank)
            if best is None:
                heapq.heappop(outer)
                continue
            on_host, free = heap[0][0], heap[0][1]  # exact: _top just checked it
            now = (on_host, self.ledger.count_on_rack(best, role), free, best, rack)
            if now == stored:
                return best
            heapq.heapreplace(outer, now)  # worse than it was (or first seen)
        return None

    def _top(self, heap: list[Rank], role: RoleRef, ask: Ask,
             rank: Callable[[str, RoleRef, Ask], Rank]) -> str | None:
        while heap:
            stored = heap[0]
            name = str(stored[-1])
            if not self._fits(name, role, ask):
                heapq.heappop(heap)
                continue
            now = rank(name, role, ask)
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
        # A host without the label never gets here: its rejection is static (`_eligible`).
        # One whose rack (site) holds the role stays out for the run: the ledger only grows.
        if ask.spread is not None and self.ledger.in_domain(name, role, ask.spread):
            return False
        total, used, need = self.ledger.total(name), self.ledger.used(name), ask.need
        return (need.cpus <= (total.cpus - used.cpus) + CPU_SLACK
                and need.memory <= total.memory - used.memory
                and need.disk <= total.disk - used.disk)

    def _binpack_rank(self, name: str, role: RoleRef, ask: Ask) -> Rank:
        return (free_after(self.ledger, name, ask.need), name)

    def _host_rank(self, name: str, role: RoleRef, ask: Ask) -> Rank:
        """Spread within one rack, where every host has the same count on the rack."""
        return (self.ledger.count_on_host(name, role), -free_after(self.ledger, name, ask.need),
                name)


_DYNAMIC = frozenset({Check.DISTINCT, Check.SPREAD, Check.CPU, Check.MEMORY, Check.DISK})


def _static(rejections: tuple[Rejection, ...]) -> bool:
    """Whether a host failed a check that no placement in this run can change."""
    return any(r.check not in _DYNAMIC for r in rejections)
