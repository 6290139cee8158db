"""A work queue of keys, as controller-runtime has it: adding a key already queued is a no-op,
a key is never worked on by two workers at once, and a key added while being worked on is
worked on again afterwards. A key whose work failed comes back after a backoff of its own
(1 s, 2 s, 4 s ... a minute), which the periodic resync respects and an event (a new desired
state, a health change) does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0


class WorkQueue:
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queued: dict[str, float] = {}  # key -> not before (monotonic)
        self._busy: set[str] = set()
        self._failures: dict[str, int] = {}  # key -> failed passes in a row
        self._backoff: dict[str, float] = {}  # key -> the periodic resync waits until then
        self._closed = False

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cv:
            when = time.monotonic() + delay
            self._queued[key] = min(self._queued.get(key, when), when)
            self._cv.notify_all()

    def add_periodic(self, key: str) -> None:
        """The resync's look: not while the key backs off after failures."""
        with self._cv:
            until = self._backoff.get(key, 0.0)
        self.add(key, delay=max(0.0, until - time.monotonic()))

    def retry(self, key: str, first: float = BACKOFF_BASE) -> float:
        """The key's pass failed: again after its backoff, `first`, then doubling up to a
        minute. The delay."""
        with self._cv:
            n = self._failures[key] = self._failures.get(key, 0) + 1
            delay: float = min(BACKOFF_MAX, first * 2.0 ** (n - 1))
            self._backoff[key] = time.monotonic() + delay
        self.add(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key's pass went through: its backoff starts over."""
        with self._cv:
            self._failures.pop(key, None)
            self._backoff.pop(key, None)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _take(self) -> str | None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                ready = [k for k, t in self._queued.items() if t <= now and k not in self._busy]
                if ready:
                    key = min(ready, key=lambda k: self._queued[k])
                    del self._queued[key]
                    self._busy.add(key)
                    return key
                later = [t for k, t in self._queued.items() if k not in self._busy]
                self._cv.wait(timeout=max(0.01, min(later) - now) if later else None)
            return None

    def _done(self, key: str) -> None:
        with self._cv:
            self._busy.discard(key)
            self._cv.notify_all()

    def run_worker(self, handle: Callable[[str], None]) -> None:
        while (key := self._take()) is not None:
            try:
                handle(key)
            finally:
                self._done(key)
