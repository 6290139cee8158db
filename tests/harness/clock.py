"""A clock that moves only when the test moves it, in `time.time()`'s seconds.

It starts a day ahead of the wall clock. A few places still read the wall clock themselves
(the store's `checked` and event times, the health monitor's grace): ahead of every time
they write, the fake clock sees those as past, the same way on every run (a probe is always
due at a tick; a starting instance is never past its grace by the wall clock), so a test
does not depend on how fast the machine runs it.
"""

from __future__ import annotations

import time

AHEAD = 86_400.0


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() + AHEAD if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self.now += seconds

    def to(self, when: float) -> None:
        """On to `when`, if that is later."""
        self.now = max(self.now, when)
