"""The pre-dial decision: may this contact be reached now? Pure; every fact comes in.

Time rules are checked in every zone the contact may be in (fail closed when the zone is
ambiguous); the next allowed instant is the earliest time every rule that can lift allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from cxmesh.compliance.v1 import decision_pb2
from cxmesh_server.compliance.domain.rules import CompiledRuleSet, HolidayRule, Span, Week
from cxmesh_server.public_holidays import holiday_name, supported

# How far ahead the next allowed instant is searched.
SEARCH_DAYS = 14


@dataclass(frozen=True, slots=True)
class Place:
    """Where the contact is: what window overrides and state holidays look at."""

    zones: tuple[str, ...]  # every zone the contact may be in; one when certain
    # every state or province whose rules apply (`contacts.places`), as codes
    states: tuple[str, ...] = ()
    area_code: str = ""
    postal_code: str = ""


@dataclass(frozen=True, slots=True)
class Denial:
    code: int
    reason: str
    source: str


@dataclass
class Outcome:
    allowed: bool
    denials: list[Denial] = field(default_factory=list)
    next_allowed: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptHistory:
    """The counted attempts of one attempt rule (UTC instants)."""

    rule_set: str
    limit_index: int
    times: tuple[datetime, ...]


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _in(spans: Sequence[Span], second: int) -> bool:
    return any(start <= second < end for start, end in spans)


def _fmt(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _weeks(rule_set: CompiledRuleSet, place: Place) -> list[Week]:
    """The rule set's windows and every override that applies to the place: all must allow."""
    applicable = [
        o for o in rule_set.overrides if o.applies(place.states, place.area_code, place.postal_code)
    ]
    return [rule_set.week, *(o.week for o in applicable)]


def window_verdict(rule_set: CompiledRuleSet, place: Place, moment: datetime) -> str | None:
    """None when every candidate zone allows `moment`; else why not."""
    weeks = _weeks(rule_set, place)
    for zone in place.zones:
        local = moment.astimezone(_zone(zone))
        second = local.hour * 3600 + local.minute * 60 + local.second
        for week in weeks:
            spans = week[local.weekday()]
            if not _in(spans, second):
                allowed = (
                    ", ".join(f"{_fmt(a)}–{_fmt(b)}" for a, b in spans) or "no window that day"
                )
                return f"{local:%a %H:%M} local time ({zone}) is outside {allowed}"
    return None


def _calendar_subdivisions(calendar: HolidayRule, place: Place) -> tuple[str, ...]:
    """Whose holidays a calendar keeps: its own subdivision's, or by the contact's state
    each of the contact's states' that the country has (a Canadian province of a
    Canadian area code is no US state); with none, the country's alone."""
    if not calendar.by_contact_state:
        return (calendar.subdivision,)
    return tuple(s for s in place.states if supported(calendar.country, s)) or ("",)


def date_verdict(rule_set: CompiledRuleSet, place: Place, moment: datetime) -> str | None:
    for zone in place.zones:
        day = moment.astimezone(_zone(zone)).date()
        if day in rule_set.blackout_dates or (day.month, day.day) in rule_set.yearly_blackout_dates:
            return f"{day} ({zone}) is a blackout date"
        for calendar in rule_set.holidays:
            for subdivision in _calendar_subdivisions(calendar, place):
                name = holiday_name(calendar.country, subdivision, day)
                if name:
                    return f"{day} ({zone}) is a holiday: {name}"
    return None


def _time_rules_allow(rule_sets: Sequence[CompiledRuleSet], place: Place, moment: datetime) -> bool:
    return all(
        window_verdict(r, place, moment) is None and date_verdict(r, place, moment) is None
        for r in rule_sets
    )


def _at(day: date, second: int, tz: ZoneInfo) -> datetime:
    wall = datetime.combine(day, time(second // 3600, second % 3600 // 60, second % 60), tzinfo=tz)
    # A wall time skipped by a DST change (02:30 on the spring-forward night) names no
    # instant; zoneinfo reads it with the earlier offset, an hour later in the new time.
    return wall.astimezone(UTC)


def _window_starts(
    rule_sets: Sequence[CompiledRuleSet], place: Place, start: datetime
) -> list[datetime]:
    """Every instant a window opens, or a day begins, in any candidate zone ahead of `start`.
    The intersection of the zones' windows always opens at one of them."""
    instants = set()
    for zone in place.zones:
        tz = _zone(zone)
        first_day = start.astimezone(tz).date()
        for offset in range(SEARCH_DAYS + 1):
            day = first_day + timedelta(days=offset)
            instants.add(_at(day, 0, tz))
            for rule_set in rule_sets:
                for week in _weeks(rule_set, place):
                    for span_start, _ in week[day.weekday()]:
                        instants.add(_at(day, span_start, tz))
    return sorted(i for i in instants if i > start)


def next_time_allowed(
    rule_sets: Sequence[CompiledRuleSet], place: Place, earliest: datetime
) -> datetime | None:
    if _time_rules_allow(rule_sets, place, earliest):
        return earliest
    for candidate in _window_starts(rule_sets, place, earliest):
        if _time_rules_allow(rule_sets, place, candidate):
            return candidate
    return None


def _local_midnight(moment: datetime, zone: str, days_later: int = 0) -> datetime:
    tz = _zone(zone)
    return _at(moment.astimezone(tz).date() + timedelta(days=days_later), 0, tz)


def counted_in_period(
    window: timedelta | None, times: Sequence[datetime], place: Place, now: datetime
) -> list[datetime]:
    if window is not None:
        return sorted(t for t in times if now - window < t <= now)
    # Since local midnight, in the zone whose midnight came first: the most attempts count.
    since = min(_local_midnight(now, z) for z in place.zones)
    return sorted(t for t in times if since <= t <= now)


def _attempt_lift(
    window: timedelta | None,
    max_attempts: int,
    counted: Sequence[datetime],
    place: Place,
    now: datetime,
) -> datetime:
    """When the count in the period falls below the limit again."""
    if window is not None:
        # Attempts leave the window oldest first; one fewer than the limit may remain.
        return counted[len(counted) - max_attempts] + window
    return max(_local_midnight(now, z, days_later=1) for z in place.zones)


@dataclass(frozen=True, slots=True)
class TimeVerdict:
    """What the window and date rules say at one instant: the same for every instant of
    that second (windows are whole seconds, reasons name the minute), so it can be shared
    by every decision for the same rules and place within the second."""

    denials: tuple[Denial, ...]
    # When the time rules allow again; only computed when they deny.
    next_allowed: datetime | None


def time_verdict(rule_sets: Sequence[CompiledRuleSet], place: Place, now: datetime) -> TimeVerdict:
    denials = []
    for rule_set in rule_sets:
        verdict = window_verdict(rule_set, place, now)
        if verdict:
            denials.append(
                Denial(decision_pb2.DENIAL_CODE_OUTSIDE_CONTACT_WINDOW, verdict, rule_set.source)
            )
        verdict = date_verdict(rule_set, place, now)
        if verdict:
            denials.append(Denial(decision_pb2.DENIAL_CODE_BLACKOUT_DATE, verdict, rule_set.source))
    if not denials:
        return TimeVerdict((), None)
    return TimeVerdict(tuple(denials), next_time_allowed(rule_sets, place, now))


def decide(
    rule_sets: Sequence[CompiledRuleSet],
    place: Place,
    now: datetime,
    *,
    suppressed_by: Sequence[str] = (),
    attempts: Sequence[AttemptHistory] = (),
    time_rules: TimeVerdict | None = None,
) -> Outcome:
    """Every rule that denies, and when the contact becomes callable if time can lift it.
    `time_rules` is this instant's time verdict when the caller already has it."""
    timed = time_rules if time_rules is not None else time_verdict(rule_sets, place, now)
    outcome = Outcome(allowed=True, denials=list(timed.denials))
    lift_after = now
    for rule_set in rule_sets:
        for limit in rule_set.attempt_limits:
            history = next(
                (
                    a
                    for a in attempts
                    if a.rule_set == rule_set.name and a.limit_index == limit.index
                ),
                None,
            )
            if history is None or len(history.times) < limit.max_attempts:
                continue
            counted = counted_in_period(limit.window, history.times, place, now)
            if len(counted) >= limit.max_attempts:
                period = f"in the last {limit.window}" if limit.window else "since local midnight"
                outcome.denials.append(
                    Denial(
                        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT,
                        f"{len(counted)} attempts {period}; at most {limit.max_attempts}",
                        f"{rule_set.source}#attempt_rules[{limit.index}]",
                    )
                )
                lift_after = max(
                    lift_after, _attempt_lift(limit.window, limit.max_attempts, counted, place, now)
                )
    for list_name in suppressed_by:
        outcome.denials.append(
            Denial(decision_pb2.DENIAL_CODE_SUPPRESSED, "on a suppression list", list_name)
        )
    outcome.allowed = not outcome.denials
    if outcome.denials and not suppressed_by:
        outcome.next_allowed = (
            timed.next_allowed
            if lift_after == now
            else next_time_allowed(rule_sets, place, lift_after)
        )
    return outcome
