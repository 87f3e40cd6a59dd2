"""Partners' opening hours, the directory's `hours` key, in the mechanism's local time
(REFERRAL_TIMEZONE, Africa/Casablanca): `always`, or days and time ranges::

    hours: always
    hours:
      mon-fri: "08:30-12:30, 14:00-18:00"
      sat: "09:00-13:00"
      sun: closed

Days are `mon` ... `sun`, a range of them (`mon-fri`, `fri-mon`) or a list (`mon,wed`); a day
left out is closed. A time range ending at or before its start runs past midnight
(`20:00-08:00`); `24:00` ends a day. Local times follow the time zone's rules (Morocco moves
its clock for Ramadan), so they are turned into UTC only here, in activities: the workflow
receives plain UTC windows (workflows.models.OpenWindow).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALWAYS = "always"
_TIME = re.compile(r"^(\d{1,2})[:h](\d{2})$")
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class OpeningHours:
    """`always`, or opening ranges: (weekday 0 = Monday, start minute, end minute), where an end
    past 1440 runs into the next day."""

    always: bool = True
    ranges: tuple[tuple[int, int, int], ...] = ()

    def windows(self, start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
        """The opening windows that overlap [start, end), in UTC, in order, touching ones merged.
        For `always`: one window over the whole span."""
        if self.always:
            return [(start, end)]
        found: list[tuple[datetime, datetime]] = []
        day: date = start.astimezone(tz).date() - timedelta(days=1)  # a night that began the day before
        last = end.astimezone(tz).date()
        while day <= last:
            for weekday, begin, finish in self.ranges:
                if weekday != day.weekday():
                    continue
                opens, closes = _local(day, begin, tz), _local(day, finish, tz)
                if closes > start and opens < end:
                    found.append((opens, closes))
            day += timedelta(days=1)
        found.sort()
        merged: list[tuple[datetime, datetime]] = []
        for opens, closes in found:
            if merged and opens <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
            else:
                merged.append((opens, closes))
        return merged

    def is_open(self, at: datetime, tz: ZoneInfo) -> bool:
        return any(opens <= at < closes for opens, closes in self.windows(at, at + timedelta(seconds=1), tz))

    def next_opening(self, at: datetime, tz: ZoneInfo) -> datetime:
        """`at` when open then, else the start of the next window (within a week: every
        non-`always` schedule opens at least once a week)."""
        for opens, _closes in self.windows(at, at + timedelta(days=8), tz):
            return max(opens, at)
        raise ValueError("opening hours without any opening")  # cannot happen: parse_hours refuses it


def _local(day: date, minute: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of `minute` minutes into `day`, local wall time (a minute past 1440 is the next day's)."""
    day += timedelta(days=minute // _DAY_MINUTES)
    minute %= _DAY_MINUTES
    return datetime.combine(day, time(minute // 60, minute % 60), tz).astimezone(UTC)


def _minute(text: str, where: str, *, end: bool) -> int:
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"{where}: not a time such as 08:30 (got {text.strip()!r})")
    hours, minutes = int(match[1]), int(match[2])
    if (hours, minutes) == (24, 0) and end:
        return _DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise ValueError(f"{where}: not a time of day (got {text.strip()!r})")
    return hours * 60 + minutes


def _days(key: str) -> list[int]:
    days: list[int] = []
    for part in str(key).lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{key}: not a day or a range of days such as mon-fri (days: {', '.join(DAYS)})")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days += [(a + i) % 7 for i in range((b - a) % 7 + 1)]
    return days


def parse_hours(value: object) -> OpeningHours:
    """The directory's `hours` value; a ValueError names the day key and what is wrong."""
    if isinstance(value, OpeningHours):
        return value
    if value is None or (isinstance(value, str) and value.strip().lower() == ALWAYS):
        return OpeningHours()
    if not isinstance(value, dict) or not value:
        raise ValueError(f"write {ALWAYS!r}, or days with time ranges such as {{mon-fri: '08:30-17:00'}}")
    ranges: list[tuple[int, int, int]] = []
    for key, spans in value.items():
        days = _days(str(key))
        text = str(spans).strip().lower()
        if text == "closed":
            continue
        for span in text.split(","):
            begin_text, dash, end_text = span.partition("-")
            if not dash:
                raise ValueError(f"{key}: not a time range such as 08:30-17:00 (got {span.strip()!r})")
            begin = _minute(begin_text, str(key), end=False)
            finish = _minute(end_text, str(key), end=True)
            if finish <= begin:
                finish += _DAY_MINUTES  # past midnight
            ranges += [(day, begin, finish) for day in days]
    if not ranges:
        raise ValueError(f"no opening at all: write {ALWAYS!r}, or the days it opens")
    return OpeningHours(always=False, ranges=tuple(sorted(set(ranges))))
