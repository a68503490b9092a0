"""gRPC handlers of cxmesh.compliance.v1: rule sets (audited) and decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from phonenumbers import SUPPORTED_REGIONS

from cxmesh.compliance.v1 import (
    decision_pb2,
    decision_service_pb2,
    decision_service_pb2_grpc,
    rule_set_pb2,
    rule_set_service_pb2,
    rule_set_service_pb2_grpc,
)
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.attempts import AttemptReport, AttemptStore
from cxmesh_server.compliance.domain.decide import date_verdict, window_verdict
from cxmesh_server.compliance.domain.rules import (
    InvalidRuleSet,
    compile_rule_set,
    validate_rule_set,
    with_preset,
)
from cxmesh_server.compliance.engine import (
    CACHED_REQUEST_BYTES,
    DEFAULT_RULE_SET,
    SUBJECTS_PER_VIEW,
    DecisionEngine,
)
from cxmesh_server.compliance.metrics import count_attempts, count_decisions
from cxmesh_server.compliance.ocs_records import OcsRecord
from cxmesh_server.compliance.questions import Fields, Question, read_fields
from cxmesh_server.compliance.store import RuleSetStore
from cxmesh_server.contacts.campaigns import MAX_CAMPAIGN_NAME, MAX_REFERENCE, campaign_key
from cxmesh_server.contacts.phones import PhoneError, normalize_phone
from cxmesh_server.contacts.text import CONTROL, is_plain
from cxmesh_server.contacts.timezones import PLACE_ZONE, is_local_zone
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.context import GrpcContext, current_principal, current_tenant
from cxmesh_server.runtime.convert import defined_values, resource_id
from cxmesh_server.runtime.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Validator,
)
from cxmesh_server.runtime.masks import update_paths

MAX_BATCH = 1000
# Questions of one PreValidateStream decided at once: enough to fill the coalescer's
# batches, few enough that one stream cannot hold unbounded work.
STREAM_IN_FLIGHT = 64
# How far from now PreValidate accepts a decision time (only Explain looks elsewhere).
NOW_TOLERANCE = timedelta(seconds=5)
# The instants ExplainDecision explains: around now (the calendar's ends overflow).
EXPLAIN_RANGE = timedelta(days=3652)
UPDATABLE = {
    "display_name",
    "campaigns",
    "channels",
    "contact_windows",
    "window_overrides",
    "blackout_dates",
    "holiday_calendars",
    "attempt_rules",
    "suppression_lists",
    "default_time_zone",
}


_PRESETS = defined_values(rule_set_pb2.RuleSetPreset.DESCRIPTOR, unspecified=False)


class RuleSetHandlers(rule_set_service_pb2_grpc.RuleSetServiceServicer):
    def __init__(self, store: RuleSetStore) -> None:
        self._store = store

    async def CreateRuleSet(
        self, request: rule_set_service_pb2.CreateRuleSetRequest, context: GrpcContext
    ) -> rule_set_service_pb2.CreateRuleSetResponse:
        rule_set = request.rule_set
        check = Validator()
        if rule_set.preset:
            # Stored as given, a preset would be a label on a rule set without its rules
            # (no Regulation F limit where the creator asked for one).
            check.require(
                rule_set.preset in _PRESETS, "rule_set.preset", "must be a defined preset"
            )
            check.check()
            filled = with_preset(rule_set)
            check.require(
                filled is not None,
                "rule_set.preset",
                "fills contact_windows and attempt_rules: give the preset or other rules, not both",
            )
            check.check()
            assert filled is not None
            rule_set = filled
        validate_rule_set(rule_set, check)
        _check_new_text(check, rule_set.display_name)
        check.require(
            is_plain(request.request_id, 128),
            "request_id",
            "at most 128 characters, no control characters",
        )
        check.check()
        principal = current_principal()
        created = await self._store.create(
            principal.tenant, principal.subject, rule_set, request.request_id
        )
        return rule_set_service_pb2.CreateRuleSetResponse(rule_set=created)

    async def GetRuleSet(
        self, request: rule_set_service_pb2.GetRuleSetRequest, context: GrpcContext
    ) -> rule_set_service_pb2.GetRuleSetResponse:
        rule_set_id = resource_id(request.name, "ruleSets", "name")
        return rule_set_service_pb2.GetRuleSetResponse(
            rule_set=await self._store.get(current_tenant(), rule_set_id)
        )

    async def ListRuleSets(
        self, request: rule_set_service_pb2.ListRuleSetsRequest, context: GrpcContext
    ) -> rule_set_service_pb2.ListRuleSetsResponse:
        page = paging.offset_page(request.page_size, request.page_token)
        rows = await self._store.list_rule_sets(current_tenant(), page.offset, page.limit)
        token = page.next_token(len(rows))
        return rule_set_service_pb2.ListRuleSetsResponse(
            rule_sets=rows[: page.size], next_page_token=token
        )

    async def UpdateRuleSet(
        self, request: rule_set_service_pb2.UpdateRuleSetRequest, context: GrpcContext
    ) -> rule_set_service_pb2.UpdateRuleSetResponse:
        rule_set_id = resource_id(request.rule_set.name, "ruleSets", "rule_set.name")
        paths = update_paths(request.update_mask, UPDATABLE)
        check = Validator()
        principal = current_principal()
        merged = await self._store.get(principal.tenant, rule_set_id)
        for path in paths:
            merged.ClearField(path)  # type: ignore[arg-type]
            if path in ("display_name", "default_time_zone"):
                setattr(merged, path, getattr(request.rule_set, path))
            else:
                getattr(merged, path).extend(getattr(request.rule_set, path))
        validate_rule_set(merged, check)
        if "display_name" in paths:
            _check_new_text(check, merged.display_name)
        check.check()
        updated = await self._store.update(
            principal.tenant, principal.subject, merged, request.rule_set.etag
        )
        return rule_set_service_pb2.UpdateRuleSetResponse(rule_set=updated)

    async def DeleteRuleSet(
        self, request: rule_set_service_pb2.DeleteRuleSetRequest, context: GrpcContext
    ) -> rule_set_service_pb2.DeleteRuleSetResponse:
        principal = current_principal()
        await self._store.delete(
            principal.tenant,
            principal.subject,
            resource_id(request.name, "ruleSets", "name"),
            request.etag,
        )
        return rule_set_service_pb2.DeleteRuleSetResponse()

    async def ListAuditEvents(
        self, request: rule_set_service_pb2.ListAuditEventsRequest, context: GrpcContext
    ) -> rule_set_service_pb2.ListAuditEventsResponse:
        rule_set_id = resource_id(request.parent, "ruleSets", "parent")
        page = paging.offset_page(request.page_size, request.page_token)
        rows = await self._store.audit_events(
            current_tenant(), rule_set_id, page.offset, page.limit
        )
        if not rows and not page.offset:
            # A rule set's creation is its first event: without one it never existed.
            raise NotFound(f"ruleSets/{rule_set_id} not found")
        events = []
        for row in rows[: page.size]:
            event = rule_set_pb2.AuditEvent(
                name=f"ruleSets/{rule_set_id}/auditEvents/{row['event_id']}", actor=row["actor"]
            )
            event.event_time.FromDatetime(row["event_time"])
            if row["before"]:
                event.before.ParseFromString(row["before"])
            if row["after"]:
                event.after.ParseFromString(row["after"])
            events.append(event)
        token = page.next_token(len(rows))
        return rule_set_service_pb2.ListAuditEventsResponse(
            audit_events=events, next_page_token=token
        )


# Defined values, UNSPECIFIED included: a decision's channel defaults to voice, an
# attempt's result to "in progress".
_CHANNELS = defined_values(channel_pb2.Channel.DESCRIPTOR, unspecified=True)
_CALL_RESULTS = defined_values(call_result_pb2.CallResult.DESCRIPTOR, unspecified=True)


def _check_new_text(check: Validator, display_name: str) -> None:
    """What a new or changed rule set may not hold, though a stored one may (checked here,
    not in `validate_rule_set`, so that no stored rule set stops deciding): control
    characters in its name (NUL was a 500 from Postgres)."""
    check.require(
        not CONTROL.search(display_name), "rule_set.display_name", "no control characters"
    )


# More zones than a contact may be in anywhere (a North American number with every zone
# it could be in has four or five).
MAX_CANDIDATE_ZONES = 16

# What attempts may hold, stored in Postgres (whose text refuses NUL) and counted by.
MAX_CLIENT_ID = 255
CLIENT_ID_RULE = f"at most {MAX_CLIENT_ID} characters, no control characters"
MAX_EMAIL = 254
EMAIL_RULE = f"an email address is at most {MAX_EMAIL} characters, no control characters"


def _recordable_client_id(client_id: str) -> bool:
    """Whether attempts can hold the client id (trimmed, as decisions and attempts read it)."""
    return is_plain(client_id.strip(), MAX_CLIENT_ID)


def _recordable_email(address: str) -> bool:
    """Whether attempts can hold the email address (trimmed and lower-cased, as read)."""
    return is_plain(address.strip().lower(), MAX_EMAIL)


# Serialized decision requests that passed `_check_fields` and hold no decision time (so
# pass it at any time). A dialer validates the same records again and again, and reading
# a request's fields costs more than serializing it and looking it up (in-process, 1,000
# of the bench's records: 1.40 against 0.54 ms, the least of 30 runs).
_checked_requests: set[bytes] = set()


def _asked(
    field: str,
    request: decision_pb2.DecisionRequest,
    check: Validator,
    *,
    index: int | None = None,
) -> Question:
    """The request as a question to decide for now, its checks (`_check_fields`) skipped
    if it passed them before."""
    key = request.SerializeToString()
    if key in _checked_requests:
        return request, key, None
    fields = read_fields(request)
    found = len(check.violations)
    _check_fields(field, request, fields, check, index=index)
    # fields[9]: it has a decision time
    if len(check.violations) == found and not fields[9] and len(key) <= CACHED_REQUEST_BYTES:
        if len(_checked_requests) >= SUBJECTS_PER_VIEW:
            _checked_requests.clear()
        _checked_requests.add(key)
    return request, key, fields


def _check_fields(
    field: str,
    request: decision_pb2.DecisionRequest,
    fields: Fields,
    check: Validator,
    *,
    index: int | None = None,
    any_time: bool = False,
) -> None:
    """`field` is the request's field, `index` its position in a batch, `fields` what
    `read_fields` read of it. Field paths are only formatted for a violation: a batch
    checks 1,000 requests."""
    raw_address, country, zone, _, _, candidates, client_id, channel, campaign, timed = fields
    address = raw_address.strip()
    no_address = not address
    # What RecordAttempts refuses to record is refused here too: attempts of that client
    # or email address could never be counted, so no attempt rule could ever deny them.
    odd_email = "@" in address and not _recordable_email(address)
    odd_client_id = bool(client_id) and not _recordable_client_id(client_id)
    unknown_zone = bool(zone) and not is_local_zone(zone)
    # Each is a zone every time rule is checked in, for every decision of the contact.
    many_candidates = len(candidates) > MAX_CANDIDATE_ZONES
    # Built only when there are candidates: a batch checks 1,000 requests.
    unknown_candidates = (
        [n for n, candidate in enumerate(candidates) if not is_local_zone(candidate)]
        if candidates
        else ()
    )
    # An undefined channel matches no attempt rule and no channel's suppression entry.
    unknown_channel = channel not in _CHANNELS
    unknown_country = bool(country) and country not in SUPPORTED_REGIONS
    # No binding names a longer one (and each would be a profile of its own in memory).
    long_campaign = len(campaign) > MAX_CAMPAIGN_NAME and (
        len(campaign_key(campaign)) > MAX_REFERENCE
    )
    if not (
        no_address
        or odd_email
        or odd_client_id
        or unknown_zone
        or unknown_candidates
        or many_candidates
        or timed
        or unknown_channel
        or unknown_country
        or long_campaign
    ):
        return  # the usual case: nothing to say
    if index is not None:
        field = f"{field}[{index}]"
    if no_address:
        check.require(False, f"{field}.contact.address", "is required")
    if odd_email:
        check.require(False, f"{field}.contact.address", EMAIL_RULE)
    if odd_client_id:
        check.require(False, f"{field}.contact.client_id", CLIENT_ID_RULE)
    if unknown_zone:
        check.require(False, f"{field}.contact.time_zone", PLACE_ZONE)
    if many_candidates:
        check.require(
            False,
            f"{field}.contact.candidate_time_zones",
            f"at most {MAX_CANDIDATE_ZONES} zones",
        )
    for n in unknown_candidates:
        check.require(False, f"{field}.contact.candidate_time_zones[{n}]", PLACE_ZONE)
    if unknown_channel:
        check.require(False, f"{field}.channel", "must be a defined channel")
    if unknown_country:
        check.require(False, f"{field}.contact.country", "must be a CLDR region code such as US")
    if long_campaign:
        check.require(
            False,
            f"{field}.campaign",
            f"a campaign's name is at most {MAX_CAMPAIGN_NAME} characters",
        )
    if timed:
        offset = abs(request.decision_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC))
        if not any_time:
            check.require(
                offset <= NOW_TOLERANCE,
                f"{field}.decision_time",
                "PreValidate decides for now; use ExplainDecision for other times",
            )
        else:
            check.require(
                offset <= EXPLAIN_RANGE, f"{field}.decision_time", "must be within 10 years of now"
            )


class DecisionHandlers(decision_service_pb2_grpc.DecisionServiceServicer):
    def __init__(self, engine: DecisionEngine, attempts: AttemptStore) -> None:
        self._engine = engine
        self._attempts = attempts
        self._mirror = attempts.mirror

    async def PreValidate(
        self, request: decision_service_pb2.PreValidateRequest, context: GrpcContext
    ) -> decision_service_pb2.PreValidateResponse:
        check = Validator()
        question = _asked("decision_request", request.decision_request, check)
        check.check()
        tenant = current_tenant()
        decisions = await self._engine.answer(tenant, [question])
        count_decisions(tenant, decisions)
        return decision_service_pb2.PreValidateResponse(decision=decisions[0])

    async def PreValidateBatch(
        self, request: decision_service_pb2.PreValidateBatchRequest, context: GrpcContext
    ) -> decision_service_pb2.PreValidateBatchResponse:
        check = Validator()
        check.require(
            0 < len(request.decision_requests) <= MAX_BATCH,
            "decision_requests",
            f"1-{MAX_BATCH} requests",
        )
        questions = [
            _asked("decision_requests", item, check, index=n)
            for n, item in enumerate(request.decision_requests)
        ]
        check.check()
        tenant = current_tenant()
        decisions = await self._engine.answer(tenant, questions)
        count_decisions(tenant, decisions)
        return decision_service_pb2.PreValidateBatchResponse(decisions=decisions)

    async def PreValidateStream(
        self,
        request_iterator: AsyncIterator[decision_service_pb2.PreValidateStreamRequest],
        context: GrpcContext,
    ) -> AsyncIterator[decision_service_pb2.PreValidateStreamResponse]:
        """Up to `STREAM_IN_FLIGHT` questions of a stream are decided at once, answered as
        they are decided (the contract allows any order): one at a time, each would wait
        out the previous one's Redis read, and none would share a read. A question holds
        its place until its answer is sent, so a dialer that sends without reading the
        answers is made to wait rather than piling them up in memory."""
        tenant = current_tenant()
        # Never more than STREAM_IN_FLIGHT answers and the end: putting never waits.
        answers: asyncio.Queue[decision_service_pb2.PreValidateStreamResponse | None] = (
            asyncio.Queue()
        )
        in_flight = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def answer(message: decision_service_pb2.PreValidateStreamRequest) -> None:
            try:
                decision = await self._stream_decision(tenant, message)
            except BaseException:
                in_flight.release()
                raise
            answers.put_nowait(
                decision_service_pb2.PreValidateStreamResponse(
                    correlation_id=message.correlation_id, decision=decision
                )
            )

        async def read() -> None:
            deciding: set[asyncio.Task[None]] = set()
            try:
                async for message in request_iterator:
                    await in_flight.acquire()  # a sender faster than Redis waits here
                    task = asyncio.create_task(answer(message))
                    deciding.add(task)
                    task.add_done_callback(deciding.discard)
                await asyncio.gather(*deciding)
            finally:
                for task in deciding:
                    task.cancel()
                answers.put_nowait(None)

        reading = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
                in_flight.release()  # sent: the next question may be taken
            await reading  # a failed read or decision ends the stream with its error
        finally:
            reading.cancel()

    async def _stream_decision(
        self, tenant: str, message: decision_service_pb2.PreValidateStreamRequest
    ) -> decision_pb2.Decision:
        """A stream answers a bad question with a denial naming what is wrong: one bad
        record must not end the stream of a dialer's others."""
        check = Validator()
        check.require(len(message.correlation_id) <= 64, "correlation_id", "at most 64 characters")
        question = _asked("decision_request", message.decision_request, check)
        if check.violations:
            decision = decision_pb2.Decision(
                allowed=False,
                denials=[
                    decision_pb2.Denial(
                        code=decision_pb2.DENIAL_CODE_INVALID_ADDRESS,
                        reason="; ".join(f"{v.field}: {v.description}" for v in check.violations),
                    )
                ],
            )
        else:
            (decision,) = await self._engine.answer(tenant, [question])
        count_decisions(tenant, (decision,))
        return decision

    async def RecordAttempts(
        self, request: decision_service_pb2.RecordAttemptsRequest, context: GrpcContext
    ) -> decision_service_pb2.RecordAttemptsResponse:
        check = Validator()
        check.require(0 < len(request.attempts) <= MAX_BATCH, "attempts", f"1-{MAX_BATCH} attempts")
        reports = []
        received = datetime.now(UTC)
        tenant = current_tenant()
        # Read as decisions read the contact, or the attempt counts against another number.
        region = await self._engine.region(tenant)
        for n, attempt in enumerate(request.attempts):
            # Stored in Postgres, whose text refuses NUL: a 500 would leave them uncounted.
            check.require(
                is_plain(attempt.attempt_id, 128, least=1),
                f"attempts[{n}].attempt_id",
                "1-128 characters, no control characters",
            )
            client_id = attempt.contact.client_id.strip()  # as decisions read it
            check.require(
                _recordable_client_id(client_id),
                f"attempts[{n}].contact.client_id",
                CLIENT_ID_RULE,
            )
            # An undefined one would be stored and never counted by any attempt rule.
            check.require(
                attempt.channel in _CHANNELS, f"attempts[{n}].channel", "must be a defined channel"
            )
            check.require(
                attempt.call_result in _CALL_RESULTS,
                f"attempts[{n}].call_result",
                "must be a defined call result",
            )
            address = attempt.contact.address.strip()
            if "@" not in address:
                country = attempt.contact.country.upper() or region
                try:
                    address = normalize_phone(address, country).e164
                except PhoneError as error:
                    if error.reason == "NO_REGION":
                        # Read as another region's, it would count against another number.
                        raise Unavailable(
                            "the tenant's region is not available yet (IAM's settings mirror);"
                            " report again shortly"
                        ) from error
                    check.require(False, f"attempts[{n}].contact.address", str(error))
            else:
                address = address.lower()
                check.require(
                    _recordable_email(address), f"attempts[{n}].contact.address", EMAIL_RULE
                )
            # Reported, so already made: a later stamp (the dialer's clock is ahead) would
            # not count until that instant.
            when = (
                min(attempt.attempt_time.ToDatetime(tzinfo=UTC), received)
                if attempt.HasField("attempt_time")
                else received
            )
            reports.append(
                AttemptReport(
                    attempt_id=attempt.attempt_id,
                    device=address,
                    client_id=client_id,
                    call_result=attempt.call_result,
                    channel=attempt.channel or channel_pb2.CHANNEL_VOICE,
                    attempt_time=when,
                    reported_at=received,
                )
            )
        check.check()
        new = await self._attempts.record(tenant, reports)
        count_attempts(tenant, reported=len(reports), new=new)
        return decision_service_pb2.RecordAttemptsResponse(new_attempt_count=new)

    async def ExplainDecision(
        self, request: decision_service_pb2.ExplainDecisionRequest, context: GrpcContext
    ) -> decision_service_pb2.ExplainDecisionResponse:
        check = Validator()
        asked = request.decision_request
        fields = read_fields(asked)
        _check_fields("decision_request", asked, fields, check, any_time=True)
        check.check()
        when = (
            asked.decision_time.ToDatetime(tzinfo=UTC)
            if asked.HasField("decision_time")
            else datetime.now(UTC)
        )
        explained: Question = (asked, asked.SerializeToString(), fields)
        tenant = current_tenant()
        (decision,) = await self._engine.answer(tenant, [explained], now=when)
        response = decision_service_pb2.ExplainDecisionResponse(
            decision=decision,
            time_zone_candidates=decision.time_zone.split(",") if decision.time_zone else [],
        )
        denied = {(d.source, d.code) for d in decision.denials}
        _, messages = await self._mirror.load(tenant)
        place = await self._engine.place(tenant, explained)
        # The rule sets the decision was made with (another campaign's or channel's would
        # only mislead), or every one when it could be made with none (one is invalid).
        used = {revision.rpartition("@")[0] for revision in decision.rule_set_revisions}
        candidates: list[rule_set_pb2.RuleSet] = [m for m in messages if not used or m.name in used]
        if DEFAULT_RULE_SET.name in used:
            candidates.append(DEFAULT_RULE_SET)
        for message in candidates:
            try:
                compiled = compile_rule_set(message)
            except InvalidRuleSet as error:
                response.verdicts.add(rule=message.name, allowed=False, detail=str(error))
                continue
            if place is not None:
                window = window_verdict(compiled, place, when)
                response.verdicts.add(
                    rule=f"{compiled.name}#contact_windows",
                    allowed=window is None,
                    detail=window or "inside the windows in every candidate zone",
                )
                day = date_verdict(compiled, place, when)
                response.verdicts.add(
                    rule=f"{compiled.name}#dates",
                    allowed=day is None,
                    detail=day or "no blackout date or holiday",
                )
            for limit in compiled.attempt_limits:
                source = f"{compiled.name}#attempt_rules[{limit.index}]"
                blocked = (source, decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT) in denied
                response.verdicts.add(
                    rule=source,
                    allowed=not blocked,
                    detail=next(
                        (d.reason for d in decision.denials if d.source == source),
                        f"fewer than {limit.max_attempts} attempts",
                    ),
                )
        for denial in decision.denials:
            if denial.code in (
                decision_pb2.DENIAL_CODE_SUPPRESSED,
                decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE,
                decision_pb2.DENIAL_CODE_INVALID_ADDRESS,
                decision_pb2.DENIAL_CODE_UNKNOWN_TIME_ZONE,
            ):
                response.verdicts.add(
                    rule=denial.source or decision_pb2.DenialCode.Name(denial.code),
                    allowed=False,
                    detail=denial.reason,
                )
        # Which lists were checked: what an administrator needs when a number on one of
        # them was dialled. Only when the contact was read at all.
        if place is not None:
            checked, missing = await self._engine.suppression_lists(
                tenant, request.decision_request
            )
            suppressing = {d.source for d in decision.denials}
            for list_id in checked:
                if f"suppressionLists/{list_id}" not in suppressing:
                    response.verdicts.add(
                        rule=f"suppressionLists/{list_id}",
                        allowed=True,
                        detail="the contact is not on it",
                    )
            for list_id in missing:
                response.verdicts.add(
                    rule=f"suppressionLists/{list_id}",
                    allowed=True,
                    detail="named by the rule set, but the tenant has no such list: it "
                    "suppresses nothing",
                )
        return response

    async def ValidateOcsRecord(
        self, request: decision_service_pb2.ValidateOcsRecordRequest, context: GrpcContext
    ) -> decision_service_pb2.ValidateOcsRecordResponse:
        record = OcsRecord(request.attributes)
        decision_request = record.decision_request()
        if not decision_request.contact.address:
            raise InvalidArgument([FieldViolation("GSW_PHONE", "is required")])
        # The checks of PreValidate, named by the record's fields: a record its call
        # history could not be recorded for must not be dialled either.
        check = Validator()
        question = _asked("record", decision_request, check)
        if check.violations:
            raise InvalidArgument(record.violations("record", check.violations))
        tenant = current_tenant()
        (decision,) = await self._engine.answer(tenant, [question])
        count_decisions(tenant, (decision,))
        if not decision.allowed:
            # HTTP 409 through the edge: the dialer applies its treatments.
            metadata = {
                f"denial_{n}": f"{decision_pb2.DenialCode.Name(d.code)}: {d.reason}"
                for n, d in enumerate(decision.denials)
            }
            if decision.HasField("next_allowed_time"):
                metadata["next_allowed_time"] = decision.next_allowed_time.ToJsonString()
            raise Aborted(
                "do not dial: " + "; ".join(d.reason for d in decision.denials),
                reason="DO_NOT_DIAL",
                metadata=metadata,
            )
        return decision_service_pb2.ValidateOcsRecordResponse(decision=decision)

    async def RecordOcsCallHistory(
        self, request: decision_service_pb2.RecordOcsCallHistoryRequest, context: GrpcContext
    ) -> decision_service_pb2.RecordOcsCallHistoryResponse:
        record = OcsRecord(request.attributes)
        attempt = record.attempt()
        check = Validator()
        check.require(bool(attempt.attempt_id), "GSW_CALL_ATTEMPT_GUID", "is required")
        check.require(bool(attempt.contact.address), "GSW_PHONE", "is required")
        check.check()
        try:
            await self.RecordAttempts(
                decision_service_pb2.RecordAttemptsRequest(attempts=[attempt]), context
            )
        except InvalidArgument as error:
            raise InvalidArgument(record.violations("attempts[0]", error.violations)) from None
        return decision_service_pb2.RecordOcsCallHistoryResponse()
