"""A work queue of keys, as controller-runtime has it: adding a key already queued is a no-op,
a key is never worked on by two workers at once, and a key added while being worked on is
worked on again afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WorkQueue:
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queued: dict[str, float] = {}  # key -> not before (monotonic)
        self._busy: set[str] = set()
        self._closed = False

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cv:
            when = time.monotonic() + delay
            self._queued[key] = min(self._queued.get(key, when), when)
            self._cv.notify_all()

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
