"""What the decision engine remembers between decisions never outlives the rules it was
computed from, and never crosses the second it was computed for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.compliance.domain.decide import Place
from cxmesh_server.compliance.domain.rules import compile_rule_set, preset
from cxmesh_server.compliance.engine import (
    ALLOWED_PER_PROFILE,
    PROFILES_PER_VIEW,
    Located,
    _facts,
    _located,
    _placed,
    _prepare,
    _TimeVerdicts,
    _View,
)
from cxmesh_server.compliance.questions import question

NEW_YORK_PLACE = Place(zones=("America/New_York",))
NEW_YORK = _located(NEW_YORK_PLACE)
# 20:59:59.900 in New York: one tenth of a second before the TCPA window closes.
BEFORE_NINE = datetime(2026, 11, 24, 1, 59, 59, 900_000, tzinfo=UTC)


def view(rule_set: rule_set_pb2.RuleSet) -> _View:
    return _View("1", [compile_rule_set(rule_set)], "1", {})


def tcpa() -> rule_set_pb2.RuleSet:
    return rule_set_pb2.RuleSet(name="ruleSets/r", display_name="tcpa")


def morning_only() -> rule_set_pb2.RuleSet:
    rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="morning", revision=2)
    window = rules.contact_windows.add()
    window.start_time.hours, window.end_time.hours = 8, 12
    return rules


def test_a_verdict_is_shared_within_its_second_only() -> None:
    verdicts = _TimeVerdicts()
    profile = view(tcpa()).profile("", 1)
    second = int(BEFORE_NINE.timestamp())
    assert not verdicts.get(profile, NEW_YORK, BEFORE_NINE, second).denials
    at_nine = BEFORE_NINE + timedelta(milliseconds=100)
    assert verdicts.get(profile, NEW_YORK, at_nine, second + 1).denials


def test_a_rule_change_within_the_same_second_is_not_answered_from_the_cache() -> None:
    verdicts = _TimeVerdicts()
    second = int(BEFORE_NINE.timestamp())
    assert not verdicts.get(view(tcpa()).profile("", 1), NEW_YORK, BEFORE_NINE, second).denials
    changed = view(morning_only()).profile("", 1)
    assert verdicts.get(changed, NEW_YORK, BEFORE_NINE, second).denials


def test_a_decision_the_time_rules_alone_deny_is_shared_within_its_second_only() -> None:
    verdicts = _TimeVerdicts()
    profile = view(tcpa()).profile("", 1)
    at_nine = BEFORE_NINE + timedelta(milliseconds=100)
    second = int(at_nine.timestamp())
    denied = verdicts.denied(profile, NEW_YORK, verdicts.get(profile, NEW_YORK, at_nine, second))
    assert not denied.allowed
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_OUTSIDE_CONTACT_WINDOW]
    assert denied.time_zone == "America/New_York"
    assert list(denied.rule_set_revisions) == list(profile.revisions)
    # 08:00 the next morning in New York
    assert denied.next_allowed_time.ToDatetime(UTC) == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
    later = at_nine + timedelta(milliseconds=800)
    verdict = verdicts.get(profile, NEW_YORK, later, second)
    assert verdicts.denied(profile, NEW_YORK, verdict) is denied
    next_second = verdicts.get(profile, NEW_YORK, later + timedelta(seconds=1), second + 1)
    assert verdicts.denied(profile, NEW_YORK, next_second) is not denied
    other_rules = view(morning_only()).profile("", 1)
    verdict = verdicts.get(other_rules, NEW_YORK, later, second + 1)
    assert list(verdicts.denied(other_rules, NEW_YORK, verdict).rule_set_revisions) == [
        "ruleSets/r@2"
    ]


def test_profiles_pick_campaign_rules_and_their_suppression_lists() -> None:
    bound = rule_set_pb2.RuleSet(name="ruleSets/b", display_name="b", campaigns=["campaigns/x"])
    bound.suppression_lists.append("suppressionLists/named")
    tenant_wide = rule_set_pb2.RuleSet(name="ruleSets/t", display_name="t")
    rules = _View(
        "1",
        [compile_rule_set(bound), compile_rule_set(tenant_wide)],
        "1",
        {"all": [], "named": ["campaigns/other"], "x-only": ["campaigns/x"], "y-only": ["y"]},
    )
    for_x = rules.profile("campaigns/x", 1)
    assert [r.name for r in for_x.rule_sets] == ["ruleSets/b"]
    assert for_x.suppression_lists == ("all", "named", "x-only")
    elsewhere = rules.profile("campaigns/z", 1)
    assert [r.name for r in elsewhere.rule_sets] == ["ruleSets/t"]
    assert elsewhere.suppression_lists == ("all",)
    assert rules.profile("campaigns/x", 1) is for_x  # worked out once


def test_a_campaigns_rule_set_for_another_channel_leaves_the_tenants_default_in_force() -> None:
    texts_only = rule_set_pb2.RuleSet(
        name="ruleSets/sms",
        display_name="texts",
        campaigns=["campaigns/x"],
        channels=[channel_pb2.CHANNEL_SMS],
    )
    reg_f = preset(rule_set_pb2.RULE_SET_PRESET_US_TCPA_REG_F, "ruleSets/tenant")
    rules = _View("1", [compile_rule_set(texts_only), compile_rule_set(reg_f)], "1", {})
    voice = rules.profile("campaigns/x", channel_pb2.CHANNEL_VOICE)
    assert [r.name for r in voice.rule_sets] == ["ruleSets/tenant"]
    assert voice.counts_clients  # Regulation F's 7-in-7 still counts
    sms = rules.profile("campaigns/x", channel_pb2.CHANNEL_SMS)
    assert [r.name for r in sms.rule_sets] == ["ruleSets/sms"]


def test_a_place_keeps_its_number_and_numbers_are_never_shared() -> None:
    again = Place(zones=("America/New_York",))
    assert _located(again).place_number == NEW_YORK.place_number
    assert _located(Place(zones=("America/Chicago",))).place_number != NEW_YORK.place_number


def test_the_numbers_of_one_place_share_its_placing() -> None:
    def located(number: str) -> Located | None:
        return _facts(number, "US", "", "", "", "America/Chicago", (), remember=True)[2]

    manhattan = located("+12125550100")
    assert manhattan is not None
    assert manhattan.zone_label == "America/New_York"
    assert located("+12125550199") is manhattan
    assert located("+14155550100") is not manhattan


def test_an_email_address_is_in_no_area_code_whatever_it_starts_with() -> None:
    kind, _, located, _ = _facts(
        "+1212ann@example.com", "US", "", "10001", "", "", (), remember=True
    )
    assert kind == "email"
    assert located is not None
    assert located.place.area_code == ""  # rules for area code 212 are not its rules


def test_a_request_of_kilobytes_is_decided_but_not_remembered() -> None:
    rules = view(tcpa())
    usual = decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address="+12125550100", postal_code="10001")
    )
    junk = decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address="+12125550101", postal_code="1" * 2000)
    )
    assert _prepare("t", question(usual), rules) is _prepare("t", question(usual), rules)
    places = _placed.cache_info().currsize
    first, again = _prepare("t", question(junk), rules), _prepare("t", question(junk), rules)
    assert first.address == again.address == "+12125550101"
    assert first is not again
    assert len(rules.subjects) == 1
    assert _placed.cache_info().currsize == places


def test_campaigns_and_zones_without_end_are_remembered_up_to_a_bound() -> None:
    """A dialer that puts a record's id where the campaign goes, or ever new zone
    candidates, must not grow the process until it dies: a view lives until its rules
    change, which may be months."""
    rules = view(tcpa())
    for n in range(PROFILES_PER_VIEW + 10):
        rules.profile(f"campaigns/c{n}", channel_pb2.CHANNEL_VOICE)
    assert len(rules.profiles) <= PROFILES_PER_VIEW
    profile = rules.profile("", channel_pb2.CHANNEL_VOICE)
    for n in range(ALLOWED_PER_PROFILE + 10):
        assert profile.allowed_in(f"America/New_York,zone-{n}").allowed
    assert len(profile.allowed) <= ALLOWED_PER_PROFILE
