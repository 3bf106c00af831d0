"""When schedules fire: local times in IANA zones across daylight-saving changes, every
recurrence, and a missed run firing once (pure; no database)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from moodle_bridge.sources.schedules.timing import Recurrence, TimingError

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp())


def local(slot: int, zone: str = "America/New_York") -> str:
    return dt.datetime.fromtimestamp(slot, zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def test_a_time_in_the_spring_forward_gap_fires_once_an_hour_later_on_the_wall_clock() -> None:
    daily = Recurrence("daily", dt.date(2026, 3, 1), 2 * 60 + 30, "America/New_York")
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist that day.
    slots = []
    cursor = utc(2026, 3, 6, 12)
    for _ in range(4):
        nxt = daily.next_slot(cursor)
        assert nxt is not None
        slots.append(nxt)
        cursor = nxt
    assert [local(s) for s in slots] == [
        "2026-03-07 02:30 EST",
        "2026-03-08 03:30 EDT",  # the gap: once, at the instant the pre-change offset names
        "2026-03-09 02:30 EDT",
        "2026-03-10 02:30 EDT",
    ]
    assert slots[1] - slots[0] == 24 * 3600 and slots[2] - slots[1] == 23 * 3600
    # Fired at 03:30, nothing more is due that day however often the bridge looks.
    assert daily.latest_slot(slots[1] + 3000, after=slots[1]) is None


def test_a_time_in_the_autumn_repeated_hour_fires_at_its_first_occurrence_only() -> None:
    daily = Recurrence("daily", dt.date(2026, 10, 1), 1 * 60 + 30, "America/New_York")
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice (05:30 and 06:30 UTC).
    first = daily.latest_slot(utc(2026, 11, 1, 5, 45))
    assert first == utc(2026, 11, 1, 5, 30) and local(first) == "2026-11-01 01:30 EDT"
    # After the second 01:30 the same slot is the latest: fired once, not again.
    assert daily.latest_slot(utc(2026, 11, 1, 6, 45)) == first
    assert daily.latest_slot(utc(2026, 11, 1, 6, 45), after=first) is None
    assert local(daily.next_slot(first) or 0) == "2026-11-02 01:30 EST"


def test_a_bridge_down_for_days_fires_the_latest_missed_slot_once() -> None:
    daily = Recurrence("daily", dt.date(2026, 1, 1), 7 * 60, "Europe/Paris")
    last = daily.latest_slot(utc(2026, 6, 1, 6))  # 1 June 07:00 CEST = 05:00 UTC
    assert last == utc(2026, 6, 1, 5)
    # Down from 1 June to 5 June 12:00 UTC: four slots missed, one fires (5 June 07:00).
    back = utc(2026, 6, 5, 12)
    due = daily.latest_slot(back, after=last)
    assert due == utc(2026, 6, 5, 5)
    assert daily.latest_slot(back, after=due) is None
    assert daily.next_slot(back) == utc(2026, 6, 6, 5)


@pytest.mark.parametrize(
    ("frequency", "start", "interval", "expected"),
    [
        ("weekdays", dt.date(2026, 5, 1), 0, ["05-01", "05-04", "05-05", "05-06", "05-07", "05-08"]),
        ("weekly", dt.date(2026, 5, 6), 0, ["05-06", "05-13", "05-20", "05-27", "06-03", "06-10"]),
        ("monthly", dt.date(2026, 1, 31), 0, ["01-31", "02-28", "03-31", "04-30", "05-31", "06-30"]),
        ("custom", dt.date(2026, 5, 1), 10, ["05-01", "05-11", "05-21", "05-31", "06-10", "06-20"]),
    ],
)
def test_each_recurrence_picks_its_days(
    frequency: str, start: dt.date, interval: int, expected: list[str]
) -> None:
    r = Recurrence(frequency, start, 9 * 60, "UTC", custom_interval=interval)
    cursor, days = utc(2026, 1, 1) - 1, list[str]()
    while len(days) < 6:
        cursor = r.next_slot(cursor) or 0
        if cursor >= utc(2026, 5, 1) or frequency == "monthly":
            days.append(dt.datetime.fromtimestamp(cursor, dt.UTC).strftime("%m-%d"))
    assert days == expected


def test_annually_on_29_february_fires_on_28_february_in_other_years() -> None:
    r = Recurrence("annually", dt.date(2028, 2, 29), 0, "UTC")
    assert r.next_slot(utc(2028, 3, 1)) == utc(2029, 2, 28)
    assert r.next_slot(utc(2029, 3, 1)) == utc(2030, 2, 28)
    assert r.latest_slot(utc(2028, 2, 28)) is None  # before the start: never


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frequency": "hourly"}, "frequency must be one of"),
        ({"minute_of_day": 24 * 60}, "time must be HH:MM"),
        ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"frequency": "custom"}, "custom_interval must be between 1 and 366"),
        ({"custom_interval": 3}, "custom_interval is only used with frequency custom"),
    ],
)
def test_a_recurrence_that_cannot_run_is_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "frequency": "daily",
        "start": dt.date(2026, 1, 1),
        "minute_of_day": 60,
        "timezone": "UTC",
    }
    with pytest.raises(TimingError, match=message):
        Recurrence(**{**base, **kwargs})  # type: ignore[arg-type]
