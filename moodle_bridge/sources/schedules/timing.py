"""When a schedule fires: pure functions of its recurrence, its time zone and the clock.

A schedule fires once per *slot*: a local date its recurrence selects, at a local time of day,
in an IANA zone (``zoneinfo``). The slot is the UTC instant of that local time, so:

- a local time that does not exist (the spring-forward gap, e.g. 02:30 in New York on the
  second Sunday of March) fires at the instant the pre-change offset names: 03:30 local, never
  skipped and never twice;
- a local time that happens twice (the autumn repeated hour, e.g. 01:30 on the first Sunday
  of November) fires at its first occurrence only: one local date, one slot.

A bridge that was down fires the *latest* slot it missed, once (``latest_slot`` with the last
slot fired), never once per missed interval.
"""

from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo
from dataclasses import dataclass

FREQUENCIES = ("daily", "weekdays", "weekly", "monthly", "annually", "custom")
MAX_CUSTOM_DAYS = 366
#: How far back or forward a slot is searched: every recurrence fires at least once a year.
_SEARCH_DAYS = 400


class TimingError(ValueError):
    """The recurrence cannot run; the message names the field."""


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TimingError(f"timezone {name!r} is not an IANA time zone (e.g. Europe/London)") from None


@dataclass(frozen=True)
class Recurrence:
    frequency: str
    start: dt.date  # local date: the anchor of weekly, monthly, annually and custom
    minute_of_day: int  # local time, minutes after midnight
    timezone: str
    custom_interval: int = 0  # days, for ``custom`` only

    def __post_init__(self) -> None:
        if self.frequency not in FREQUENCIES:
            raise TimingError(f"frequency must be one of {', '.join(FREQUENCIES)}")
        if not 0 <= self.minute_of_day < 24 * 60:
            raise TimingError("time must be HH:MM between 00:00 and 23:59")
        if self.frequency == "custom":
            if not 1 <= self.custom_interval <= MAX_CUSTOM_DAYS:
                raise TimingError(f"custom_interval must be between 1 and {MAX_CUSTOM_DAYS} days")
        elif self.custom_interval:
            raise TimingError("custom_interval is only used with frequency custom")
        zone(self.timezone)

    def fires_on(self, day: dt.date) -> bool:
        if day < self.start:
            return False
        f = self.frequency
        if f == "daily":
            return True
        if f == "weekdays":
            return day.weekday() < 5
        if f == "weekly":
            return day.weekday() == self.start.weekday()
        if f == "monthly":
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day == min(self.start.day, last)
        if f == "annually":
            if day.month != self.start.month:
                return False
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day == min(self.start.day, last)
        return (day - self.start).days % self.custom_interval == 0

    def slot_on(self, day: dt.date) -> int:
        """The UTC instant (unix seconds) of this recurrence's local time on ``day``."""
        hour, minute = divmod(self.minute_of_day, 60)
        # fold=0: in the repeated hour the first occurrence; in the gap the pre-change offset.
        local = dt.datetime.combine(day, dt.time(hour, minute, fold=0), tzinfo=zone(self.timezone))
        return int(local.timestamp())

    def local_date(self, at: int) -> dt.date:
        return dt.datetime.fromtimestamp(at, zone(self.timezone)).date()

    def latest_slot(self, now: int, after: int | None = None) -> int | None:
        """The latest slot at or before ``now`` and after ``after`` (the last slot fired), if any."""
        day = self.local_date(now) + dt.timedelta(days=1)
        for _ in range(_SEARCH_DAYS):
            if day < self.start:
                return None
            if self.fires_on(day):
                slot = self.slot_on(day)
                if slot <= now:
                    return slot if after is None or slot > after else None
            day -= dt.timedelta(days=1)
        return None

    def next_slot(self, after: int) -> int | None:
        """The first slot strictly after ``after``."""
        day = max(self.local_date(after) - dt.timedelta(days=1), self.start)
        for _ in range(_SEARCH_DAYS + 2):
            if self.fires_on(day):
                slot = self.slot_on(day)
                if slot > after:
                    return slot
            day += dt.timedelta(days=1)
        return None


def parse_time_of_day(text: str) -> int:
    try:
        hour, minute = (int(part) for part in text.split(":"))
    except ValueError:
        raise TimingError("time must be HH:MM (24-hour, local)") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise TimingError("time must be HH:MM between 00:00 and 23:59")
    return hour * 60 + minute


def format_time_of_day(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise TimingError("start date must be YYYY-MM-DD") from None
