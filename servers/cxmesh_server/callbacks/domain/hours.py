"""Office hours in the service's zone: weekly hours, dated exceptions, holidays.

Hours are half-open spans of local seconds, [open, close). A day's spans become UTC
intervals through the zone, so DST days are as long as the wall clock says; intervals that
touch (23:00–24:00 then 00:00–01:00) are one opening.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.public_holidays import holiday_name

DAY_SECONDS = 24 * 3600
Span = tuple[int, int]
# How far open_for and the next opening look ahead.
HORIZON = timedelta(days=14)


def seconds_of(time_of_day: object, *, end: bool = False) -> int:
    """A google.type.TimeOfDay as seconds; an unset closing time is the end of the day."""
    hours, minutes, seconds = (getattr(time_of_day, f) for f in ("hours", "minutes", "seconds"))
    value = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return DAY_SECONDS if end and value == 0 else value


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class OfficeHours:
    time_zone: str
    week: tuple[tuple[Span, ...], ...]  # Monday = 0
    exceptions: dict[date, tuple[Span, ...]]  # a closed day has no spans
    holidays: tuple[tuple[str, str], ...] = ()  # (country, subdivision): closed on them

    @classmethod
    def compile(cls, message: callback_pb2.OfficeHours) -> OfficeHours:
        if message.weekly_hours:
            days: list[list[Span]] = [[] for _ in range(7)]
            for hours in message.weekly_hours:
                span = (seconds_of(hours.open_time), seconds_of(hours.close_time, end=True))
                for day in hours.days or range(1, 8):
                    days[int(day) - 1].append(span)
            week = tuple(tuple(sorted(spans)) for spans in days)
        else:
            week = tuple(((0, DAY_SECONDS),) for _ in range(7))  # around the clock
        exceptions: dict[date, tuple[Span, ...]] = {}
        for exception in message.exceptions:
            day = date(exception.date.year, exception.date.month, exception.date.day)
            exceptions[day] = (
                ()
                if exception.closed
                else (
                    (
                        seconds_of(exception.open_time),
                        seconds_of(exception.close_time, end=True),
                    ),
                )
            )
        return cls(
            message.time_zone or "UTC",
            week,
            exceptions,
            tuple((h.country.upper(), h.subdivision.upper()) for h in message.holiday_calendars),
        )

    def spans_on(self, day: date) -> tuple[Span, ...]:
        if day in self.exceptions:
            return self.exceptions[day]
        if any(holiday_name(country, subdivision, day) for country, subdivision in self.holidays):
            return ()
        return self.week[day.weekday()]

    def intervals(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The openings that overlap [start, end), merged, clipped to it, in UTC."""
        tz = zone(self.time_zone)
        day = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date()
        merged: list[tuple[datetime, datetime]] = []
        while day <= last:
            for open_at, close_at in self.spans_on(day):
                begin, finish = _instant(day, open_at, tz), _instant(day, close_at, tz)
                if merged and begin <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], finish))
                elif begin < finish:
                    merged.append((begin, finish))
            day += timedelta(days=1)
        return [(max(a, start), min(b, end)) for a, b in merged if b > start and a < end]

    def is_open(self, moment: datetime) -> bool:
        return bool(self.intervals(moment, moment + timedelta(seconds=1)))

    def open_for(self, moment: datetime) -> timedelta:
        """How long the office stays open from `moment` (zero when closed), up to HORIZON."""
        for begin, finish in self.intervals(moment, moment + HORIZON):
            if begin <= moment < finish:
                return finish - moment
        return timedelta(0)


def _instant(day: date, second: int, tz: ZoneInfo) -> datetime:
    if second >= DAY_SECONDS:
        return _instant(day + timedelta(days=1), 0, tz)
    wall = datetime.combine(day, time(second // 3600, second % 3600 // 60, second % 60), tzinfo=tz)
    return wall.astimezone(UTC)
