"""Pre-dial decisions from compiled rules: windows in local time across DST, zones with
and without DST, ambiguous zones, weekends, holidays, attempt limits, next allowed time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.compliance.domain.decide import AttemptHistory, Place, decide
from cxmesh_server.compliance.domain.rules import (
    CompiledRuleSet,
    InvalidRuleSet,
    compile_rule_set,
    preset,
    validate_rule_set,
)
from cxmesh_server.contacts.places import postal_key
from cxmesh_server.runtime.errors import InvalidArgument, Validator

NEW_YORK = Place(zones=("America/New_York",), states=("NY",))
TCPA = compile_rule_set(
    rule_set_pb2.RuleSet(name="ruleSets/tcpa", display_name="default")
)  # 08:00–21:00 every day


def at(
    zone: str, year: int, month: int, day: int, hour: int, minute: int, second: int = 0
) -> datetime:
    """A local wall time in `zone`, as a UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def codes(outcome) -> list[int]:  # type: ignore[no-untyped-def]
    return [d.code for d in outcome.denials]


def rule_set(**fields: object) -> CompiledRuleSet:
    message = rule_set_pb2.RuleSet(name="ruleSets/custom", display_name="custom", **fields)  # type: ignore[arg-type]
    return compile_rule_set(message)


def test_allows_inside_the_window_in_the_contacts_local_time() -> None:
    assert decide([TCPA], NEW_YORK, at("America/New_York", 2026, 11, 24, 10, 0)).allowed


def test_the_window_closes_at_21_00_exactly() -> None:
    assert decide([TCPA], NEW_YORK, at("America/New_York", 2026, 11, 24, 20, 59, 59)).allowed
    closed = decide([TCPA], NEW_YORK, at("America/New_York", 2026, 11, 24, 21, 0, 0))
    assert codes(closed) == [decision_pb2.DENIAL_CODE_OUTSIDE_CONTACT_WINDOW]
    assert "21:00 local time (America/New_York) is outside 08:00–21:00" in closed.denials[0].reason
    assert closed.next_allowed == at("America/New_York", 2026, 11, 25, 8, 0)


def test_denies_after_9pm_local_even_when_it_is_early_evening_in_utc_terms() -> None:
    la = Place(zones=("America/Los_Angeles",))
    assert not decide([TCPA], la, at("America/Los_Angeles", 2026, 11, 24, 21, 30)).allowed
    assert decide([TCPA], la, at("America/New_York", 2026, 11, 24, 21, 30)).allowed  # 18:30 in LA


def test_dst_spring_forward_in_new_york() -> None:
    # 2026-03-08: clocks jump from 02:00 EST to 03:00 EDT.
    before = decide([TCPA], NEW_YORK, at("America/New_York", 2026, 3, 7, 22, 0))
    assert before.next_allowed == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # 08:00 EDT (UTC-4)
    assert not decide([TCPA], NEW_YORK, datetime(2026, 3, 8, 11, 59, tzinfo=UTC)).allowed
    assert decide([TCPA], NEW_YORK, datetime(2026, 3, 8, 12, 0, tzinfo=UTC)).allowed


def test_dst_fall_back_in_new_york() -> None:
    # 2026-11-01: clocks fall back from 02:00 EDT to 01:00 EST.
    before = decide([TCPA], NEW_YORK, at("America/New_York", 2026, 10, 31, 22, 0))
    assert before.next_allowed == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST (UTC-5)
    assert not decide(
        [TCPA], NEW_YORK, datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    ).allowed  # 07:30 EST
    assert decide([TCPA], NEW_YORK, datetime(2026, 11, 2, 1, 59, tzinfo=UTC)).allowed  # 20:59 EST


def test_arizona_keeps_standard_time_all_year() -> None:
    phoenix = Place(zones=("America/Phoenix",), states=("AZ",))
    # July: Phoenix is UTC-7 while Denver (same zone in winter) is UTC-6.
    assert decide([TCPA], phoenix, datetime(2026, 7, 1, 15, 0, tzinfo=UTC)).allowed  # 08:00 MST
    assert not decide([TCPA], phoenix, datetime(2026, 7, 1, 14, 59, tzinfo=UTC)).allowed
    denver = Place(zones=("America/Denver",))
    assert decide([TCPA], denver, datetime(2026, 7, 1, 14, 0, tzinfo=UTC)).allowed  # 08:00 MDT


def test_an_indiana_contact_in_either_zone_may_only_be_called_when_both_allow() -> None:
    split = Place(zones=("America/Indiana/Indianapolis", "America/Chicago"), states=("IN",))
    early = decide(
        [TCPA], split, at("America/Indiana/Indianapolis", 2026, 11, 24, 8, 30)
    )  # 07:30 Central
    assert not early.allowed and "America/Chicago" in early.denials[0].reason
    assert early.next_allowed == at("America/Chicago", 2026, 11, 24, 8, 0)
    late = decide([TCPA], split, at("America/Chicago", 2026, 11, 24, 20, 30))  # 21:30 Eastern
    assert not late.allowed and "America/Indiana/Indianapolis" in late.denials[0].reason
    assert decide([TCPA], split, at("America/Chicago", 2026, 11, 24, 12, 0)).allowed


def test_hawaii_and_alaska() -> None:
    honolulu = Place(zones=("Pacific/Honolulu",), states=("HI",))
    assert decide([TCPA], honolulu, datetime(2026, 11, 24, 18, 0, tzinfo=UTC)).allowed  # 08:00 HST
    assert not decide([TCPA], honolulu, datetime(2026, 11, 24, 17, 59, tzinfo=UTC)).allowed
    alaska = Place(zones=("America/Anchorage", "America/Adak"), states=("AK",))  # area code 907
    # 08:30 in Anchorage is 07:30 in Adak: both must allow.
    outcome = decide([TCPA], alaska, at("America/Anchorage", 2026, 11, 24, 8, 30))
    assert not outcome.allowed
    assert outcome.next_allowed == at("America/Adak", 2026, 11, 24, 8, 0)


def test_weekend_windows() -> None:
    weekdays = rule_set_pb2.ContactWindow(days=[1, 2, 3, 4, 5])  # type: ignore[list-item]
    weekdays.start_time.hours, weekdays.end_time.hours = 9, 17
    saturday = rule_set_pb2.ContactWindow(days=[6])  # type: ignore[list-item]
    saturday.start_time.hours, saturday.end_time.hours = 10, 14
    office = rule_set(contact_windows=[weekdays, saturday])
    sunday = decide([office], NEW_YORK, at("America/New_York", 2026, 11, 29, 12, 0))
    assert not sunday.allowed and "no window that day" in sunday.denials[0].reason
    assert sunday.next_allowed == at("America/New_York", 2026, 11, 30, 9, 0)
    assert decide([office], NEW_YORK, at("America/New_York", 2026, 11, 28, 13, 59)).allowed
    assert not decide([office], NEW_YORK, at("America/New_York", 2026, 11, 28, 14, 0)).allowed


def test_federal_holidays_and_blackout_dates() -> None:
    calendar = rule_set(holiday_calendars=[rule_set_pb2.HolidayCalendar(country="US")])
    thanksgiving = decide([calendar], NEW_YORK, at("America/New_York", 2026, 11, 26, 12, 0))
    assert codes(thanksgiving) == [decision_pb2.DENIAL_CODE_BLACKOUT_DATE]
    assert "Thanksgiving" in thanksgiving.denials[0].reason
    assert thanksgiving.next_allowed == at("America/New_York", 2026, 11, 27, 8, 0)
    blackout = rule_set_pb2.BlackoutDate(reason="system freeze")
    blackout.date.year, blackout.date.month, blackout.date.day = 2026, 12, 1
    frozen = rule_set(blackout_dates=[blackout])
    assert not decide([frozen], NEW_YORK, at("America/New_York", 2026, 12, 1, 12, 0)).allowed


def test_a_blackout_date_without_a_year_recurs_every_year() -> None:
    # google.type.Date: year 0 is "every year", the way an operator blacks out Christmas.
    christmas = rule_set_pb2.BlackoutDate(reason="Christmas")
    christmas.date.month, christmas.date.day = 12, 25
    yearly = rule_set(blackout_dates=[christmas])
    for year in (2026, 2027, 2031):
        closed = decide([yearly], NEW_YORK, at("America/New_York", year, 12, 25, 12, 0))
        assert codes(closed) == [decision_pb2.DENIAL_CODE_BLACKOUT_DATE]
        assert closed.next_allowed == at("America/New_York", year, 12, 26, 8, 0)
    assert decide([yearly], NEW_YORK, at("America/New_York", 2026, 12, 24, 12, 0)).allowed


def test_state_holidays_follow_the_contacts_state() -> None:
    by_state = rule_set(
        holiday_calendars=[rule_set_pb2.HolidayCalendar(country="US", by_contact_state=True)]
    )
    chavez_day = at("America/Los_Angeles", 2026, 3, 31, 12, 0)  # a California holiday
    assert not decide(
        [by_state], Place(zones=("America/Los_Angeles",), states=("CA",)), chavez_day
    ).allowed
    assert decide(
        [by_state], Place(zones=("America/Los_Angeles",), states=("WA",)), chavez_day
    ).allowed


def _eight_to_eight(override: rule_set_pb2.WindowOverride) -> rule_set_pb2.WindowOverride:
    window = override.contact_windows.add()
    window.start_time.hours, window.end_time.hours = 8, 20
    return override


FLORIDA = rule_set(
    window_overrides=[_eight_to_eight(rule_set_pb2.WindowOverride(state_province="FL"))]
)
EVENING = at("America/New_York", 2026, 11, 24, 20, 30)


def test_a_stricter_state_window_overrides_the_default() -> None:
    strict, evening = FLORIDA, EVENING
    in_florida = decide([strict], Place(zones=("America/New_York",), states=("FL",)), evening)
    assert not in_florida.allowed and "08:00–20:00" in in_florida.denials[0].reason
    assert decide([strict], NEW_YORK, evening).allowed
    area_code = _eight_to_eight(rule_set_pb2.WindowOverride(area_code="305"))
    postal = _eight_to_eight(rule_set_pb2.WindowOverride(postal_code="331*"))
    for override, place in [
        (area_code, Place(zones=("America/New_York",), area_code="305")),
        (postal, Place(zones=("America/New_York",), postal_code="33101")),
    ]:
        assert not decide([rule_set(window_overrides=[override])], place, evening).allowed


def test_a_postal_code_override_matches_however_the_record_writes_the_code() -> None:
    zip_only = rule_set(
        window_overrides=[_eight_to_eight(rule_set_pb2.WindowOverride(postal_code="33101"))]
    )
    canadian = rule_set(
        window_overrides=[_eight_to_eight(rule_set_pb2.WindowOverride(postal_code="K1A 0B1"))]
    )
    for rules, written in (
        (zip_only, "33101-1234"),
        (zip_only, "331011234"),
        (zip_only, " 33101 "),
        (canadian, "k1a0b1"),
        (canadian, "K1A-0B1"),
    ):
        place = Place(zones=("America/New_York",), postal_code=postal_key(written))
        assert not decide([rules], place, EVENING).allowed, written
    elsewhere = Place(zones=("America/New_York",), postal_code=postal_key("33102"))
    assert decide([zip_only], elsewhere, EVENING).allowed


def test_a_state_override_may_name_the_state() -> None:
    # Contacts' states are codes; an override written "Florida" must still match them.
    named = rule_set(
        window_overrides=[_eight_to_eight(rule_set_pb2.WindowOverride(state_province=" florida"))]
    )
    in_florida = Place(zones=("America/New_York",), states=("FL",))
    assert not decide([named], in_florida, EVENING).allowed


def test_a_contact_in_several_states_keeps_the_stricter_rules_of_each() -> None:
    # Living in New York with a Florida area code: Florida's law presumes a resident.
    both = Place(zones=("America/New_York",), states=("NY", "FL"))
    assert not decide([FLORIDA], both, EVENING).allowed


def test_state_holidays_skip_a_state_the_calendars_country_does_not_have() -> None:
    by_state = rule_set(
        holiday_calendars=[rule_set_pb2.HolidayCalendar(country="US", by_contact_state=True)]
    )
    # A Nova Scotia number (a Canadian area code) under a US calendar: the US holidays.
    halifax = Place(zones=("America/Halifax",), states=("NS",))
    independence_day = at("America/Halifax", 2026, 7, 4, 12, 0)
    assert codes(decide([by_state], halifax, independence_day)) == [
        decision_pb2.DENIAL_CODE_BLACKOUT_DATE
    ]
    assert decide([by_state], halifax, at("America/Halifax", 2026, 7, 6, 12, 0)).allowed


def test_attempt_windows_slide() -> None:
    rule = rule_set_pb2.AttemptRule(max_attempts=3)
    rule.window.FromTimedelta(timedelta(hours=24))
    limited = rule_set(attempt_rules=[rule])
    now = at("America/New_York", 2026, 11, 24, 12, 0)
    times = tuple(now - timedelta(hours=h) for h in (20, 5, 1))
    history = [AttemptHistory("ruleSets/custom", 0, times)]
    outcome = decide([limited], NEW_YORK, now, attempts=history)
    assert codes(outcome) == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
    # The oldest attempt (20 h ago) leaves the 24-hour window in 4 hours.
    assert outcome.next_allowed == now + timedelta(hours=4)
    later = decide([limited], NEW_YORK, now + timedelta(hours=4), attempts=history)
    assert later.allowed


def test_attempts_since_local_midnight() -> None:
    rule = rule_set_pb2.AttemptRule(max_attempts=1, since_local_midnight=True)
    daily = rule_set(attempt_rules=[rule])
    now = at("America/New_York", 2026, 11, 24, 15, 0)
    history = [AttemptHistory("ruleSets/custom", 0, (at("America/New_York", 2026, 11, 24, 9, 0),))]
    outcome = decide([daily], NEW_YORK, now, attempts=history)
    assert not outcome.allowed
    assert outcome.next_allowed == at(
        "America/New_York", 2026, 11, 25, 8, 0
    )  # midnight, then the window
    yesterday = [
        AttemptHistory("ruleSets/custom", 0, (at("America/New_York", 2026, 11, 23, 20, 0),))
    ]
    assert decide([daily], NEW_YORK, now, attempts=yesterday).allowed


def test_regulation_f_presets_seven_calls_in_seven_days() -> None:
    reg_f = compile_rule_set(preset(rule_set_pb2.RULE_SET_PRESET_US_TCPA_REG_F))
    now = at("America/New_York", 2026, 11, 24, 12, 0)
    seven = tuple(now - timedelta(days=d, hours=1) for d in range(7))
    outcome = decide([reg_f], NEW_YORK, now, attempts=[AttemptHistory(reg_f.name, 0, seven)])
    assert codes(outcome) == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
    six = seven[:6]
    assert decide([reg_f], NEW_YORK, now, attempts=[AttemptHistory(reg_f.name, 0, six)]).allowed


def test_suppression_denies_with_no_next_time() -> None:
    outcome = decide(
        [TCPA],
        NEW_YORK,
        at("America/New_York", 2026, 11, 24, 12, 0),
        suppressed_by=["suppressionLists/dnc"],
    )
    assert codes(outcome) == [decision_pb2.DENIAL_CODE_SUPPRESSED]
    assert outcome.denials[0].source == "suppressionLists/dnc"
    assert outcome.next_allowed is None


def test_every_failing_rule_is_reported() -> None:
    calendar = rule_set(holiday_calendars=[rule_set_pb2.HolidayCalendar(country="US")])
    outcome = decide(
        [calendar],
        NEW_YORK,
        at("America/New_York", 2026, 11, 26, 22, 0),
        suppressed_by=["suppressionLists/x"],
    )
    assert sorted(codes(outcome)) == sorted(
        [
            decision_pb2.DENIAL_CODE_OUTSIDE_CONTACT_WINDOW,
            decision_pb2.DENIAL_CODE_BLACKOUT_DATE,
            decision_pb2.DENIAL_CODE_SUPPRESSED,
        ]
    )


def test_invalid_rule_sets_name_every_bad_field() -> None:
    backwards = rule_set_pb2.ContactWindow()
    backwards.start_time.hours, backwards.end_time.hours = 21, 8
    message = rule_set_pb2.RuleSet(
        display_name="",
        contact_windows=[backwards],
        attempt_rules=[rule_set_pb2.AttemptRule(max_attempts=0)],
        default_time_zone="Mars/Olympus",
        campaigns=["campaigns/spring", "summer", "campaigns/", "campaigns/" + "x" * 256],
    )
    check = Validator()
    validate_rule_set(message, check)
    with pytest.raises(InvalidArgument) as caught:
        check.check()
    fields = {v.field for v in caught.value.violations}
    assert {
        "rule_set.display_name",
        "rule_set.contact_windows[0]",
        "rule_set.attempt_rules[0].max_attempts",
        "rule_set.attempt_rules[0]",
        "rule_set.default_time_zone",
        "rule_set.campaigns[1]",
        "rule_set.campaigns[2]",
        "rule_set.campaigns[3]",
    } <= fields
    assert "rule_set.campaigns[0]" not in fields


def _violations(message: rule_set_pb2.RuleSet) -> dict[str, str]:
    check = Validator()
    validate_rule_set(message, check)
    return {v.field: v.description for v in check.violations}


def test_a_rule_sets_lists_have_limits() -> None:
    """Decisions scan them per contact and place, and every replica recompiles them on each
    change: 20,000 area-code overrides were accepted."""
    override = rule_set_pb2.WindowOverride(area_code="212")
    override.contact_windows.add().end_time.hours = 17
    day = rule_set_pb2.BlackoutDate()
    day.date.year, day.date.month, day.date.day = 2027, 1, 1
    at_most = rule_set_pb2.RuleSet(
        display_name="big", window_overrides=[override] * 1000, blackout_dates=[day] * 1000
    )
    assert _violations(at_most) == {}
    too_many = rule_set_pb2.RuleSet(
        display_name="bigger",
        window_overrides=[override] * 1001,
        blackout_dates=[day] * 1001,
        attempt_rules=[rule_set_pb2.AttemptRule(max_attempts=1)] * 33,
    )
    assert {
        field: description
        for field, description in _violations(too_many).items()
        if "[" not in field
    } == {
        "rule_set.window_overrides": "at most 1,000",
        "rule_set.blackout_dates": "at most 1,000",
        "rule_set.attempt_rules": "at most 32",
    }


def test_a_rule_that_could_match_nothing_is_refused() -> None:
    """A value that matches no contact, call or day would not restrict anything: a wrong
    allow. Every such value is a field violation, and a stored one fails to compile."""
    odd_minutes = rule_set_pb2.ContactWindow()
    odd_minutes.start_time.hours, odd_minutes.start_time.minutes = 8, 90
    odd_minutes.end_time.hours = 20
    fraction = rule_set_pb2.ContactWindow()
    fraction.start_time.hours, fraction.end_time.hours, fraction.end_time.nanos = 8, 20, 5
    february_30 = rule_set_pb2.BlackoutDate()
    february_30.date.year, february_30.date.month, february_30.date.day = 2027, 2, 30
    no_month = rule_set_pb2.BlackoutDate()
    no_month.date.day = 4
    message = rule_set_pb2.RuleSet(
        display_name="typos",
        channels=[99],  # type: ignore[list-item]
        contact_windows=[odd_minutes, fraction],
        window_overrides=[
            rule_set_pb2.WindowOverride(state_province="Floride"),
            rule_set_pb2.WindowOverride(area_code="(305)"),
            rule_set_pb2.WindowOverride(postal_code="331**"),
        ],
        blackout_dates=[february_30, no_month],
        holiday_calendars=[
            rule_set_pb2.HolidayCalendar(country="XX"),
            rule_set_pb2.HolidayCalendar(country="US", subdivision="ZZ"),
        ],
        attempt_rules=[
            rule_set_pb2.AttemptRule(
                max_attempts=3,
                since_local_midnight=False,
                scope=77,  # type: ignore[arg-type]
                counted_results=[500],  # type: ignore[list-item]
                channels=[channel_pb2.CHANNEL_UNSPECIFIED],
            )
        ],
        suppression_lists=["do not call"],
    )
    assert set(_violations(message)) == {
        "rule_set.channels",
        "rule_set.contact_windows[0].start_time",
        "rule_set.contact_windows[1].end_time",
        "rule_set.window_overrides[0].state_province",
        "rule_set.window_overrides[1].area_code",
        "rule_set.window_overrides[2].postal_code",
        "rule_set.blackout_dates[0].date",
        "rule_set.blackout_dates[1].date",
        "rule_set.holiday_calendars[0].country",
        "rule_set.holiday_calendars[1].subdivision",
        "rule_set.attempt_rules[0].since_local_midnight",
        "rule_set.attempt_rules[0].scope",
        "rule_set.attempt_rules[0].counted_results",
        "rule_set.attempt_rules[0].channels",
        "rule_set.suppression_lists[0]",
    }
    message.name = "ruleSets/typos"
    with pytest.raises(InvalidRuleSet, match=r"ruleSets/typos\.window_overrides\[0\]"):
        compile_rule_set(message)


def test_the_values_rules_are_written_with_are_accepted() -> None:
    closing = rule_set_pb2.ContactWindow()
    closing.start_time.hours, closing.end_time.hours = 18, 24  # until the day ends
    leap_day = rule_set_pb2.BlackoutDate()
    leap_day.date.month, leap_day.date.day = 2, 29  # every year that has one
    message = rule_set_pb2.RuleSet(
        display_name="fine",
        channels=[channel_pb2.CHANNEL_VOICE, channel_pb2.CHANNEL_SMS],
        contact_windows=[closing],
        window_overrides=[
            rule_set_pb2.WindowOverride(state_province="Nova Scotia"),
            rule_set_pb2.WindowOverride(state_province="pr"),
            rule_set_pb2.WindowOverride(area_code="305"),
            rule_set_pb2.WindowOverride(postal_code="K1A 0B1"),
            rule_set_pb2.WindowOverride(postal_code="331*"),
        ],
        blackout_dates=[leap_day],
        holiday_calendars=[rule_set_pb2.HolidayCalendar(country="ca", subdivision="qc")],
        suppression_lists=["suppressionLists/dnc", "dnc-by-id"],
    )
    assert _violations(message) == {}
    assert _violations(preset(rule_set_pb2.RULE_SET_PRESET_US_TCPA_REG_F)) == {}
