"""A log-linear latency histogram (as HdrHistogram lays out its buckets), stdlib only.

Values are integer microseconds. 0..255 us are exact; above, each power of two is split in
128 equal buckets, so a bucket is at most 1/128 (0.8%) of its values wide and a percentile,
answered by the bucket's midpoint, is within 0.4% of a recorded value. Values above
MAX_US (60 s) are counted in MAX_US's bucket; `max` and `min` stay exact.

This file is also loaded by path, beside client.py, by a bare `python3 -I -S`: it must
import nothing but the standard library, and nothing of rackfire.

The JSON form is sparse (only non-zero buckets):
    {"unit": "us", "bits": 7, "count": N, "sum": us, "min": us, "max": us,
     "buckets": [[index, count], ...]}          # ascending index
"""

from __future__ import annotations

import math
from typing import Any

BITS = 7  # 2**BITS buckets per power of two
HALF = 1 << BITS  # 128
EXACT = HALF << 1  # below this, a value is its own bucket
MAX_US = 60_000_000


def index_of(us: int) -> int:
    if us < EXACT:
        return us
    shift = us.bit_length() - BITS - 1  # us >> shift is in [HALF, EXACT)
    return EXACT + (shift - 1) * HALF + ((us >> shift) - HALF)


def bounds_of(index: int) -> tuple[int, int]:
    """The lowest and highest value of a bucket."""
    if index < EXACT:
        return index, index
    shift, sub = divmod(index - EXACT, HALF)
    shift += 1
    low = (sub + HALF) << shift
    return low, low + (1 << shift) - 1


MAX_INDEX = index_of(MAX_US)


class Histogram:
    __slots__ = ("buckets", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0
        self.min = 0
        self.max = 0

    def record(self, us: int, n: int = 1) -> None:
        us = max(int(us), 0)
        i = index_of(us) if us < MAX_US else MAX_INDEX
        self.buckets[i] = self.buckets.get(i, 0) + n
        if self.count == 0 or us < self.min:
            self.min = us
        if us > self.max:
            self.max = us
        self.count += n
        self.sum += us * n

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.sum += other.sum

    def percentile(self, p: float) -> int:
        """The value below or at which p percent (0..100) of the recorded values are; 0 if
        there are none."""
        if self.count == 0:
            return 0
        if p >= 100:
            return self.max
        rank = max(1, math.ceil(max(p, 0.0) / 100 * self.count))
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                low, high = bounds_of(i)
                return min(max((low + high) // 2, self.min), self.max)
        return self.max

    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"unit": "us", "bits": BITS, "count": self.count, "sum": self.sum,
                "min": self.min, "max": self.max,
                "buckets": [[i, self.buckets[i]] for i in sorted(self.buckets)]}

    @classmethod
    def from_json(cls, data: Any) -> Histogram:
        """Raises ValueError if `data` is not what to_json gives (of these BITS)."""
        if not isinstance(data, dict) or data.get("bits") != BITS or data.get("unit") != "us":
            raise ValueError("not a histogram of this layout")
        h = cls()
        for key in ("count", "sum", "min", "max"):
            v = data.get(key)
            if not _count(v):
                raise ValueError(f"histogram {key}: not a non-negative integer")
            setattr(h, key, v)
        buckets = data.get("buckets")
        if not isinstance(buckets, list):
            raise ValueError("histogram buckets: not a list")
        for pair in buckets:
            if (not isinstance(pair, list) or len(pair) != 2 or not _count(pair[0])
                    or pair[0] > MAX_INDEX or not _count(pair[1])):
                raise ValueError("histogram bucket: not [index, count]")
            h.buckets[pair[0]] = h.buckets.get(pair[0], 0) + pair[1]
        if sum(h.buckets.values()) != h.count or h.min > h.max:
            raise ValueError("histogram: counts do not add up")
        return h


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
