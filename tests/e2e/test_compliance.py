"""Compliance through the edge: rule sets with audit, decisions from Redis, fail-closed,
suppression from the lists service, attempts, OCS 200/409."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxmesh.compliance.v1 import (
    decision_pb2,
    decision_service_pb2,
    decision_service_pb2_grpc,
    rule_set_pb2,
    rule_set_service_pb2,
    rule_set_service_pb2_grpc,
)
from cxmesh.iam.v1 import api_key_pb2, api_key_service_pb2, api_key_service_pb2_grpc
from cxmesh.lists.v1 import suppression_pb2, suppression_service_pb2, suppression_service_pb2_grpc
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.attempts import AttemptReport
from cxmesh_server.compliance.engine import SETTINGS_RETRY_SECONDS
from cxmesh_server.compliance.mirror import (
    LOADED_KEY,
    RulesMirror,
    attempt_index_key,
    unstored_attempts_key,
)
from cxmesh_server.compliance.store import RESTORE_LOCK
from cxmesh_server.iam.store import LOADED_KEY as IAM_LOADED
from cxmesh_server.mirrors.suppression import LOADED_KEY as SUPPRESSION_LOADED
from cxmesh_server.mirrors.tenants import settings_key
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.stack.datastores import EmbeddedRedis, start_redis
from cxmesh_server.stack.mesh import Mesh, ServiceInstance, wait_serving
from tests.e2e.scrape import metric
from tests.integration.compliance_mirrors import record_without_postgres


class Compliance:
    def __init__(self, channel: grpc.Channel, token: str, tenant: str) -> None:
        self.md = (("authorization", f"Bearer {token}"),)
        self.token = token
        self.tenant = tenant
        self.rules = rule_set_service_pb2_grpc.RuleSetServiceStub(channel)
        self.decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
        self.suppression = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        self.keys = api_key_service_pb2_grpc.ApiKeyServiceStub(channel)

    def do_not_call(
        self, name: str, *numbers: str, campaigns: tuple[str, ...] = ()
    ) -> suppression_pb2.SuppressionList:
        """A new suppression list (tenant-wide, or the campaigns') holding the numbers."""
        created = self.suppression.CreateSuppressionList(
            suppression_service_pb2.CreateSuppressionListRequest(
                suppression_list=suppression_pb2.SuppressionList(
                    display_name=name, campaigns=campaigns
                )
            ),
            metadata=self.md,
            timeout=10,
        ).suppression_list
        if numbers:
            self.suppression.CreateSuppressionEntries(
                suppression_service_pb2.CreateSuppressionEntriesRequest(
                    parent=created.name,
                    entries=[suppression_pb2.SuppressionEntry(phone_number=n) for n in numbers],
                ),
                metadata=self.md,
                timeout=10,
            )
        return created

    def dialer(self) -> dict[str, str]:
        """The header of a new API key with the dialer role, as OCS sends it."""
        key = self.keys.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name="ocs", roles=["dialer"])
            ),
            metadata=self.md,
            timeout=10,
        ).key
        return {"x-api-key": key}

    def record(self, attempts: list[decision_pb2.Attempt]) -> int:
        """Records the attempts; how many were new."""
        return self.decisions.RecordAttempts(
            decision_service_pb2.RecordAttemptsRequest(attempts=attempts),
            metadata=self.md,
            timeout=10,
        ).new_attempt_count

    def create(self, rule_set: rule_set_pb2.RuleSet) -> rule_set_pb2.RuleSet:
        return self.rules.CreateRuleSet(
            rule_set_service_pb2.CreateRuleSetRequest(rule_set=rule_set),
            metadata=self.md,
            timeout=10,
        ).rule_set

    def check(self, address: str, **contact: Any) -> decision_pb2.Decision:
        request = decision_pb2.DecisionRequest(
            contact=decision_pb2.Contact(address=address, **contact)
        )
        return self.decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=request),
            metadata=self.md,
            timeout=10,
        ).decision

    def explain(
        self, address: str, moment: datetime, campaign: str = "", **contact: Any
    ) -> decision_service_pb2.ExplainDecisionResponse:
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        request = decision_pb2.DecisionRequest(
            contact=decision_pb2.Contact(address=address, **contact),
            decision_time=stamp,
            campaign=campaign,
        )
        return self.decisions.ExplainDecision(
            decision_service_pb2.ExplainDecisionRequest(decision_request=request),
            metadata=self.md,
            timeout=10,
        )


def all_day(name: str = "all day", **fields: object) -> rule_set_pb2.RuleSet:
    message = rule_set_pb2.RuleSet(display_name=name, **fields)  # type: ignore[arg-type]
    window = message.contact_windows.add()
    window.end_time.hours = 24
    return message


def limited(
    name: str,
    max_attempts: int,
    window: timedelta,
    scope: rule_set_pb2.AttemptScope.ValueType = rule_set_pb2.ATTEMPT_SCOPE_UNSPECIFIED,
) -> rule_set_pb2.RuleSet:
    """Any hour, at most `max_attempts` in `window` (counted by `scope`)."""
    rules = all_day(name)
    rules.attempt_rules.add(max_attempts=max_attempts, scope=scope).window.FromTimedelta(window)
    return rules


@pytest.fixture
def compliance(mesh: Mesh, key: SigningKey, new_tenant: Callable[[], str]) -> Iterator[Compliance]:
    tenant = new_tenant()
    with grpc.insecure_channel(mesh.edge_target) as channel:
        yield Compliance(channel, key.mint(tenant=tenant, roles=["admin"], subject="alice"), tenant)


def _tenant_with(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str], **settings: str
) -> Compliance:
    """A new tenant created with these settings (default_time_zone, default_region)."""
    tenant = new_tenant(**settings)
    channel = grpc.insecure_channel(mesh.edge_target)
    return Compliance(channel, key.mint(tenant=tenant, roles=["admin"]), tenant)


TOLL_FREE = "+1 800 555 0199"  # a non-geographic number: no zone of its own


def test_a_number_with_no_zone_of_its_own_takes_the_tenants_zone(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str]
) -> None:
    pacific = _tenant_with(mesh, key, new_tenant, default_time_zone="America/Los_Angeles")
    early = datetime(2026, 7, 15, 14, 30, tzinfo=UTC)  # 10:30 in New York, 07:30 in LA
    denied = pacific.explain(TOLL_FREE, early)
    assert [d.code for d in denied.decision.denials] == [
        decision_pb2.DENIAL_CODE_OUTSIDE_CONTACT_WINDOW
    ]
    assert denied.decision.time_zone == "America/Los_Angeles"
    assert pacific.explain(TOLL_FREE, early + timedelta(hours=1)).decision.allowed
    # A tenant that never chose a zone has UTC, nobody's local time: no zone is guessed.
    unset = _tenant_with(mesh, key, new_tenant)
    assert [d.code for d in unset.explain(TOLL_FREE, early).decision.denials] == [
        decision_pb2.DENIAL_CODE_UNKNOWN_TIME_ZONE
    ]


def test_national_numbers_are_read_in_the_tenants_region_by_decisions_and_attempts(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str]
) -> None:
    british = _tenant_with(
        mesh, key, new_tenant, default_region="GB", default_time_zone="Europe/London"
    )
    british.create(limited("one a day", 1, timedelta(days=1)))
    noon = datetime(2026, 7, 15, 11, 0, tzinfo=UTC)  # 12:00 in London
    explained = british.explain("020 7946 0000", noon)
    assert explained.decision.allowed and explained.decision.time_zone == "Europe/London"
    assert british.record([_attempt("first", "020 7946 0000")]) == 1
    assert not british.check("+44 20 7946 0000").allowed  # the same number, counted


def test_attempts_with_national_numbers_wait_for_the_tenants_region(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str], redis_server: EmbeddedRedis
) -> None:
    british = _tenant_with(mesh, key, new_tenant, default_region="GB")
    client = redis.Redis(port=redis_server.port)
    try:
        # The tenant's settings lost (Redis replaced), and IAM has not mirrored them again.
        client.delete(settings_key(british.tenant))
        with pytest.raises(grpc.RpcError) as refused:
            british.record([_attempt("national", "020 7946 0000")])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert british.record([_attempt("international", "+44 20 7946 0001")]) == 1
        client.delete(IAM_LOADED)  # IAM notices and mirrors every tenant again
        deadline = time.monotonic() + 15
        while not client.exists(settings_key(british.tenant)) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(SETTINGS_RETRY_SECONDS)
        assert british.record([_attempt("national", "020 7946 0000")]) == 1
    finally:
        client.close()


def test_a_rule_set_created_from_a_preset_has_the_presets_rules(
    compliance: Compliance, edge: httpx.Client
) -> None:
    headers = {"authorization": f"Bearer {compliance.token}"}
    preset = "RULE_SET_PRESET_US_TCPA_REG_F"
    created = edge.post(
        "/v1/ruleSets", json={"displayName": "collections", "preset": preset}, headers=headers
    )
    assert created.status_code == 200
    rules = created.json()["ruleSet"]
    assert rules["preset"] == preset
    assert rules["attemptRules"][0]["maxAttempts"] == 7
    assert rules["contactWindows"] == [{"startTime": {"hours": 8}, "endTime": {"hours": 21}}]
    # Seven calls about one debt to one person in a week, then no more.
    attempts = [_attempt(f"call-{n}", "+14155550171") for n in range(7)]
    for attempt in attempts:
        attempt.contact.client_id = "debtor-171"
    assert compliance.record(attempts) == 7
    eighth = compliance.explain("+14155550171", datetime.now(UTC), client_id="debtor-171")
    assert decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT in [d.code for d in eighth.decision.denials]
    for body in (
        {"displayName": "both", "preset": preset, "contactWindows": [{"endTime": {"hours": 20}}]},
        {"displayName": "unknown", "preset": 99},
    ):
        refused = edge.post("/v1/ruleSets", json=body, headers=headers)
        assert refused.status_code == 400, body
        assert refused.json()["details"][1]["fieldViolations"][0]["field"] == "rule_set.preset"


def test_rule_set_changes_are_versioned_and_audited(compliance: Compliance) -> None:
    created = compliance.create(all_day("audited"))
    assert created.revision == 1
    updated = compliance.rules.UpdateRuleSet(
        rule_set_service_pb2.UpdateRuleSetRequest(
            rule_set=rule_set_pb2.RuleSet(
                name=created.name, display_name="renamed", etag=created.etag
            ),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=compliance.md,
        timeout=10,
    ).rule_set
    assert (updated.revision, updated.display_name) == (2, "renamed")
    events = compliance.rules.ListAuditEvents(
        rule_set_service_pb2.ListAuditEventsRequest(parent=created.name),
        metadata=compliance.md,
        timeout=10,
    ).audit_events
    assert [(e.actor, e.before.display_name, e.after.display_name) for e in events] == [
        ("alice", "audited", "renamed"),
        ("alice", "", "audited"),
    ]


def test_a_deleted_rule_set_keeps_its_audit_trail_and_one_never_created_is_404(
    compliance: Compliance, edge: httpx.Client
) -> None:
    created = compliance.create(all_day("short-lived"))
    compliance.rules.DeleteRuleSet(
        rule_set_service_pb2.DeleteRuleSetRequest(name=created.name, etag=created.etag),
        metadata=compliance.md,
        timeout=10,
    )
    headers = {"authorization": f"Bearer {compliance.token}"}
    trail = edge.get(f"/v1/{created.name}/auditEvents", headers=headers)
    assert trail.status_code == 200
    assert [e.get("before", {}).get("displayName") for e in trail.json()["auditEvents"]] == [
        "short-lived",
        None,
    ]
    assert edge.get("/v1/ruleSets/never-created/auditEvents", headers=headers).status_code == 404


def test_invalid_rule_sets_are_400_with_field_violations(
    compliance: Compliance, edge: httpx.Client
) -> None:
    response = edge.post(
        "/v1/ruleSets",
        json={
            "displayName": "bad",
            "contactWindows": [{"startTime": {"hours": 21}, "endTime": {"hours": 8}}],
        },
        headers={"authorization": f"Bearer {compliance.token}"},
    )
    assert response.status_code == 400
    assert (
        response.json()["details"][1]["fieldViolations"][0]["field"]
        == "rule_set.contact_windows[0]"
    )
    # Postgres refuses NUL: these were 500s.
    response = edge.post(
        "/v1/ruleSets",
        params={"requestId": "r\x00"},
        json={"displayName": "bad\u0000name"},
        headers={"authorization": f"Bearer {compliance.token}"},
    )
    assert response.status_code == 400
    assert [v["field"] for v in response.json()["details"][1]["fieldViolations"]] == [
        "rule_set.display_name",
        "request_id",
    ]


def test_the_default_window_and_dst_through_explain(compliance: Compliance) -> None:
    # No rule set: the built-in 08:00–21:00. 2026-03-08 is the spring-forward day in New York.
    explained = compliance.explain("+1 212 555 0101", datetime(2026, 3, 8, 11, 59, tzinfo=UTC))
    assert not explained.decision.allowed
    assert explained.decision.next_allowed_time.ToDatetime(tzinfo=UTC) == datetime(
        2026, 3, 8, 12, 0, tzinfo=UTC
    )
    assert explained.decision.time_zone == "America/New_York"
    assert compliance.explain(
        "+1 212 555 0101", datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    ).decision.allowed


def test_explain_shows_the_verdicts_of_the_rule_sets_the_decision_used(
    compliance: Compliance,
) -> None:
    noon = datetime(2026, 7, 15, 16, 0, tzinfo=UTC)  # 12:00 in New York
    # No rule set: the built-in default's verdicts.
    (builtin,) = [
        v.rule for v in compliance.explain("+1 212 555 0102", noon).verdicts if "#contact" in v.rule
    ]
    assert builtin == "ruleSets/builtin-default#contact_windows"
    mornings = all_day("campaign x: mornings", campaigns=["campaigns/x"])
    mornings.contact_windows[0].start_time.hours, mornings.contact_windows[0].end_time.hours = 8, 11
    bound = compliance.create(mornings)
    default = compliance.create(all_day("tenant default"))
    # Without a campaign, the tenant default decides: campaign x's mornings are not shown.
    explained = compliance.explain("+1 212 555 0102", noon)
    assert explained.decision.allowed
    assert {v.rule.partition("#")[0] for v in explained.verdicts} == {default.name}
    on_x = compliance.explain("+1 212 555 0102", noon, campaign="campaigns/x")
    assert not on_x.decision.allowed
    assert {v.rule.partition("#")[0] for v in on_x.verdicts} == {bound.name}


def test_explain_names_every_suppression_list_checked_and_those_that_do_not_exist(
    compliance: Compliance,
) -> None:
    dnc = compliance.do_not_call("tenant dnc", "2125550103")
    # A typo in the list's id: the rule set restricts nothing by it.
    compliance.create(all_day("named", suppression_lists=["suppressionLists/dnc-typo"]))
    noon = datetime(2026, 7, 15, 16, 0, tzinfo=UTC)
    verdicts = {
        v.rule: (v.allowed, v.detail)
        for v in compliance.explain("+1 212 555 0102", noon).verdicts
        if v.rule.startswith("suppressionLists/")
    }
    assert verdicts[dnc.name] == (True, "the contact is not on it")
    allowed, detail = verdicts["suppressionLists/dnc-typo"]
    assert allowed and "no such list" in detail
    on_it = [
        (v.allowed, v.detail)
        for v in compliance.explain("+1 212 555 0103", noon).verdicts
        if v.rule == dnc.name
    ]
    assert on_it == [(False, "on a suppression list")]


def _eight_to_eight(override: rule_set_pb2.WindowOverride) -> rule_set_pb2.RuleSet:
    """A rule set whose override closes at 20:00 where it applies (21:00 elsewhere)."""
    window = override.contact_windows.add()
    window.start_time.hours, window.end_time.hours = 8, 20
    return rule_set_pb2.RuleSet(display_name="closes at 20:00", window_overrides=[override])


EVENING = datetime(2026, 7, 16, 0, 30, tzinfo=UTC)  # 20:30 in Miami and New York


def test_a_state_window_applies_by_the_area_code_the_zip_code_or_the_named_state(
    compliance: Compliance,
) -> None:
    compliance.create(_eight_to_eight(rule_set_pb2.WindowOverride(state_province="FL")))
    evening = EVENING
    for address, contact in (
        ("+1 305 555 0100", {}),  # a Florida area code, no state given
        ("+1 212 555 0100", {"postal_code": "33101"}),  # a Miami ZIP code
        ("+1 212 555 0100", {"state_province": "Florida"}),
    ):
        explained = compliance.explain(address, evening, **contact)
        assert not explained.decision.allowed, (address, contact)
        (window_verdict,) = [v for v in explained.verdicts if v.rule.endswith("#contact_windows")]
        assert "08:00–20:00" in window_verdict.detail
    assert compliance.explain("+1 212 555 0100", evening).decision.allowed


def test_a_postal_code_window_applies_to_the_zip_plus_4_of_its_zip_code(
    compliance: Compliance,
) -> None:
    compliance.create(_eight_to_eight(rule_set_pb2.WindowOverride(postal_code="33101")))
    for written in ("33101", "33101-1234", "331011234"):
        assert not compliance.explain(
            "+1 212 555 0100", EVENING, postal_code=written
        ).decision.allowed, written
    assert compliance.explain("+1 212 555 0100", EVENING, postal_code="33102").decision.allowed


def test_suppression_entries_from_the_lists_service_deny_at_once(compliance: Compliance) -> None:
    compliance.create(all_day())
    assert compliance.check("+1 415 555 0101").allowed
    dnc = compliance.suppression.CreateSuppressionList(
        suppression_service_pb2.CreateSuppressionListRequest(
            suppression_list=suppression_pb2.SuppressionList(display_name="dnc")
        ),
        metadata=compliance.md,
        timeout=10,
    ).suppression_list
    compliance.suppression.CreateEmergencySuppressionEntry(
        suppression_service_pb2.CreateEmergencySuppressionEntryRequest(
            parent=dnc.name, entry=suppression_pb2.SuppressionEntry(phone_number="(415) 555-0101")
        ),
        metadata=compliance.md,
        timeout=10,
    )
    decision = compliance.check("+1 415 555 0101")
    assert [d.code for d in decision.denials] == [decision_pb2.DENIAL_CODE_SUPPRESSED]
    assert decision.denials[0].source == dnc.name
    assert compliance.check("+1 415 555 0102").allowed
    compliance.suppression.CreateSuppressionEntries(
        suppression_service_pb2.CreateSuppressionEntriesRequest(
            parent=dnc.name,
            entries=[
                suppression_pb2.SuppressionEntry(email=" Jane.Doe@Example.com"),
                suppression_pb2.SuppressionEntry(client_id=" CRM-77 "),
            ],
        ),
        metadata=compliance.md,
        timeout=10,
    )
    # Matched as the lists service stores them: trimmed, and emails in lower case.
    for address, contact in (
        ("jane.doe@EXAMPLE.com ", {"time_zone": "Europe/London"}),
        ("+1 415 555 0103", {"client_id": "CRM-77 "}),
    ):
        denied = compliance.check(address, **contact)
        assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_SUPPRESSED], address


def test_a_stream_answers_every_question_once_by_its_correlation_id(
    compliance: Compliance,
) -> None:
    compliance.create(all_day("streamed"))
    questions = [
        decision_service_pb2.PreValidateStreamRequest(
            correlation_id=f"q{n}",
            decision_request=decision_pb2.DecisionRequest(
                contact=decision_pb2.Contact(address=f"+1415555{1000 + n:04d}")
            ),
        )
        for n in range(300)
    ]
    questions.append(
        decision_service_pb2.PreValidateStreamRequest(
            correlation_id="no-address", decision_request=decision_pb2.DecisionRequest()
        )
    )
    questions.append(
        decision_service_pb2.PreValidateStreamRequest(
            correlation_id="x" * 65,
            decision_request=decision_pb2.DecisionRequest(
                contact=decision_pb2.Contact(address="+14155550170")
            ),
        )
    )
    streamed = list(
        compliance.decisions.PreValidateStream(iter(questions), metadata=compliance.md, timeout=30)
    )
    assert sorted(a.correlation_id for a in streamed) == sorted(q.correlation_id for q in questions)
    answers = {a.correlation_id: a.decision for a in streamed}
    assert all(answers[f"q{n}"].allowed for n in range(300))
    for bad, field in (("no-address", "contact.address"), ("x" * 65, "correlation_id")):
        assert [d.code for d in answers[bad].denials] == [decision_pb2.DENIAL_CODE_INVALID_ADDRESS]
        assert field in answers[bad].denials[0].reason


def test_attempts_count_once_per_attempt_id_and_limit_contacts(compliance: Compliance) -> None:
    limited = all_day("two an hour")
    rule = limited.attempt_rules.add(max_attempts=2)
    rule.window.FromTimedelta(timedelta(hours=1))
    compliance.create(limited)

    def report(attempt_id: str) -> int:
        attempt = decision_pb2.Attempt(
            attempt_id=attempt_id,
            contact=decision_pb2.Contact(address="+14155550111"),
            call_result=call_result_pb2.CALL_RESULT_NO_ANSWER,
        )
        return compliance.decisions.RecordAttempts(
            decision_service_pb2.RecordAttemptsRequest(attempts=[attempt]),
            metadata=compliance.md,
            timeout=10,
        ).new_attempt_count

    assert report("a1") == 1
    assert report("a1") == 0  # the second report of an attempt replaces the first
    assert compliance.check("+1 415 555 0111").allowed
    assert report("a2") == 1
    denied = compliance.check("+1 415 555 0111")
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
    assert denied.HasField("next_allowed_time")


def _attempt(attempt_id: str, address: str) -> decision_pb2.Attempt:
    return decision_pb2.Attempt(
        attempt_id=attempt_id,
        contact=decision_pb2.Contact(address=address),
        call_result=call_result_pb2.CALL_RESULT_NO_ANSWER,
    )


def test_a_batch_of_attempts_is_recorded_whole_and_an_attempt_reported_twice_counts_once(
    compliance: Compliance,
) -> None:
    compliance.create(limited("two a day", 2, timedelta(days=1)))
    devices = [f"+1415555{n:04d}" for n in range(1000, 1200)]
    batch = [_attempt(f"{device}-{n}", device) for device in devices for n in (1, 2)]
    batch += [_attempt("twice", "+14155550131"), _attempt("twice", "+14155550131")]
    assert compliance.record(batch) == 401
    decisions = compliance.decisions.PreValidateBatch(
        decision_service_pb2.PreValidateBatchRequest(
            decision_requests=[
                decision_pb2.DecisionRequest(contact=decision_pb2.Contact(address=device))
                for device in devices
            ]
        ),
        metadata=compliance.md,
        timeout=10,
    ).decisions
    assert {tuple(d.code for d in decision.denials) for decision in decisions} == {
        (decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT,)
    }
    assert compliance.check("+1 415 555 0131").allowed  # one attempt, not two


def test_an_undefined_channel_or_call_result_or_a_control_character_is_refused(
    compliance: Compliance,
) -> None:
    # Attempt rules count the channels and results they name: a decision or an attempt of
    # a channel or result no one defined would match none of them.
    compliance.create(limited("one a day", 1, timedelta(days=1)))
    assert compliance.record([_attempt("made", "+14155550141")]) == 1
    undefined_channel = decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address="+14155550141"),
        channel=99,  # type: ignore[arg-type]
    )
    with pytest.raises(grpc.RpcError) as refused:
        compliance.decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=undefined_channel),
            metadata=compliance.md,
            timeout=10,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "decision_request.channel" in str(refused.value.details())

    odd_channel = _attempt("odd-channel", "+14155550142")
    odd_channel.channel = 99  # type: ignore[assignment]
    odd_result = _attempt("odd-result", "+14155550142")
    odd_result.call_result = 500  # type: ignore[assignment]
    # Attempts are stored in Postgres, which refuses NUL: these were 500s.
    nul_id = _attempt("nul\x00id", "+14155550142")
    nul_client = _attempt("nul-client", "+14155550142")
    nul_client.contact.client_id = "C\x00142"
    nul_email = _attempt("nul-email", "ada\x00@example.com")
    with pytest.raises(grpc.RpcError) as refused:
        compliance.record(
            [
                _attempt("fine", "+14155550142"),
                odd_channel,
                odd_result,
                nul_id,
                nul_client,
                nul_email,
            ]
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = str(refused.value.details())
    assert "attempts[1].channel" in details and "attempts[2].call_result" in details
    assert "attempts[3].attempt_id" in details and "attempts[4].contact.client_id" in details
    assert "attempts[5].contact.address" in details
    # Refused whole: nothing of the batch was recorded.
    assert compliance.check("+1 415 555 0142").allowed
    assert not compliance.check("+1 415 555 0141").allowed


def test_an_unknown_country_or_an_explanation_far_from_now_is_400(
    compliance: Compliance, edge: httpx.Client
) -> None:
    headers = {"authorization": f"Bearer {compliance.token}"}
    contact = {"address": "2125550100", "country": "XX"}
    answer = edge.post(
        "/v1/decisions:preValidate", json={"decisionRequest": {"contact": contact}}, headers=headers
    )
    assert answer.status_code == 400
    assert answer.json()["details"][1]["fieldViolations"][0]["field"] == (
        "decision_request.contact.country"
    )
    assert compliance.check("2125550100", country="us").time_zone == "America/New_York"
    for when in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):  # the calendar's ends
        request = {"contact": {"address": "2125550100"}, "decisionTime": when}
        answer = edge.post(
            "/v1/decisions:explain", json={"decisionRequest": request}, headers=headers
        )
        assert answer.status_code == 400, when
        assert answer.json()["details"][1]["fieldViolations"][0]["field"] == (
            "decision_request.decision_time"
        )


def test_a_campaign_no_binding_could_name_is_400(
    compliance: Compliance, edge: httpx.Client
) -> None:
    """Bindings name campaigns of up to 255 characters: a longer one is a dialer's mistake
    (and each would be remembered, in memory, as a campaign of its own)."""
    headers = {"authorization": f"Bearer {compliance.token}"}
    for campaign in ("x" * 256, "campaigns/" + "x" * 256):
        request = {"contact": {"address": "+12125550100"}, "campaign": campaign}
        answer = edge.post(
            "/v1/decisions:preValidate", json={"decisionRequest": request}, headers=headers
        )
        assert answer.status_code == 400
        assert answer.json()["details"][1]["fieldViolations"][0]["field"] == (
            "decision_request.campaign"
        )
    for campaign in ("x" * 255, "campaigns/" + "x" * 255):
        request = {"contact": {"address": "+12125550100"}, "campaign": campaign}
        answer = edge.post(
            "/v1/decisions:preValidate", json={"decisionRequest": request}, headers=headers
        )
        assert answer.status_code == 200


def test_a_client_limit_counts_by_the_number_when_the_record_has_no_client_id(
    compliance: Compliance,
) -> None:
    compliance.create(
        limited("one per client an hour", 1, timedelta(hours=1), rule_set_pb2.ATTEMPT_SCOPE_CLIENT)
    )
    compliance.record([_attempt("no-client", "+14155550155")])
    denied = compliance.check("+1 415 555 0155")
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
    # With client ids, the client's attempts count, on any of its numbers.
    with_client = _attempt("client-1", "+14155550156")
    with_client.contact.client_id = "debt-42"
    compliance.record([with_client])
    assert not compliance.check("+1 415 555 0157", client_id="debt-42").allowed
    assert compliance.check("+1 415 555 0157", client_id="debt-43").allowed


def test_an_attempt_stamped_in_the_future_counts_from_when_it_was_reported(
    compliance: Compliance,
) -> None:
    compliance.create(limited("one an hour", 1, timedelta(hours=1)))
    attempt = _attempt("clock-ahead", "+14155550151")
    reported = datetime.now(UTC)
    attempt.attempt_time.FromDatetime(reported + timedelta(days=1))  # the dialer's clock
    compliance.record([attempt])
    denied = compliance.check("+1 415 555 0151")
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
    assert denied.next_allowed_time.ToDatetime(tzinfo=UTC) < reported + timedelta(hours=2)
    # Stored as made when reported: a day on, it is long out of the hour.
    later = compliance.explain("+1 415 555 0151", reported + timedelta(days=1, minutes=30))
    assert later.decision.allowed


def test_metrics_count_decisions_by_outcome_denials_by_code_and_attempt_reports(
    compliance: Compliance, mesh: Mesh
) -> None:
    compliance.create(limited("one an hour", 1, timedelta(hours=1)))
    for _ in range(2):  # as OCS reports an attempt: when dialled, then with its result
        compliance.record([_attempt("metered", "+14155550141")])
    assert not compliance.check("+1 415 555 0141").allowed
    assert compliance.check("+1 415 555 0142").allowed
    tenant = compliance.tenant

    def count(name: str, **labels: str) -> float:
        return metric(
            mesh, "compliance", f"cxmesh_compliance_{name}_total", tenant=tenant, **labels
        )

    assert count("decisions", outcome="allowed") == 1
    assert count("decisions", outcome="denied") == 1
    assert count("denials", code="ATTEMPT_LIMIT") == 1
    assert count("attempts", report="new") == 1
    assert count("attempts", report="repeated") == 1


def test_a_fresh_lists_records_leave_the_collectors_walks_once_validated(
    compliance: Compliance, mesh: Mesh
) -> None:
    """Prepared records stay cached; were the collector to walk them all in each full
    collection, every dialer's call would wait ~300 ms every few seconds."""
    compliance.create(all_day())
    freezes_before = metric(mesh, "compliance", "cxmesh_gc_freezes_total")
    for batch in range(3):  # more records than FREEZE_AFTER_ENTRIES
        requests = [
            decision_pb2.DecisionRequest(
                contact=decision_pb2.Contact(address=f"+1415555{batch}{n:03d}")
            )
            for n in range(1000)
        ]
        compliance.decisions.PreValidateBatch(
            decision_service_pb2.PreValidateBatchRequest(decision_requests=requests),
            metadata=compliance.md,
            timeout=30,
        )
    # The freeze comes at the end of the next young collection: calls bring one.
    deadline = time.monotonic() + 10
    while metric(mesh, "compliance", "cxmesh_gc_freezes_total") == freezes_before:
        assert time.monotonic() < deadline, "the cached records were never frozen"
        compliance.check("+1 415 555 0100")


def test_a_rule_change_applies_to_the_next_decision(compliance: Compliance) -> None:
    created = compliance.create(all_day("changing"))
    assert compliance.check("+1 415 555 0121").allowed
    blackout = rule_set_pb2.BlackoutDate(reason="today")
    today = datetime.now(UTC)
    blackout.date.year, blackout.date.month, blackout.date.day = today.year, today.month, today.day
    tomorrow = today + timedelta(days=1)
    second = rule_set_pb2.BlackoutDate(reason="tomorrow")
    second.date.year, second.date.month, second.date.day = (
        tomorrow.year,
        tomorrow.month,
        tomorrow.day,
    )
    yesterday = today - timedelta(days=1)
    third = rule_set_pb2.BlackoutDate(reason="yesterday")
    third.date.year, third.date.month, third.date.day = (
        yesterday.year,
        yesterday.month,
        yesterday.day,
    )
    compliance.rules.UpdateRuleSet(
        rule_set_service_pb2.UpdateRuleSetRequest(
            rule_set=rule_set_pb2.RuleSet(
                name=created.name, blackout_dates=[third, blackout, second]
            ),
            update_mask=FieldMask(paths=["blackout_dates"]),
        ),
        metadata=compliance.md,
        timeout=10,
    )
    denied = compliance.check("+1 415 555 0121", time_zone="Africa/Abidjan")  # UTC all year
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_BLACKOUT_DATE]


def test_fails_closed_while_the_mirror_is_lost_and_recovers_by_itself(
    compliance: Compliance, redis_server: EmbeddedRedis
) -> None:
    compliance.create(all_day("recovering"))
    assert compliance.check("+1 415 555 0131").allowed
    client = redis.Redis(port=redis_server.port)
    for _ in range(3):
        client.delete(LOADED_KEY)
        denied = compliance.check("+1 415 555 0131")
        if not denied.allowed:
            break
        # The watch loop (every second) rebuilt the mirror between the two calls: again.
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
    deadline = time.monotonic() + 15
    while not compliance.check("+1 415 555 0131").allowed:
        assert time.monotonic() < deadline, "compliance did not recover"
        time.sleep(0.2)


def test_ocs_pre_dial_validation_answers_200_to_dial_and_409_to_block(
    compliance: Compliance, edge: httpx.Client
) -> None:
    compliance.create(all_day("ocs"))
    dialer = compliance.dialer()
    record = {
        "GSW_PHONE": "4155550141",
        "GSW_CAMPAIGN_NAME": "spring",
        "GSW_ATTEMPTS": 0,
        "GSW_CALL_ATTEMPT_GUID": "g-1",
        "unknown_key": "ignored",
    }
    assert edge.post("/ocs/v1/validate", json=record, headers=dialer).status_code == 200
    compliance.do_not_call("ocs dnc", "4155550141")
    blocked = edge.post("/ocs/v1/validate", json=record, headers=dialer)
    assert blocked.status_code == 409
    assert "SUPPRESSED" in blocked.text
    assert (
        edge.post("/ocs/v1/validate", json={"GSW_CAMPAIGN_NAME": "x"}, headers=dialer).status_code
        == 400
    )
    assert edge.post("/ocs/v1/validate", json=record).status_code == 401


def test_an_ocs_time_zone_abbreviation_is_one_more_zone_the_contact_may_be_in(
    compliance: Compliance, edge: httpx.Client
) -> None:
    from zoneinfo import ZoneInfo

    # OCS sends its Time Zone object's name, an abbreviation with the tenant's own DST
    # rules; tzdata's EST, MST and HST are fixed offsets (in July, EST's 20:30 is New York's
    # 21:30). Open only around New York's hour now: Hawaii's and California's are not in it.
    hour = datetime.now(ZoneInfo("America/New_York")).hour
    window = rule_set_pb2.ContactWindow()
    window.start_time.hours, window.end_time.hours = max(hour - 1, 0), min(hour + 2, 24)
    compliance.create(rule_set_pb2.RuleSet(display_name="new york hours", contact_windows=[window]))
    dialer = compliance.dialer()

    def validate(tz_name: str) -> httpx.Response:
        record = {"GSW_PHONE": "2125550147", "GSW_TZ_NAME": tz_name}
        return edge.post("/ocs/v1/validate", json=record, headers=dialer)

    # A New York number whose record says Eastern, or a name we do not know: New York.
    for tz_name in ("EST", "Eastern", "XYZ"):
        answer = validate(tz_name)
        assert answer.status_code == 200, (tz_name, answer.text)
        assert answer.json()["decision"]["timeZone"] == "America/New_York"
    # Its record says Hawaii or Pacific (a number kept after a move): both must allow.
    for tz_name in ("HST", "PST", "Pacific/Honolulu"):
        assert validate(tz_name).status_code == 409, tz_name


def test_candidate_time_zones_restrict_and_never_replace(compliance: Compliance) -> None:
    # No rule set: the built-in 08:00-21:00.
    morning = datetime(2026, 7, 15, 13, 30, tzinfo=UTC)  # 09:30 in New York, 06:30 in LA
    assert compliance.explain("+1 212 555 0100", morning).decision.allowed
    also_la = compliance.explain(
        "+1 212 555 0100", morning, candidate_time_zones=["America/Los_Angeles"]
    )
    assert not also_la.decision.allowed
    assert list(also_la.time_zone_candidates) == ["America/New_York", "America/Los_Angeles"]
    with pytest.raises(grpc.RpcError) as refused:
        compliance.check("+1 212 555 0100", candidate_time_zones=["Mars/Olympus"])
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_fixed_offset_zones_are_refused_where_a_contacts_zone_is_given(
    compliance: Compliance, edge: httpx.Client
) -> None:
    # In July EST's 20:30 is New York's 21:30: taken as the contact's zone, it would allow
    # the hour after the window closed.
    headers = {"authorization": f"Bearer {compliance.token}"}
    for zone in ("EST", "UTC", "Etc/GMT+5"):
        contact = {"address": "+12125550100", "timeZone": zone, "candidateTimeZones": [zone]}
        answer = edge.post(
            "/v1/decisions:preValidate",
            json={"decisionRequest": {"contact": contact}},
            headers=headers,
        )
        assert answer.status_code == 400, zone
        violations = answer.json()["details"][1]["fieldViolations"]
        assert [v["field"] for v in violations] == [
            "decision_request.contact.time_zone",
            "decision_request.contact.candidate_time_zones[0]",
        ]
        assert "daylight saving" in violations[0]["description"]
        rule_set = {"displayName": "fixed", "defaultTimeZone": zone}
        refused = edge.post("/v1/ruleSets", json=rule_set, headers=headers)
        assert refused.status_code == 400, zone
        assert refused.json()["details"][1]["fieldViolations"][0]["field"] == (
            "rule_set.default_time_zone"
        )
    # A place's zone, and a link to one, are taken.
    assert compliance.check("+12125550100", time_zone="US/Eastern").time_zone == "US/Eastern"


def test_an_ocs_zip_code_sent_as_a_number_keeps_its_leading_zero(
    compliance: Compliance, edge: httpx.Client
) -> None:
    from zoneinfo import ZoneInfo

    # Boston's ZIP codes (021xx) may only be called in an hour that is not now.
    boston = rule_set_pb2.WindowOverride(postal_code="021*")
    later = (datetime.now(ZoneInfo("America/New_York")).hour + 12) % 24
    window = boston.contact_windows.add()
    window.start_time.hours, window.end_time.hours = later, later + 1
    compliance.create(all_day("boston", window_overrides=[boston]))
    dialer = compliance.dialer()
    for zip_code in (2134, "02134"):
        record = {"GSW_PHONE": "2125550149", "ZIP": zip_code}
        answer = edge.post("/ocs/v1/validate", json=record, headers=dialer)
        assert answer.status_code == 409, zip_code
        assert "OUTSIDE_CONTACT_WINDOW" in answer.text
    nowhere = {"GSW_PHONE": "2125550149"}
    assert edge.post("/ocs/v1/validate", json=nowhere, headers=dialer).status_code == 200


def test_a_dialers_campaign_name_selects_what_is_bound_to_that_campaign(
    compliance: Compliance, edge: httpx.Client
) -> None:
    dialer = compliance.dialer()
    compliance.create(all_day("tenant-wide"))
    summer = all_day("summer only", campaigns=["campaigns/Summer"])
    for days in (-1, 0, 1):  # today, wherever the contact is
        day = (datetime.now(UTC) + timedelta(days=days)).date()
        blackout = summer.blackout_dates.add(reason="summer's over")
        blackout.date.year, blackout.date.month, blackout.date.day = day.year, day.month, day.day
    compliance.create(summer)
    compliance.do_not_call("winter dnc", "4155550145", campaigns=("campaigns/Winter Sale",))

    def ocs(campaign: str) -> httpx.Response:
        record = {"GSW_PHONE": "4155550145", "GSW_CAMPAIGN_NAME": campaign}
        return edge.post("/ocs/v1/validate", json=record, headers=dialer)

    # OCS sends the campaign's bare name: it means campaigns/<name>, whatever its case.
    assert ocs("WINTER SALE").status_code == 409
    assert "SUPPRESSED" in ocs("winter sale").text
    assert ocs("summer").status_code == 409
    assert "BLACKOUT_DATE" in ocs("SUMMER").text
    assert ocs("autumn").status_code == 200
    for campaign in ("Winter Sale", "campaigns/winter sale"):
        request = decision_pb2.DecisionRequest(
            contact=decision_pb2.Contact(address="4155550145"), campaign=campaign
        )
        decision = compliance.decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=request),
            metadata=compliance.md,
            timeout=10,
        ).decision
        assert [d.code for d in decision.denials] == [decision_pb2.DENIAL_CODE_SUPPRESSED]


def test_ocs_call_history_feeds_attempt_rules_without_double_counting(
    compliance: Compliance, edge: httpx.Client
) -> None:
    limited = all_day("one attempt")
    rule = limited.attempt_rules.add(max_attempts=2)
    rule.window.FromTimedelta(timedelta(hours=1))
    compliance.create(limited)
    headers = {"authorization": f"Bearer {compliance.token}"}
    for sequence, result in ((0, None), (1, "Busy")):
        body = {
            "GSW_PHONE": "4155550151",
            "GSW_CALL_ATTEMPT_GUID": "guid-1",
            "GSW_OCS_SEQUENCE_NO": sequence,
        }
        if result:
            body["GSW_CALL_RESULT"] = result
        assert edge.post("/ocs/v1/history", json=body, headers=headers).status_code == 200
    assert compliance.check("+1 415 555 0151").allowed  # one attempt, reported twice
    edge.post(
        "/ocs/v1/history",
        json={
            "GSW_PHONE": "4155550151",
            "GSW_CALL_ATTEMPT_GUID": "guid-2",
            "GSW_CALL_RESULT": "NoAnswer",
        },
        headers=headers,
    )
    assert not compliance.check("+1 415 555 0151").allowed


def test_ocs_call_results_are_genesys_codes_or_names(
    compliance: Compliance, edge: httpx.Client
) -> None:
    # Only answered and unanswered calls count: at most one an hour.
    answered = all_day("one call answered or not an hour")
    rule = answered.attempt_rules.add(
        max_attempts=1,
        counted_results=[call_result_pb2.CALL_RESULT_ANSWER, call_result_pb2.CALL_RESULT_NO_ANSWER],
    )
    rule.window.FromTimedelta(timedelta(hours=1))
    compliance.create(answered)
    headers = {"authorization": f"Bearer {compliance.token}"}
    for n, (phone, result, counted) in enumerate(
        (
            ("4155550180", 6, False),  # Genesys' Busy
            ("4155550181", 7, True),  # Genesys' No Answer (read as ours, Dropped: uncounted)
            ("4155550182", "Cancel Record", False),
            ("4155550183", 33, True),  # Genesys' Answer
            ("4155550184", "33", True),
            ("4155550185", "Answer", True),
            ("4155550186", 14, True),  # a SIT tone: unmapped, it stays in progress
        )
    ):
        body = {
            "GSW_PHONE": phone,
            "GSW_CALL_ATTEMPT_GUID": f"genesys-{n}",
            "GSW_OCS_SEQUENCE_NO": 1,
            "GSW_CALL_RESULT": result,
        }
        assert edge.post("/ocs/v1/history", json=body, headers=headers).status_code == 200
        assert compliance.check(phone).allowed is not counted, result


def test_an_ocs_field_sent_as_null_is_a_field_not_sent(
    compliance: Compliance, edge: httpx.Client
) -> None:
    compliance.create(
        limited("one per client an hour", 1, timedelta(hours=1), rule_set_pb2.ATTEMPT_SCOPE_CLIENT)
    )
    headers = {"authorization": f"Bearer {compliance.token}"}
    history = {"GSW_PHONE": "4155550158", "GSW_CALL_ATTEMPT_GUID": "n-1", "CLIENT_ID": None}
    assert edge.post("/ocs/v1/history", json=history, headers=headers).status_code == 200
    # Another record with no client id is not that one's client ("None"): counted by its
    # number, it has no attempts.
    other = {"GSW_PHONE": "4155550159", "CLIENT_ID": None, "GSW_CLIENT_ID": None}
    assert edge.post("/ocs/v1/validate", json=other, headers=headers).status_code == 200
    same = {"GSW_PHONE": "4155550158", "CLIENT_ID": ""}
    assert edge.post("/ocs/v1/validate", json=same, headers=headers).status_code == 409


def test_an_ocs_record_whose_history_could_not_be_recorded_is_not_dialled_either(
    compliance: Compliance, edge: httpx.Client
) -> None:
    """Its attempts could never be counted, so no attempt rule could ever stop it."""
    compliance.create(
        limited(
            "one per client an hour, by OCS",
            1,
            timedelta(hours=1),
            rule_set_pb2.ATTEMPT_SCOPE_CLIENT,
        )
    )
    headers = {"authorization": f"Bearer {compliance.token}"}
    for field, value in (
        ("CLIENT_ID", "c" * 256),
        ("CLIENT_ID", "a\u0000b"),
        ("GSW_CLIENT_ID", "c" * 256),
    ):
        record = {"GSW_PHONE": "4155550161", "GSW_CALL_ATTEMPT_GUID": "odd", field: value}
        # Each answer names the record's field, as the dialer's administrator knows it.
        for uri in ("/ocs/v1/history", "/ocs/v1/validate"):
            answer = edge.post(uri, json=record, headers=headers)
            assert answer.status_code == 400, answer.text
            (violation,) = answer.json()["details"][1]["fieldViolations"]
            assert violation["field"] == field, (uri, answer.text)
            assert "at most 255 characters" in violation["description"]
    unreadable = {"GSW_PHONE": "12", "GSW_CALL_ATTEMPT_GUID": "odd"}
    history = edge.post("/ocs/v1/history", json=unreadable, headers=headers)
    assert history.status_code == 400, history.text
    assert history.json()["details"][1]["fieldViolations"][0]["field"] == "GSW_PHONE"
    long_campaign = {"GSW_PHONE": "4155550161", "GSW_CAMPAIGN_NAME": "x" * 256}
    validation = edge.post("/ocs/v1/validate", json=long_campaign, headers=headers)
    assert validation.status_code == 400 and "GSW_CAMPAIGN_NAME" in validation.text
    usual = {"GSW_PHONE": "4155550161", "CLIENT_ID": " c-161 ", "GSW_CAMPAIGN_NAME": "x" * 255}
    assert edge.post("/ocs/v1/validate", json=usual, headers=headers).status_code == 200


def test_an_attempt_in_progress_counts_until_its_result_says_otherwise(
    compliance: Compliance, edge: httpx.Client
) -> None:
    compliance.create(limited("one an hour", 1, timedelta(hours=1)))
    headers = {"authorization": f"Bearer {compliance.token}"}
    dialling = {"GSW_PHONE": "4155550153", "GSW_CALL_ATTEMPT_GUID": "in-progress"}
    # The record still carries its previous attempt's result when this one starts.
    started = {**dialling, "GSW_OCS_SEQUENCE_NO": 0, "GSW_CALL_RESULT": "Cancelled"}
    ended = {**dialling, "GSW_OCS_SEQUENCE_NO": 1, "GSW_CALL_RESULT": "Cancelled"}
    # The last is the start report again, arriving late: the attempt stays cancelled.
    for step, body, allowed in (
        ("started", started, False),
        ("cancelled", ended, True),
        ("late start report", started, True),
    ):
        assert edge.post("/ocs/v1/history", json=body, headers=headers).status_code == 200
        # While the call is up, another campaign's dialer must not reach the same number.
        assert compliance.check("+1 415 555 0153").allowed is allowed, step


def _until_allowed(target: str, compliance: Compliance, address: str, seconds: float) -> None:
    """Waits for a replica to allow the contact again (its mirrors rebuilt)."""
    deadline = time.monotonic() + seconds
    while not _decide_direct(target, compliance, address).allowed:
        assert time.monotonic() < deadline, "compliance did not recover"
        time.sleep(0.2)


def _decide_direct(target: str, compliance: Compliance, address: str) -> decision_pb2.Decision:
    with grpc.insecure_channel(target) as channel:
        request = decision_pb2.DecisionRequest(contact=decision_pb2.Contact(address=address))
        return (
            decision_service_pb2_grpc.DecisionServiceStub(channel)
            .PreValidate(
                decision_service_pb2.PreValidateRequest(decision_request=request),
                metadata=compliance.md,
                timeout=10,
            )
            .decision
        )


def test_two_replicas_see_a_rule_change_on_their_next_decision(
    compliance: Compliance, mesh: Mesh
) -> None:
    created = compliance.create(all_day("replicated"))
    replica = mesh.start_service("compliance")
    target = f"127.0.0.1:{replica.port}"
    try:
        wait_serving(target, time.monotonic() + 60, replica)
        assert _decide_direct(target, compliance, "+14155550161").allowed
        today = datetime.now(UTC)
        frozen = [rule_set_pb2.BlackoutDate(reason="freeze") for _ in range(3)]
        for entry, day in zip(
            frozen, (today - timedelta(days=1), today, today + timedelta(days=1)), strict=True
        ):
            entry.date.year, entry.date.month, entry.date.day = day.year, day.month, day.day
        compliance.rules.UpdateRuleSet(
            rule_set_service_pb2.UpdateRuleSetRequest(
                rule_set=rule_set_pb2.RuleSet(name=created.name, blackout_dates=frozen),
                update_mask=FieldMask(paths=["blackout_dates"]),
            ),
            metadata=compliance.md,
            timeout=10,
        )
        decision = _decide_direct(target, compliance, "+14155550161")
        assert not decision.allowed, "the other replica did not see the change on its next decision"
        # How soon is a bench figure (compliance.rule_change_visible_seconds), not a test's.
    finally:
        replica.process.terminate()
        replica.process.wait(20)
        mesh.instances.remove(replica)


@dataclass
class OwnRedisReplica:
    """A compliance replica of the mesh's on a Redis of its own, which a test may stop and
    restart empty without disturbing the others."""

    replica: ServiceInstance
    redis: EmbeddedRedis
    folder: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.replica.port}"

    def restart_redis_empty(self) -> None:
        self.redis = start_redis(self.folder, self.redis.port, persist=False)
        _mark_suppression_loaded(self.redis.port)  # as the lists service would


@contextlib.contextmanager
def _replica_on_own_redis(
    mesh: Mesh,
    folder: Path,
    before_start: Callable[[EmbeddedRedis], object] = lambda _: None,
    workers: int = 1,
) -> Iterator[OwnRedisReplica]:
    own_redis = start_redis(folder, persist=False)
    before_start(own_redis)
    replica = mesh.start_service(
        "compliance", env={"CXMESH_REDIS_URL": own_redis.url, "CXMESH_WORKERS": str(workers)}
    )
    own = OwnRedisReplica(replica, own_redis, folder)
    try:
        yield own
    finally:
        replica.process.terminate()
        replica.process.wait(20)
        mesh.instances.remove(replica)
        own.redis.stop()


def _until_both_workers_wait_for_suppression(replica: ServiceInstance) -> None:
    """Until both workers have started, and wait: the suppression mirror is not loaded.
    Each says so once, when its health is first set: the second may first wait for the
    first's replay of the attempts ("being rebuilt by another replica")."""
    waiting = '"message": "compliance health changed", "service": "compliance", "serving": false'
    deadline = time.monotonic() + 60
    while replica.own_log().count(waiting) < 2:
        assert time.monotonic() < deadline, replica.own_log()[-2000:]
        time.sleep(0.1)


def test_a_worker_joins_the_shared_port_only_once_it_can_decide(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    """The kernel hands a new connection to any worker listening on the port: one still
    waiting for its data would deny its share of the calls ("data unavailable") while the
    others allow them, and answer its share of the probes NOT_SERVING."""
    compliance.create(all_day("always"))
    with _replica_on_own_redis(mesh, state_dir / "workers-redis", workers=2) as own:
        _until_both_workers_wait_for_suppression(own.replica)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", own.replica.port)) == errno.ECONNREFUSED
        _mark_suppression_loaded(own.redis.port)  # as the lists service would
        wait_serving(own.target, time.monotonic() + 30, own.replica)
        assert len(own.replica.serving_pids()) == 2
        for _ in range(8):  # new connections, to either worker
            assert _decide_direct(own.target, compliance, "+14155550172").allowed
            assert _health(own.target) == health_pb2.HealthCheckResponse.SERVING


def test_workers_waiting_for_their_data_stop_at_once_and_cleanly(
    mesh: Mesh, state_dir: Path
) -> None:
    """Their pools are open and their loops running, but they have not started serving."""
    with _replica_on_own_redis(mesh, state_dir / "waiting-redis", workers=2) as own:
        _until_both_workers_wait_for_suppression(own.replica)
        own.replica.process.send_signal(signal.SIGTERM)
        assert own.replica.process.wait(10) == 0
        log = own.replica.own_log()
        assert log.count("stopped before serving") == 2
        assert '"level": "ERROR"' not in log and "Traceback" not in log


def test_with_redis_unreachable_or_evicting_every_answer_is_deny_and_health_says_so(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    compliance.create(all_day("always"))
    with _replica_on_own_redis(mesh, state_dir / "compliance-redis") as own:
        target, replica = own.target, own.replica
        _mark_suppression_loaded(own.redis.port)  # as the lists service would
        wait_serving(target, time.monotonic() + 60, replica)
        # A new replica on an empty Redis answers "unavailable" until both mirrors are in
        # (once in five runs the first decision came before that): wait for the first yes.
        deadline = time.monotonic() + 10
        while not _decide_direct(target, compliance, "+14155550171").allowed:
            assert time.monotonic() < deadline, "the replica never allowed the contact"
            time.sleep(0.1)
        port = own.redis.port
        own.redis.stop()
        denied = _decide_direct(target, compliance, "+14155550171")
        assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
        deadline = time.monotonic() + 10
        while _health(target) == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still says SERVING"
            time.sleep(0.2)
        own.restart_redis_empty()
        _until_allowed(target, compliance, "+14155550171", 15)  # rules mirror rebuilt
        wait_serving(target, time.monotonic() + 10, replica)
        # A Redis that may evict keys when full (a managed Redis's default policy is often
        # volatile-lru: attempt sets have a TTL) could silently lose what denies a contact.
        redis.Redis(port=port).config_set("maxmemory-policy", "volatile-lru")
        deadline = time.monotonic() + 10
        while (decision := _decide_direct(target, compliance, "+14155550171")).allowed:
            assert time.monotonic() < deadline, "decisions trusted an evicting Redis"
            time.sleep(0.2)
        assert "maxmemory-policy volatile-lru" in decision.denials[0].reason
        while _health(target) == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still says SERVING"
            time.sleep(0.2)
        redis.Redis(port=port).config_set("maxmemory-policy", "noeviction")
        _until_allowed(target, compliance, "+14155550171", 10)
        wait_serving(target, time.monotonic() + 10, replica)


def test_a_full_redis_denies_every_answer_and_refuses_writes_as_unavailable_until_it_has_room(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    """A full Redis (maxmemory reached, noeviction) refuses every write: attempts and
    emergency suppression entries would go missing, so nothing it holds is trusted."""
    compliance.create(limited("two a day", 2, timedelta(days=1)))
    with _replica_on_own_redis(mesh, state_dir / "full-redis") as own:
        target = own.target
        _mark_suppression_loaded(own.redis.port)  # as the lists service would
        wait_serving(target, time.monotonic() + 60, own.replica)
        _until_allowed(target, compliance, "+14155550179", 10)
        admin = redis.Redis(port=own.redis.port)
        admin.config_set("maxmemory", 1)
        # Denied for that reason from the next check of Redis's memory (every 5 s; Redis
        # 6.2 refuses the read's own transaction meanwhile, which denies too).
        deadline = time.monotonic() + 10
        while True:
            decision = _decide_direct(target, compliance, "+14155550179")
            if not decision.allowed and "Redis is full" in decision.denials[0].reason:
                break
            assert time.monotonic() < deadline, decision
            time.sleep(0.2)
        assert [d.code for d in decision.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
        while _health(target) == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still says SERVING"
            time.sleep(0.2)
        report = decision_service_pb2.RecordAttemptsRequest(
            attempts=[_attempt("while-full", "+14155550179")]
        )
        with grpc.insecure_channel(target) as channel:
            # "Report it again", which a dialer's retry policy does, not an internal error.
            with pytest.raises(grpc.RpcError) as refused:
                decision_service_pb2_grpc.DecisionServiceStub(channel).RecordAttempts(
                    report, metadata=compliance.md, timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as refused:
                rule_set_service_pb2_grpc.RuleSetServiceStub(channel).CreateRuleSet(
                    rule_set_service_pb2.CreateRuleSetRequest(rule_set=all_day("while full")),
                    metadata=compliance.md,
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        # Nor half written: the rule set Redis refused is not in Postgres either.
        listed = compliance.rules.ListRuleSets(
            rule_set_service_pb2.ListRuleSetsRequest(), metadata=compliance.md, timeout=10
        )
        assert [r.display_name for r in listed.rule_sets] == ["two a day"]
        admin.config_set("maxmemory", 0)
        _until_allowed(target, compliance, "+14155550180", 10)
        with grpc.insecure_channel(target) as channel:
            stub = decision_service_pb2_grpc.DecisionServiceStub(channel)
            stub.RecordAttempts(report, metadata=compliance.md, timeout=10)
            # Counted once, whether or not Postgres took the refused report: one of two.
            assert _decide_direct(target, compliance, "+14155550179").allowed
            second = decision_service_pb2.RecordAttemptsRequest(
                attempts=[_attempt("after-full", "+14155550179")]
            )
            stub.RecordAttempts(second, metadata=compliance.md, timeout=10)
        denied = _decide_direct(target, compliance, "+14155550179")
        assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
        wait_serving(target, time.monotonic() + 10, own.replica)


def test_attempts_count_again_after_compliance_redis_restarts_empty(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    compliance.create(limited("one a day", 1, timedelta(days=1)))
    with _replica_on_own_redis(mesh, state_dir / "attempts-redis") as own:
        target = own.target
        _mark_suppression_loaded(own.redis.port)  # as the lists service would
        wait_serving(target, time.monotonic() + 60, own.replica)
        with grpc.insecure_channel(target) as channel:
            recorded = decision_service_pb2_grpc.DecisionServiceStub(channel).RecordAttempts(
                decision_service_pb2.RecordAttemptsRequest(
                    attempts=[_attempt("before-restart", "+14155550176")]
                ),
                metadata=compliance.md,
                timeout=10,
            )
        assert recorded.new_attempt_count == 1
        own.redis.stop()
        own.restart_redis_empty()
        deadline = time.monotonic() + 20
        while [d.code for d in _decide_direct(target, compliance, "+14155550176").denials] != [
            decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
        ]:  # denied "unavailable" meanwhile
            assert time.monotonic() < deadline, "the attempt never counted again"
            time.sleep(0.2)
        assert _decide_direct(target, compliance, "+14155550177").allowed


async def _record_without_postgres(redis_url: str, tenant: str, address: str) -> None:
    """What a replica cut off from Postgres leaves in its Redis for one attempt."""
    client = create_redis(redis_url)
    report = AttemptReport(
        attempt_id="without-postgres",
        device=address,
        client_id="",
        call_result=call_result_pb2.CALL_RESULT_NO_ANSWER,
        channel=channel_pb2.CHANNEL_VOICE,
        attempt_time=datetime.now(UTC),
        reported_at=datetime.now(UTC),
    )
    await record_without_postgres(RulesMirror(client), tenant, [report])
    await client.aclose()


def test_attempts_counted_while_postgres_failed_are_stored_and_survive_a_later_redis_loss(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    compliance.create(limited("one a day", 1, timedelta(days=1)))
    with _replica_on_own_redis(mesh, state_dir / "unstored-redis") as own:
        _mark_suppression_loaded(own.redis.port)  # as the lists service would
        wait_serving(own.target, time.monotonic() + 60, own.replica)
        asyncio.run(_record_without_postgres(own.redis.url, compliance.tenant, "+14155550178"))
        limited_out = [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]
        assert [d.code for d in _decide_direct(own.target, compliance, "+14155550178").denials] == (
            limited_out
        )
        deadline = time.monotonic() + 10
        unstored = unstored_attempts_key(compliance.tenant)
        while redis.Redis(port=own.redis.port).exists(unstored):
            assert time.monotonic() < deadline, "the replica never stored the attempt"
            time.sleep(0.2)
        own.redis.stop()
        own.restart_redis_empty()
        deadline = time.monotonic() + 20
        while [
            d.code for d in _decide_direct(own.target, compliance, "+14155550178").denials
        ] != limited_out:  # denied "unavailable" until the rebuild
            assert time.monotonic() < deadline, "the attempt was lost with Redis"
            time.sleep(0.2)


def test_a_replica_is_not_serving_until_its_mirrors_are_loaded_and_survives_redis_absent(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    compliance.create(all_day("starting"))
    pause_ends = time.monotonic() + PAUSE_SECONDS

    def pause(own_redis: EmbeddedRedis) -> object:
        # Every command waits (as behind a Redis that hangs) while the replica starts.
        return redis.Redis(port=own_redis.port).client_pause(PAUSE_SECONDS * 1000, all=True)

    with _replica_on_own_redis(mesh, state_dir / "starting-redis", pause) as own:
        target, replica = own.target, own.replica
        statuses = []
        while time.monotonic() < pause_ends - 1:
            assert replica.process.poll() is None, "the replica exited"
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                statuses.append(_health(target))
            time.sleep(0.2)
        # Answering, and saying so: a readiness probe sends it nothing yet.
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        assert health_pb2.HealthCheckResponse.SERVING not in statuses
        own.redis.stop()  # and then gone: the start's rebuild fails
        time.sleep(2)
        assert replica.process.poll() is None, "the replica exited"
        own.restart_redis_empty()
        _until_allowed(target, compliance, "+14155550178", 20)
        wait_serving(target, time.monotonic() + 10, replica)


def test_a_replica_waits_not_serving_while_another_replays_the_attempts(
    compliance: Compliance, mesh: Mesh, state_dir: Path
) -> None:
    compliance.create(all_day("waiting"))

    def replayed_elsewhere(own_redis: EmbeddedRedis) -> object:
        # A Redis that lost the compliance mirror, which another replica is replaying.
        _mark_suppression_loaded(own_redis.port)
        return redis.Redis(port=own_redis.port).set(RESTORE_LOCK, "another replica", px=60_000)

    with _replica_on_own_redis(mesh, state_dir / "waiting-redis", replayed_elsewhere) as own:
        deadline = time.monotonic() + 30
        statuses: list[int] = []
        while time.monotonic() < deadline and len(statuses) < 10:  # two seconds answered
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                statuses.append(_health(own.target))
            time.sleep(0.2)
        assert set(statuses) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        denied = _decide_direct(own.target, compliance, "+14155550179")
        assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
        redis.Redis(port=own.redis.port).delete(RESTORE_LOCK)  # the other one gone
        wait_serving(own.target, time.monotonic() + 20, own.replica)
        assert _decide_direct(own.target, compliance, "+14155550179").allowed


PAUSE_SECONDS = 10


def _mark_suppression_loaded(port: int) -> None:
    client = redis.Redis(port=port, decode_responses=True)
    client.set(SUPPRESSION_LOADED, client.info("server")["run_id"])
    client.close()


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(response.status)


def _daytime_zone() -> str:
    """A zone where it is between 09:00 and 20:00 now, so the TCPA window is open."""
    from zoneinfo import ZoneInfo

    for zone in (
        "America/New_York",
        "Europe/London",
        "Asia/Tokyo",
        "Pacific/Honolulu",
        "Asia/Kolkata",
        "Pacific/Auckland",
    ):
        if 9 <= datetime.now(ZoneInfo(zone)).hour < 20:
            return zone
    raise AssertionError("no daytime zone in the list")


def test_the_demo_seed_is_idempotent_and_serves_ocs(
    mesh: Mesh, key: SigningKey, edge: httpx.Client
) -> None:
    from cxmesh_server.stack.demo import seed_demo

    first = seed_demo(mesh, key)
    second = seed_demo(mesh, key, first)
    assert second["CXMESH_OCS_AUTH_HEADER"] == first["CXMESH_OCS_AUTH_HEADER"]  # the key is reused
    name, _, value = first["CXMESH_OCS_AUTH_HEADER"].partition(": ")
    url = first["CXMESH_OCS_VALIDATION_URL"].removeprefix(mesh.edge_url)
    dial = edge.post(
        url, json={"GSW_PHONE": "2125550100", "GSW_TZ_NAME": _daytime_zone()}, headers={name: value}
    )
    assert dial.status_code == 200, dial.text
    block = edge.post(
        url, json={"GSW_PHONE": first["CXMESH_DEMO_SUPPRESSED_NUMBER"]}, headers={name: value}
    )
    assert block.status_code == 409


def test_attempts_written_before_the_attempt_index_still_count_after_the_rebuild(
    compliance: Compliance, redis_server: EmbeddedRedis
) -> None:
    limited = all_day("indexed")
    rule = limited.attempt_rules.add(max_attempts=1)
    rule.window.FromTimedelta(timedelta(hours=1))
    compliance.create(limited)
    compliance.decisions.RecordAttempts(
        decision_service_pb2.RecordAttemptsRequest(
            attempts=[
                decision_pb2.Attempt(
                    attempt_id="before-the-index",
                    contact=decision_pb2.Contact(address="+14155550161"),
                    call_result=call_result_pb2.CALL_RESULT_BUSY,
                )
            ]
        ),
        metadata=compliance.md,
        timeout=10,
    )
    assert not compliance.check("+1 415 555 0161").allowed
    # As Redis holds them after an upgrade: the sets, no index, the old loaded marker.
    client = redis.Redis(port=redis_server.port)
    client.delete(attempt_index_key(compliance.tenant), LOADED_KEY)
    deadline = time.monotonic() + 15
    while True:
        decision = compliance.check("+1 415 555 0161")
        codes = [d.code for d in decision.denials]
        assert not decision.allowed, "an attempt was forgotten: a wrong yes"
        if codes == [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]:
            break
        assert codes == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
        assert time.monotonic() < deadline, "compliance did not rebuild the attempt index"
        time.sleep(0.2)
