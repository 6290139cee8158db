"""Cron expressions (the five Vixie-cron fields and the @ macros) and their slots. Pure.

Times are integer UTC epoch seconds; the calendar arithmetic is Howard Hinnant's
days_from_civil / civil_from_days, so neither the clock nor `datetime` is needed.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
           ("day-of-week", 0, 7))
_MONTHS = {n: i for i, n in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_WEEKDAYS = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_NAMES: dict[str, dict[str, int]] = {"month": _MONTHS, "day-of-week": _WEEKDAYS}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_NUMBER = re.compile(r"[0-9]+")
_Y2000 = 946_684_800  # 2000-01-01T00:00Z
_CHECK_YEARS = 28  # the Gregorian calendar repeats every 28 years between 1901 and 2099
_MAX_YEARS = 400  # ...and exactly every 400: what has no slot in 400 years never has one


class CronError(ValueError):
    """A cron expression that cannot be parsed or can never fire."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: each field as the sorted values it allows.

    `weekdays` counts 0 = Sunday (a 7 in the text is folded into 0). `either_day` is Vixie
    cron's rule: when both day fields are restricted (neither starts with `*`), a day matches
    when either does; otherwise both must.
    """

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    either_day: bool

    def __str__(self) -> str:
        return self.text

    def next_after(self, t: int) -> int:
        """The first slot (epoch seconds, a whole minute) strictly after `t`."""
        found = self._search(t, _MAX_YEARS)
        if found is None:
            raise CronError(f"{self.text!r} never fires")
        return found

    def slots(self, after: int, until: int, limit: int) -> list[int]:
        """The slots in (after, until], oldest first: the first `limit` of them if more."""
        out: list[int] = []
        t = after
        while len(out) < limit:
            t = self.next_after(t)
            if t > until:
                break
            out.append(t)
        return out

    def _day_ok(self, day: int, weekday: int) -> bool:
        if self.either_day:
            return day in self.days or weekday in self.weekdays
        return day in self.days and weekday in self.weekdays

    def _time_from(self, hour: int, minute: int) -> int | None:
        """Seconds into the day of the first allowed time at or after hour:minute."""
        i = bisect_left(self.hours, hour)
        if i == len(self.hours):
            return None
        if self.hours[i] == hour:
            j = bisect_left(self.minutes, minute)
            if j < len(self.minutes):
                return hour * 3600 + self.minutes[j] * 60
            i += 1
            if i == len(self.hours):
                return None
        return self.hours[i] * 3600 + self.minutes[0] * 60

    def _search(self, t: int, years: int) -> int | None:
        """next_after's walk: month by month, then day by day, then a bisect in the day."""
        start = t // 60 * 60 + 60
        day_number, rest = divmod(start, 86400)
        y, m, d = civil_from_days(day_number)
        hour, minute = rest // 3600, rest % 3600 // 60
        last_year = y + years
        while y <= last_year:
            if m in self.months:
                first = days_from_civil(y, m, 1)
                weekday_of_first = (first + 4) % 7  # 1970-01-01 was a Thursday
                for day in range(d, month_length(y, m) + 1):
                    if self._day_ok(day, (weekday_of_first + day - 1) % 7):
                        seconds = self._time_from(hour, minute)
                        if seconds is not None:
                            return (first + day - 1) * 86400 + seconds
                    hour = minute = 0
            y, m, d, hour, minute = (y + 1, 1, 1, 0, 0) if m == 12 else (y, m + 1, 1, 0, 0)
        return None


def parse(text: str) -> Cron:
    """A Cron from five fields (minute hour day-of-month month day-of-week) or a macro."""
    expanded = text.strip()
    if expanded.startswith("@"):
        macro = expanded.lower()
        if macro == "@reboot":
            raise CronError("@reboot is not supported: a fleet has no boot to run at (instances "
                            "start and move at any time); give the time of day instead")
        if macro not in _MACROS:
            raise CronError(f"unknown macro {expanded!r}; use one of {', '.join(_MACROS)}")
        expanded = _MACROS[macro]
    parts = expanded.split()
    if len(parts) != len(_FIELDS):
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), "
                        f"got {len(parts)}")
    values = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = tuple(sorted({v % 7 for v in values[4]}))
    cron = Cron(text, values[0], values[1], values[2], values[3], weekdays,
                either_day=not parts[2].startswith("*") and not parts[4].startswith("*"))
    if cron._search(_Y2000 - 60, _CHECK_YEARS) is None:
        raise CronError(f"{text!r} never fires: no month it names has the day it names")
    return cron


def _field(text: str, name: str, lo: int, hi: int) -> tuple[int, ...]:
    def fail(why: str) -> CronError:
        return CronError(f'{name} field "{text}": {why}')

    def value(token: str, part: str) -> int:
        if not token:
            raise fail(f'"{part}" is missing a number')
        names = _NAMES.get(name, {})
        if token.lower() in names:
            return names[token.lower()]
        if not _NUMBER.fullmatch(token):
            like = f" or a name like {next(iter(names)).upper()}" if names else ""
            raise fail(f'"{token}" is not a number{like}')
        n = int(token)
        if not lo <= n <= hi:
            raise fail(f"{n} is out of range {lo}-{hi}")
        return n

    found: set[int] = set()
    for part in text.split(","):
        if not part:
            raise fail("empty part in the list")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise fail(f'step "{step_text}" in "{part}" is not a number')
            step = int(step_text)
            if step == 0:
                raise fail(f'a step of 0 in "{part}"')
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = value(a, part), value(b, part)
            if first > last:
                raise fail(f'range "{base}" is reversed ({first} > {last})')
        else:
            first = value(base, part)
            last = hi if slash else first
        found.update(range(first, last + 1, step))
    return tuple(sorted(found))


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Hinnant)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """The (year, month, day) of a day number since 1970-01-01 (Hinnant)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1


def month_length(y: int, m: int) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def format_slot(t: int) -> str:
    """A slot for people: `2026-12-07 17:05 UTC`."""
    days, secs = divmod(t, 86400)
    y, m, d = civil_from_days(days)
    return f"{y:04d}-{m:02d}-{d:02d} {secs // 3600:02d}:{secs % 3600 // 60:02d} UTC"
