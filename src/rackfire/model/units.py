"""Sizes and durations with the usual units. Pure."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: str | int) -> int:
    """Bytes from `512M`, `1G`, `1.5GiB`, `64MiB`, `1024` (bytes).

    Single-letter and `iB` suffixes are binary (as Docker, Kubernetes' Mi and Ganeti do for
    memory); `KB`/`MB`/`GB` are decimal.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; use a number with B, K, M, G or T (e.g. 256M)")
    number, power, binary, byte = m.groups()
    decimal = bool(byte) and not binary and power != ""
    base = 1000 if decimal else 1024
    return int(float(number) * base ** _POWERS[power.lower()])


def parse_duration(value: str | int | float) -> float:
    """Seconds from `2s`, `500ms`, `1m30s`, `1h`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s or 1m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration; use ms, s, m, h or d (e.g. 2s, 1m30s)"
            ) from None
    return total


def format_size(n: int) -> str:
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n >= 1024**power and n % 1024**power == 0:
            return f"{n // 1024**power}{unit}"
    return f"{n}B"


def format_size_approx(n: int) -> str:
    """For measured sizes: `80.3M`, `1.5G`."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n >= 1024**power:
            return f"{n / 1024**power:.1f}{unit}"
    return f"{n}B"


def show_value(field: str, value: float | int | None) -> str:
    """A count or resource value as a stack file writes it: `3`, `0.5`, `256M`, `unlimited`."""
    if value is None:
        return "unlimited"
    if field in ("memory", "disk"):
        return format_size(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_duration(seconds: float) -> str:
    """`90` -> `1m30s`, `600` -> `10m`, `2.5` -> `2.5s`."""
    if seconds < 60:
        return f"{seconds:g}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text
