"""The latency histogram: bucket precision, percentiles against a sorted list, merge, JSON."""

from __future__ import annotations

import json
import math
import random

import pytest

from rackfire.loadgen.histogram import MAX_US, Histogram, bounds_of, index_of


def exact_percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_buckets_tile_the_range_within_one_percent() -> None:
    prev_high = -1
    for i in range(index_of(MAX_US) + 1):
        low, high = bounds_of(i)
        assert low == prev_high + 1  # no gap, no overlap
        assert index_of(low) == i and index_of(high) == i
        assert (high - low) <= max(low, 1) / 100
        prev_high = high
    assert prev_high >= MAX_US


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_a_sorted_list(seed: int) -> None:
    rng = random.Random(seed)
    # Latency-like: mostly a few ms, a long tail up to seconds, some exact small ones.
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(20_000)]
    values += [rng.randrange(0, 300) for _ in range(500)]
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.count == len(values) and h.max == max(values) and h.min == min(values)
    assert h.sum == sum(values)
    for p in (0, 1, 10, 50, 90, 95, 99, 99.9, 100):
        want, got = exact_percentile(values, p), h.percentile(p)
        assert abs(got - want) <= want * 0.01, (p, want, got)


def test_merge_equals_recording_all() -> None:
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = int(rng.expovariate(1 / 20_000))
        (a if i % 3 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.to_json() == both.to_json()
    empty = Histogram()
    empty.merge(Histogram())
    assert empty.count == 0 and empty.percentile(50) == 0
    empty.merge(both)
    assert empty.to_json() == both.to_json()


def test_over_the_range_is_clamped_but_max_is_exact() -> None:
    h = Histogram()
    h.record(MAX_US * 10)
    h.record(-5)
    assert h.max == MAX_US * 10 and h.min == 0
    assert h.percentile(100) == MAX_US * 10
    assert len(h.buckets) == 2


def test_json_round_trip_is_sparse_and_checked() -> None:
    h = Histogram()
    for v in (1, 1, 500, 1_000_000):
        h.record(v)
    data = json.loads(json.dumps(h.to_json()))
    assert len(data["buckets"]) == 3
    again = Histogram.from_json(data)
    assert again.to_json() == h.to_json()
    assert again.percentile(50) == h.percentile(50)
    for bad in (None, [], {**data, "bits": 5}, {**data, "count": 5},
                {**data, "buckets": [[1, -1]]}, {**data, "buckets": "x"},
                {**data, "min": True}, {**data, "buckets": [[10**9, 4]]}):
        with pytest.raises(ValueError):
            Histogram.from_json(bad)
