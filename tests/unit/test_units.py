from __future__ import annotations

import pytest

from rackfire.model.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("256M", 256 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20), ("1.5G", 3 << 29),
    ("100MB", 100_000_000), ("512k", 512 << 10), (1024, 1024), ("10", 10),
])
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), (3, 3.0), ("0.25", 0.25),
])
def test_durations(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["12Q", "", "M", "-1G"])
def test_bad_sizes_say_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration("2 weeks")


def test_format_size() -> None:
    assert format_size(256 << 20) == "256M" and format_size(1000) == "1000B"
