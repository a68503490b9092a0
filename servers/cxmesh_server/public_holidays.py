"""Public holidays by country and subdivision, from the holidays package, shared by the
compliance rules (no calls on holidays) and callback office hours (closed on holidays)."""

from __future__ import annotations

from datetime import date
from functools import cache

import holidays


@cache
def _calendar(country: str, subdivision: str, year: int) -> holidays.HolidayBase:
    return holidays.country_holidays(country, subdiv=subdivision or None, years=year)


def holiday_name(country: str, subdivision: str, day: date) -> str | None:
    """The holiday's name when `day` is a public holiday there, else None. An unknown
    subdivision raises NotImplementedError (validate with `supported`)."""
    name = _calendar(country, subdivision, day.year).get(day)
    return str(name) if name else None


@cache
def supported(country: str, subdivision: str = "") -> bool:
    codes = holidays.list_supported_countries()
    if country not in codes:
        return False
    return not subdivision or subdivision in codes[country]
