"""Crash points: the server dies at the k-th one it reaches (after a store transaction that
wrote, before and after each mutating call to the host) and does nothing after it, as a
killed process would. Between two writes of the journal there is always one."""

from __future__ import annotations

import threading


class Crash(BaseException):
    """The server died here. A BaseException, so no `except Exception` of the code under
    test takes it for a failed action and carries on."""


class Crasher:
    """Disarmed with `at=None`. Once it fired, every later point raises too: the threads of
    a dead server (a batch's other actions already submitted) do nothing more."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.count = 0
        self.where = ""  # the point it fired at
        self._lock = threading.Lock()

    @property
    def fired(self) -> bool:
        return bool(self.where)

    def check(self) -> None:
        """Not a point: only a dead server stops here."""
        with self._lock:
            if self.where:
                raise Crash(f"dead since {self.where}")

    def point(self, where: str) -> None:
        with self._lock:
            if self.at is None:
                return
            if self.where:
                raise Crash(f"dead since {self.where}")
            self.count += 1
            if self.count >= self.at:
                self.where = f"#{self.count} {where}"
                raise Crash(self.where)
