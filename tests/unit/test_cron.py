from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from rackfire.model.cron import (
    Cron,
    CronError,
    civil_from_days,
    days_from_civil,
    month_length,
    parse,
)


def at(text: str) -> int:
    """Epoch seconds of an ISO UTC time (the tests may use datetime; the module may not)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M")


def nexts(text: str, start: str, n: int) -> list[str]:
    cron, t, out = parse(text), at(start), []
    for _ in range(n):
        t = cron.next_after(t)
        out.append(iso(t))
    return out


# --- syntax ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "field", "expected"), [
    ("* * * * *", "minutes", tuple(range(60))),
    ("5 * * * *", "minutes", (5,)),
    ("10-13 * * * *", "minutes", (10, 11, 12, 13)),
    ("*/20 * * * *", "minutes", (0, 20, 40)),
    ("10-30/10 * * * *", "minutes", (10, 20, 30)),
    ("50/4 * * * *", "minutes", (50, 54, 58)),
    ("1,3,2,3 * * * *", "minutes", (1, 2, 3)),
    ("0-5/2,30,58-59 * * * *", "minutes", (0, 2, 4, 30, 58, 59)),
    ("0 */6 * * *", "hours", (0, 6, 12, 18)),
    ("0 0 1,15,31 * *", "days", (1, 15, 31)),
    ("0 0 * JAN,mar,Dec *", "months", (1, 3, 12)),
    ("0 0 * jun-AUG *", "months", (6, 7, 8)),
    ("0 0 * FEB/5 *", "months", (2, 7, 12)),
    ("0 0 * * MON-FRI", "weekdays", (1, 2, 3, 4, 5)),
    ("0 0 * * sun,Sat", "weekdays", (0, 6)),
    ("0 0 * * 7", "weekdays", (0,)),
    ("0 0 * * 5-7", "weekdays", (0, 5, 6)),
    ("0 0 * * 0,7", "weekdays", (0,)),
    ("0 0 * * *", "weekdays", tuple(range(7))),
    ("  0   0 * *\t*  ", "minutes", (0,)),
])
def test_each_syntax_form(text: str, field: str, expected: tuple[int, ...]) -> None:
    assert getattr(parse(text), field) == expected


@pytest.mark.parametrize(("macro", "same_as"), [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"), ("@DAILY", "0 0 * * *"),
])
def test_macros(macro: str, same_as: str) -> None:
    cron, plain = parse(macro), parse(same_as)
    assert cron.text == macro
    assert (cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays,
            cron.either_day) == (plain.minutes, plain.hours, plain.days, plain.months,
                                 plain.weekdays, plain.either_day)


def test_text_is_kept() -> None:
    cron = parse("*/5 9-17 * * mon-fri")
    assert cron.text == "*/5 9-17 * * mon-fri"
    assert str(cron) == "*/5 9-17 * * mon-fri"
    assert isinstance(cron, Cron)
    assert parse("0 0 * * *") == parse("0 0 * * *")
    with pytest.raises(AttributeError):
        cron.text = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "message"), [
    ("61 * * * *", 'minute field "61": 61 is out of range 0-59'),
    ("* 24 * * *", 'hour field "24": 24 is out of range 0-23'),
    ("* * 0 * *", 'day-of-month field "0": 0 is out of range 1-31'),
    ("* * 32 * *", 'day-of-month field "32": 32 is out of range 1-31'),
    ("* * * 13 *", 'month field "13": 13 is out of range 1-12'),
    ("* * * * 8", 'day-of-week field "8": 8 is out of range 0-7'),
    ("1,61 * * * *", 'minute field "1,61": 61 is out of range 0-59'),
    ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("* * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("*/0 * * * *", 'minute field "*/0": a step of 0 in "*/0"'),
    ("* 1-5/0 * * *", 'hour field "1-5/0": a step of 0 in "1-5/0"'),
    ("*/x * * * *", 'minute field "*/x": step "x" in "*/x" is not a number'),
    ("*/ * * * *", 'minute field "*/": step "" in "*/" is not a number'),
    ("1,,2 * * * *", 'minute field "1,,2": empty part in the list'),
    ("1, * * * *", 'minute field "1,": empty part in the list'),
    ("30-10 * * * *", 'minute field "30-10": range "30-10" is reversed (30 > 10)'),
    ("* * * DEC-JAN *", 'month field "DEC-JAN": range "DEC-JAN" is reversed (12 > 1)'),
    ("-5 * * * *", 'minute field "-5": "-5" is missing a number'),
    ("5- * * * *", 'minute field "5-": "5-" is missing a number'),
    ("a * * * *", 'minute field "a": "a" is not a number'),
    ("* * * FOO *", 'month field "FOO": "FOO" is not a number or a name like JAN'),
    ("* * * * MONDAY", 'day-of-week field "MONDAY": "MONDAY" is not a number or a name like SUN'),
    ("* * MON * *", 'day-of-month field "MON": "MON" is not a number'),
    ("* * * * 1-5-6", 'day-of-week field "1-5-6": "5-6" is not a number or a name like SUN'),
    ("0 0 30 2 *", "'0 0 30 2 *' never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
    ("0 0 30-31 FEB *", "never fires"),
    ("@reboot", "@reboot is not supported: a fleet has no boot"),
    ("@often", "unknown macro '@often'; use one of @yearly, @annually"),
])
def test_each_error_names_field_and_part(text: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_feb_29_fires_and_so_does_a_restricted_weekday_with_an_impossible_day() -> None:
    assert nexts("0 0 29 2 *", "2026-01-01T00:00", 2) == ["2028-02-29T00:00", "2032-02-29T00:00"]
    # Either day field may match, so the Mondays of February still fire.
    assert nexts("0 0 30 2 mon", "2026-02-01T00:00", 1) == ["2026-02-02T00:00"]


# --- the day-of-month / day-of-week rule ---------------------------------------------------

def test_both_day_fields_restricted_match_either() -> None:
    # 2026-12-01 is a Tuesday: the 13th, and every Friday (4th, 11th, 18th, 25th).
    cron = parse("0 12 13 * fri")
    assert cron.either_day
    got = [iso(t) for t in cron.slots(at("2026-12-01T00:00"), at("2026-12-31T23:59"), 100)]
    assert got == ["2026-12-04T12:00", "2026-12-11T12:00", "2026-12-13T12:00",
                   "2026-12-18T12:00", "2026-12-25T12:00"]


def test_a_star_day_field_means_both_must_match() -> None:
    # Day-of-month starts with `*` (even stepped): both must match.
    cron = parse("0 12 */2 * fri")
    assert not cron.either_day
    got = [iso(t) for t in cron.slots(at("2026-12-01T00:00"), at("2026-12-31T23:59"), 100)]
    assert got == ["2026-12-11T12:00", "2026-12-25T12:00"]  # the odd-numbered Fridays
    assert not parse("0 12 13 * *").either_day
    assert nexts("0 12 13 * *", "2026-12-01T00:00", 1) == ["2026-12-13T12:00"]
    assert nexts("0 12 * * fri", "2026-12-01T00:00", 1) == ["2026-12-04T12:00"]
    assert not parse("0 12 13 * */1").either_day  # dow `*/1`: only the 13th, any weekday
    assert nexts("0 12 13 * */1", "2026-12-01T00:00", 1) == ["2026-12-13T12:00"]


# --- the calendar ------------------------------------------------------------------------

def test_next_after_is_strictly_after_and_on_a_whole_minute() -> None:
    cron = parse("* * * * *")
    t = at("2026-12-07T10:00")
    assert cron.next_after(t) == t + 60
    assert cron.next_after(t - 1) == t
    assert cron.next_after(t + 59) == t + 60
    assert nexts("30 10 * * *", "2026-12-07T10:30", 1) == ["2026-12-08T10:30"]
    assert nexts("30 10 * * *", "2026-12-07T10:29", 1) == ["2026-12-07T10:30"]


def test_month_ends_and_year_rollover() -> None:
    assert nexts("0 0 31 * *", "2026-01-31T00:00", 3) == [
        "2026-03-31T00:00", "2026-05-31T00:00", "2026-07-31T00:00"]
    assert nexts("59 23 30 * *", "2026-01-30T23:59", 2) == ["2026-03-30T23:59", "2026-04-30T23:59"]
    assert nexts("0 0 1 1 *", "2026-12-31T23:59", 2) == ["2027-01-01T00:00", "2028-01-01T00:00"]
    assert nexts("* * * * *", "2026-12-31T23:59", 1) == ["2027-01-01T00:00"]
    assert nexts("0 0 * * *", "2028-02-28T12:00", 2) == ["2028-02-29T00:00", "2028-03-01T00:00"]
    assert nexts("0 0 * * *", "2027-02-28T12:00", 1) == ["2027-03-01T00:00"]
    assert nexts("0 0 29 2 *", "2096-03-01T00:00", 1) == ["2104-02-29T00:00"]  # 2100 is not leap
    assert nexts("0 0 29 2 *", "1999-03-01T00:00", 1) == ["2000-02-29T00:00"]  # 2000 is
    assert nexts("15 4 * * *", "1960-06-01T00:00", 1) == ["1960-06-01T04:15"]  # before 1970


def test_hour_and_minute_skips() -> None:
    assert nexts("5,50 9,17 * * *", "2026-12-07T09:06", 3) == [
        "2026-12-07T09:50", "2026-12-07T17:05", "2026-12-07T17:50"]
    assert nexts("5,50 9,17 * * *", "2026-12-07T17:50", 1) == ["2026-12-08T09:05"]


def test_calendar_helpers_agree_with_datetime() -> None:
    for z in range(-719_000, 2_900_000, 997):  # datetime holds years 1-9999
        d = datetime(1970, 1, 1) + timedelta(days=z)
        assert civil_from_days(z) == (d.year, d.month, d.day)
        assert days_from_civil(d.year, d.month, d.day) == z
        following = d.replace(day=28) + timedelta(days=4)
        assert month_length(d.year, d.month) == (following - timedelta(days=following.day)).day


# --- slots -------------------------------------------------------------------------------

def test_slots_are_in_after_until_and_the_first_limit() -> None:
    cron = parse("0 * * * *")
    after, until = at("2026-12-07T10:00"), at("2026-12-07T14:00")
    assert [iso(t) for t in cron.slots(after, until, 100)] == [
        "2026-12-07T11:00", "2026-12-07T12:00", "2026-12-07T13:00", "2026-12-07T14:00"]
    assert [iso(t) for t in cron.slots(after, until, 2)] == [
        "2026-12-07T11:00", "2026-12-07T12:00"]
    assert cron.slots(after, until, 0) == []
    assert cron.slots(until, after, 10) == []


# --- against a brute force ---------------------------------------------------------------

def matches(cron: Cron, t: int) -> bool:
    """Independent of the module's calendar: datetime's fields, checked against the sets."""
    d = datetime.fromtimestamp(t, UTC)
    if d.minute not in cron.minutes or d.hour not in cron.hours or d.month not in cron.months:
        return False
    dom, dow = d.day in cron.days, (d.weekday() + 1) % 7 in cron.weekdays
    return (dom or dow) if cron.either_day else (dom and dow)


def brute_next(cron: Cron, t: int) -> int:
    """Minute by minute; a day whose date cannot match (checked at its first allowed time)
    is skipped whole, so rare expressions (Feb 29) stay tractable."""
    m = t // 60 * 60 + 60
    while True:
        d = datetime.fromtimestamp(m, UTC)
        day_check = d.replace(hour=cron.hours[0], minute=cron.minutes[0])
        if not matches(cron, int(day_check.timestamp())):
            m = int((d.replace(hour=0, minute=0) + timedelta(days=1)).timestamp())
            continue
        if matches(cron, m):
            return m
        m += 60


def random_field(rng: random.Random, lo: int, hi: int, names: list[str]) -> str:
    def number() -> str:
        n = rng.randint(lo, hi)
        return names[n - lo].upper() if names and rng.random() < 0.3 else str(n)

    def part() -> str:
        kind = rng.randrange(5)
        if kind == 0:
            return number()
        if kind == 1:
            a, b = sorted(rng.sample(range(lo, hi + 1), 2))
            return f"{a}-{b}"
        if kind == 2:
            return f"*/{rng.randint(1, hi - lo + 2)}"
        if kind == 3:
            a, b = sorted(rng.sample(range(lo, hi + 1), 2))
            return f"{a}-{b}/{rng.randint(1, 5)}"
        return f"{number()}/{rng.randint(1, 10)}"

    if rng.random() < 0.35:
        return "*"
    return ",".join(part() for _ in range(rng.choice((1, 1, 2, 3))))


MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def test_next_after_agrees_with_a_brute_force() -> None:
    rng = random.Random(20261207)
    checked = 0
    while checked < 3000:
        text = " ".join((random_field(rng, 0, 59, []), random_field(rng, 0, 23, []),
                         random_field(rng, 1, 31, []), random_field(rng, 1, 12, MONTH_NAMES),
                         random_field(rng, 0, 7, DAY_NAMES)))
        try:
            cron = parse(text)
        except CronError as e:
            assert "never fires" in str(e), text
            continue
        t = rng.randint(at("1890-01-01T00:00"), at("2110-01-01T00:00"))  # 1900, 2100: not leap
        if rng.random() < 0.2:  # near a month's end, to the minute
            y, m = rng.randint(1890, 2109), rng.randint(1, 12)
            t = days_from_civil(y, m, month_length(y, m)) * 86400 + 86400 - rng.randint(0, 120)
        got = cron.next_after(t)
        assert got == brute_next(cron, t), (text, iso(t), iso(got))
        assert got % 60 == 0 and got > t
        checked += 1


def test_speed_of_ten_thousand_calls() -> None:
    for text in ("*/5 9-17 * * mon-fri", "0 0 29 2 *", "0 12 13 * fri", "59 23 31 12 *"):
        cron, t = parse(text), at("2026-01-01T00:00")
        for _ in range(10_000):
            t = cron.next_after(t)
