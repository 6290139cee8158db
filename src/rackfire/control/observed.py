"""The observed cache: what each host last said of its instances, from its heartbeats and
from the direct asks the fleet makes, with when it was said (`observed_at`).

Facts are only ever replaced by facts that reflect at least as many of the host's finished
mutating calls (`Observed.done`, agent/hostside.py), so a heartbeat that was on its way while
the fleet asked directly cannot put older facts back. `fresh` says whether what is cached
reflects the last call the controller made there: if not, the fleet asks the host itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rackfire.model.agent import Observed
from rackfire.model.instance import InstanceFacts


@dataclass(slots=True)
class _Facts:
    done: int
    facts: list[InstanceFacts]
    at: float


@dataclass(slots=True)
class _Host:
    boot: str
    whole: _Facts | None = None  # its last look at every stack (the others are newer)
    stacks: dict[str, _Facts] = field(default_factory=dict)

    def of(self, stack: str) -> _Facts | None:
        mine = self.stacks.get(stack)
        if self.whole is None or (mine is not None and mine.done >= self.whole.done):
            return mine
        return _Facts(self.whole.done, [f for f in self.whole.facts if f.key.stack == stack],
                      self.whole.at)


class ObservedCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}

    def put(self, host: str, obs: Observed) -> None:
        with self._lock:
            h = self._hosts.get(host)
            if h is None or h.boot != obs.boot:  # new, or its agent restarted: count anew
                h = self._hosts[host] = _Host(obs.boot)
            got = _Facts(obs.done, list(obs.facts), self._clock())
            if obs.stack is None:
                if h.whole is None or obs.done >= h.whole.done:
                    h.whole = got
                    h.stacks = {s: f for s, f in h.stacks.items() if f.done > obs.done}
            else:
                old = h.of(obs.stack)
                if old is None or obs.done >= old.done:
                    h.stacks[obs.stack] = got

    def confirm(self, host: str) -> None:
        """The host says its instances are as it last told: what is kept of them is as of
        now (a host never confirms what it did not tell this cache: it tells all of them
        when the cache has none, `observed_at` None)."""
        with self._lock:
            h = self._hosts.get(host)
            if h is not None and h.whole is not None:
                h.whole.at = self._clock()

    def facts(self, host: str, stack: str | None = None) -> list[InstanceFacts] | None:
        """What `host` said last (of `stack`, or of all); None if it never said."""
        with self._lock:
            h = self._hosts.get(host)
            if h is None:
                return None
            if stack is not None:
                got = h.of(stack)
                return None if got is None else list(got.facts)
            if h.whole is None:
                return None
            stacks = {f.key.stack for f in h.whole.facts} | set(h.stacks)
            return [f for s in sorted(stacks) for f in (h.of(s) or _Facts(0, [], 0)).facts]

    def fresh(self, host: str, stack: str | None, need: tuple[str, int]) -> bool:
        """Whether the cached facts reflect every call that `need` (the host's boot and
        `done` after the controller's last call there) says finished."""
        boot, done = need
        with self._lock:
            h = self._hosts.get(host)
            if h is None or done < 0 or (boot and h.boot != boot):
                return False
            if stack is not None:
                got = h.of(stack)
                return got is not None and got.done >= done
            return h.whole is not None and h.whole.done >= done and all(
                f.done >= done for f in h.stacks.values())

    def observed_at(self, host: str) -> float | None:
        """When `host` last told of all its instances."""
        with self._lock:
            h = self._hosts.get(host)
            return h.whole.at if h is not None and h.whole is not None else None

    def forget(self, host: str) -> None:
        with self._lock:
            self._hosts.pop(host, None)
