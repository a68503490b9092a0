"""Rule sets compiled from their proto into what a decision reads without any parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

from google.type import date_pb2, timeofday_pb2

from cxmesh.compliance.v1 import rule_set_pb2
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.contacts.campaigns import campaign_key, is_campaign
from cxmesh_server.contacts.places import is_subdivision, postal_key, subdivision_code
from cxmesh_server.contacts.timezones import PLACE_ZONE, is_local_zone
from cxmesh_server.public_holidays import supported
from cxmesh_server.runtime.convert import defined_values
from cxmesh_server.runtime.errors import Validator

DAY_SECONDS = 24 * 3600
DEFAULT_WINDOW = (8 * 3600, 21 * 3600)  # TCPA: 08:00–21:00 local time
# The Genesys OCS default counted results.
DEFAULT_COUNTED_RESULTS = frozenset(
    {
        call_result_pb2.CALL_RESULT_BUSY,
        call_result_pb2.CALL_RESULT_NO_ANSWER,
        call_result_pb2.CALL_RESULT_ANSWERING_MACHINE,
        call_result_pb2.CALL_RESULT_FAX_DETECTED,
        call_result_pb2.CALL_RESULT_OVERFLOWED,
        call_result_pb2.CALL_RESULT_ABANDONED,
        call_result_pb2.CALL_RESULT_DROPPED,
        call_result_pb2.CALL_RESULT_DROPPED_NO_ANSWER,
        call_result_pb2.CALL_RESULT_SILENCE,
        call_result_pb2.CALL_RESULT_ANSWER,
        call_result_pb2.CALL_RESULT_WRONG_PARTY,
        call_result_pb2.CALL_RESULT_WRONG_NUMBER,
    }
)

# Every voice outcome of a placed call, attempts still in progress (unspecified) included.
REG_F_COUNTED_RESULTS = sorted(
    value
    for value in call_result_pb2.CallResult.values()
    if value
    not in (
        call_result_pb2.CALL_RESULT_CANCELLED,
        call_result_pb2.CALL_RESULT_DELIVERED,
        call_result_pb2.CALL_RESULT_UNDELIVERABLE,
    )
)

# Seconds of the local day, [start, end): a window ending at 21:00 refuses 21:00:00.
Span = tuple[int, int]
# Spans per weekday, Monday = 0.
Week = tuple[tuple[Span, ...], ...]


@dataclass(frozen=True, slots=True)
class Override:
    kind: str  # state | area_code | postal_code
    value: str  # a postal code by `postal_key`, a prefix without its trailing '*'
    prefix: bool
    week: Week

    def applies(self, states: tuple[str, ...], area_code: str, postal_code: str) -> bool:
        if self.kind == "state":
            return self.value in states
        if self.kind == "area_code":
            return area_code == self.value
        return postal_code.startswith(self.value) if self.prefix else postal_code == self.value


@dataclass(frozen=True, slots=True)
class HolidayRule:
    country: str
    subdivision: str
    by_contact_state: bool


@dataclass(frozen=True, slots=True)
class AttemptLimit:
    index: int
    max_attempts: int
    window: timedelta | None  # None: since the contact's local midnight
    scope: int
    counted_results: frozenset[int]
    channels: frozenset[int]


@dataclass(frozen=True, slots=True)
class CompiledRuleSet:
    name: str
    revision: int
    campaigns: frozenset[str]
    channels: frozenset[int]
    week: Week
    overrides: tuple[Override, ...]
    blackout_dates: frozenset[date]
    # (month, day) of every blackout date given without a year: every year
    yearly_blackout_dates: frozenset[tuple[int, int]]
    holidays: tuple[HolidayRule, ...]
    attempt_limits: tuple[AttemptLimit, ...]
    suppression_lists: tuple[str, ...]
    default_time_zone: str

    @property
    def source(self) -> str:
        return self.name

    def applies_to(self, channel: int) -> bool:
        return not self.channels or channel in self.channels


def _seconds(time_of_day: object) -> int:
    hours, minutes, seconds = (getattr(time_of_day, f) for f in ("hours", "minutes", "seconds"))
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _week(windows: list[rule_set_pb2.ContactWindow] | None) -> Week:
    if not windows:
        return tuple((DEFAULT_WINDOW,) for _ in range(7))
    days: list[list[Span]] = [[] for _ in range(7)]
    for window in windows:
        span = (_seconds(window.start_time), _seconds(window.end_time) or DAY_SECONDS)
        # google.type.DayOfWeek: MONDAY = 1 … SUNDAY = 7.
        for day in window.days or range(1, 8):
            days[int(day) - 1].append(span)
    return tuple(tuple(sorted(spans)) for spans in days)


# A North American area code: NXX.
_AREA_CODE = re.compile(r"[2-9][0-9]{2}")
# A postal code, or a prefix of one ending in `*`.
_POSTAL_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 -]{0,9}\*?")
# `suppressionLists/{id}`; a bare id has always meant the same list and is still taken.
_SUPPRESSION_LIST = re.compile(r"(?:suppressionLists/)?[^/\s]+")


# Defined values; a rule's result may be UNSPECIFIED: an attempt still in progress (the
# Regulation F preset counts it).
_CHANNELS = defined_values(channel_pb2.Channel.DESCRIPTOR, unspecified=False)
_CALL_RESULTS = defined_values(call_result_pb2.CallResult.DESCRIPTOR, unspecified=True)


def _time_of_day_problem(time_of_day: timeofday_pb2.TimeOfDay, end: bool) -> str | None:
    """Why a window's bound is no time of day (an end may be 24:00, the day's end); windows
    are whole seconds, so a fraction would move the bound without saying so."""
    hours, minutes, seconds = time_of_day.hours, time_of_day.minutes, time_of_day.seconds
    if end and (hours, minutes, seconds, time_of_day.nanos) == (24, 0, 0, 0):
        return None
    if not (0 <= hours <= 23 and 0 <= minutes <= 59 and 0 <= seconds <= 59):
        return "hours 0-23, minutes and seconds 0-59" + (" (or 24:00)" if end else "")
    if time_of_day.nanos:
        return "whole seconds"
    return None


def _date_problem(day: date_pb2.Date) -> str | None:
    """Why a blackout date names no day; year 0 means every year (google.type.Date)."""
    try:
        date(day.year or 2000, day.month, day.day)  # 2000: a leap year allows 29 February
    except ValueError as error:
        return f"no such date: {error}"
    return None


# How long a rule set's lists may be: decisions scan them per contact and place, and every
# replica recompiles them on each change.
_MOST_ITEMS = {
    "campaigns": 1000,
    "contact_windows": 64,
    "window_overrides": 1000,
    "blackout_dates": 1000,
    "holiday_calendars": 64,
    "attempt_rules": 32,
    "suppression_lists": 100,
}


def validate_rule_set(
    message: rule_set_pb2.RuleSet, check: Validator, prefix: str = "rule_set"
) -> None:
    """Every field a decision reads, checked: a value that can match nothing (a misspelt
    state, an undefined channel) would silently not restrict, and a wrong allow is a fine."""
    check.require(
        0 < len(message.display_name) <= 128, f"{prefix}.display_name", "must be 1-128 characters"
    )
    check.require(
        set(message.channels) <= _CHANNELS,
        f"{prefix}.channels",
        "must be defined channels",
    )
    for name, most in _MOST_ITEMS.items():
        check.require(len(getattr(message, name)) <= most, f"{prefix}.{name}", f"at most {most:,}")
    windows = [(f"{prefix}.contact_windows[{n}]", w) for n, w in enumerate(message.contact_windows)]
    for n, override in enumerate(message.window_overrides):
        field = f"{prefix}.window_overrides[{n}]"
        scope = override.WhichOneof("scope")
        check.require(scope is not None, field, "needs a state, area code or postal code")
        if scope == "state_province":
            check.require(
                is_subdivision(override.state_province),
                f"{field}.state_province",
                "must be a US state or territory or a Canadian province, by code or name",
            )
        elif scope == "area_code":
            check.require(
                _AREA_CODE.fullmatch(override.area_code) is not None,
                f"{field}.area_code",
                "must be a 3-digit North American area code",
            )
        elif scope == "postal_code":
            check.require(
                _POSTAL_CODE.fullmatch(override.postal_code) is not None,
                f"{field}.postal_code",
                "must be a postal code or a prefix ending in *",
            )
        windows += [
            (f"{field}.contact_windows[{m}]", w) for m, w in enumerate(override.contact_windows)
        ]
    for field, window in windows:
        for bound, is_end in (("start_time", False), ("end_time", True)):
            problem = _time_of_day_problem(getattr(window, bound), is_end)
            check.require(problem is None, f"{field}.{bound}", problem or "")
        start, end = _seconds(window.start_time), _seconds(window.end_time) or DAY_SECONDS
        check.require(
            0 <= start < end <= DAY_SECONDS, field, "start must be before end, within one day"
        )
        check.require(
            all(1 <= int(d) <= 7 for d in window.days), f"{field}.days", "must be MONDAY..SUNDAY"
        )
    for n, blackout in enumerate(message.blackout_dates):
        problem = _date_problem(blackout.date)
        check.require(problem is None, f"{prefix}.blackout_dates[{n}].date", problem or "")
        check.require(
            len(blackout.reason) <= 128,
            f"{prefix}.blackout_dates[{n}].reason",
            "at most 128 characters",
        )
    for n, calendar in enumerate(message.holiday_calendars):
        field = f"{prefix}.holiday_calendars[{n}]"
        country = calendar.country.upper()
        check.require(
            supported(country), f"{field}.country", "a country the holidays package knows"
        )
        check.require(
            not calendar.subdivision or supported(country, calendar.subdivision.upper()),
            f"{field}.subdivision",
            "a subdivision of the country the holidays package knows",
        )
    for n, rule in enumerate(message.attempt_rules):
        field = f"{prefix}.attempt_rules[{n}]"
        check.require(rule.max_attempts >= 1, f"{field}.max_attempts", "must be at least 1")
        period = rule.WhichOneof("period")
        check.require(period is not None, field, "needs a window or since_local_midnight")
        if period == "window":
            seconds = rule.window.ToTimedelta().total_seconds()
            check.require(
                60 <= seconds <= 31 * 86400, f"{field}.window", "must be 1 minute to 31 days"
            )
        elif period == "since_local_midnight":
            check.require(
                rule.since_local_midnight, f"{field}.since_local_midnight", "must be true when set"
            )
        check.require(
            rule.scope in rule_set_pb2.AttemptScope.values(), f"{field}.scope", "a defined scope"
        )
        check.require(
            set(rule.counted_results) <= _CALL_RESULTS,
            f"{field}.counted_results",
            "must be defined call results",
        )
        check.require(
            set(rule.channels) <= _CHANNELS,
            f"{field}.channels",
            "must be defined channels",
        )
    for n, campaign in enumerate(message.campaigns):
        check.require(
            is_campaign(campaign),
            f"{prefix}.campaigns[{n}]",
            "must be campaigns/{id}, the id at most 255 characters",
        )
    for n, name in enumerate(message.suppression_lists):
        check.require(
            _SUPPRESSION_LIST.fullmatch(name) is not None,
            f"{prefix}.suppression_lists[{n}]",
            "must be suppressionLists/{id}",
        )
    zone = message.default_time_zone
    check.require(
        not zone or is_local_zone(zone),
        f"{prefix}.default_time_zone",
        PLACE_ZONE,
    )


class InvalidRuleSet(ValueError):
    """A stored rule set that fails today's validation (stored before a check existed):
    its decisions cannot be trusted to restrict what it says."""


def compile_rule_set(message: rule_set_pb2.RuleSet) -> CompiledRuleSet:
    check = Validator()
    validate_rule_set(message, check, prefix=message.name or "rule_set")
    if check.violations:
        raise InvalidRuleSet("; ".join(f"{v.field}: {v.description}" for v in check.violations))
    overrides = []
    for override in message.window_overrides:
        field = override.WhichOneof("scope") or "state_province"
        value = getattr(override, field)
        kind = {"state_province": "state", "area_code": "area_code", "postal_code": "postal_code"}[
            field
        ]
        prefix = kind == "postal_code" and value.endswith("*")
        # Compared as the contact's are: states as codes (Florida is FL), postal codes by
        # `postal_key` (33101 matches 33101-1234, K1A 0B1 matches k1a0b1).
        if kind == "state":
            value = subdivision_code(value)
        elif kind == "postal_code":
            value = postal_key(value.rstrip("*"))
        overrides.append(Override(kind, value, prefix, _week(list(override.contact_windows))))
    limits = []
    for n, rule in enumerate(message.attempt_rules):
        limits.append(
            AttemptLimit(
                index=n,
                max_attempts=rule.max_attempts,
                window=rule.window.ToTimedelta() if rule.WhichOneof("period") == "window" else None,
                scope=rule.scope or rule_set_pb2.ATTEMPT_SCOPE_DEVICE,
                # An attempt with no result yet is in progress and may end in a counted
                # one: it counts until its result says otherwise.
                counted_results=(frozenset(rule.counted_results) or DEFAULT_COUNTED_RESULTS)
                | {call_result_pb2.CALL_RESULT_UNSPECIFIED},
                channels=frozenset(rule.channels) or frozenset({channel_pb2.CHANNEL_VOICE}),
            )
        )
    holidays = tuple(
        HolidayRule(h.country.upper(), h.subdivision.upper(), h.by_contact_state)
        for h in message.holiday_calendars
    )
    dated = [d.date for d in message.blackout_dates]
    return CompiledRuleSet(
        name=message.name,
        revision=message.revision,
        campaigns=frozenset(campaign_key(c) for c in message.campaigns),
        channels=frozenset(message.channels),
        week=_week(list(message.contact_windows)),
        overrides=tuple(overrides),
        blackout_dates=frozenset(date(d.year, d.month, d.day) for d in dated if d.year),
        yearly_blackout_dates=frozenset((d.month, d.day) for d in dated if not d.year),
        holidays=holidays,
        attempt_limits=tuple(limits),
        suppression_lists=tuple(message.suppression_lists),
        default_time_zone=message.default_time_zone,
    )


def with_preset(message: rule_set_pb2.RuleSet) -> rule_set_pb2.RuleSet | None:
    """`message`, created with a preset, with the preset's windows and attempt rules; None
    when it has windows or attempt rules other than the preset's (a copy of a rule set
    made from the preset has the same)."""
    defaults = preset(message.preset)
    own = (list(message.contact_windows), list(message.attempt_rules))
    if own == (list(defaults.contact_windows), list(defaults.attempt_rules)):
        return message
    if own != ([], []):
        return None
    filled = rule_set_pb2.RuleSet()
    filled.CopyFrom(message)
    filled.contact_windows.extend(defaults.contact_windows)
    filled.attempt_rules.extend(defaults.attempt_rules)
    return filled


def preset(kind: int, name: str = "ruleSets/default") -> rule_set_pb2.RuleSet:
    """The regulatory presets: US TCPA window 08:00–21:00 local and Regulation F 7-in-7."""
    if kind != rule_set_pb2.RULE_SET_PRESET_US_TCPA_REG_F:
        raise ValueError(f"unknown preset {kind}")
    message = rule_set_pb2.RuleSet(name=name, display_name="US TCPA + Regulation F", preset=kind)  # type: ignore[arg-type]
    window = message.contact_windows.add()
    window.start_time.hours, window.end_time.hours = 8, 21
    # Regulation F counts every call placed about a debt to one person, whatever its result.
    rule = message.attempt_rules.add(max_attempts=7, scope=rule_set_pb2.ATTEMPT_SCOPE_CLIENT)
    rule.window.FromTimedelta(timedelta(days=7))
    rule.channels.append(channel_pb2.CHANNEL_VOICE)
    rule.counted_results.extend(REG_F_COUNTED_RESULTS)
    return message
