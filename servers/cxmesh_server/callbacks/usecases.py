"""What both surfaces (native /v1 and GES /engagement/v3) do: create a callback under its
service's rules, offer slots, estimate waits. Errors are domain errors; each surface words
them its own way."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.captcha import CaptchaVerifier
from cxmesh_server.callbacks.domain.capacity import Slot, slot_starts
from cxmesh_server.callbacks.domain.services import ServiceRules
from cxmesh_server.callbacks.domain.states import WAITING_STATES
from cxmesh_server.callbacks.domain.wait import Estimate, estimate
from cxmesh_server.callbacks.metrics import COMPLETED, CREATED, ESTIMATED_WAIT
from cxmesh_server.callbacks.push import PushNotifier
from cxmesh_server.callbacks.store import (
    CallbackStore,
    CapacityFull,
    NewCallback,
    Refused,
    StaleService,
)
from cxmesh_server.contacts.phones import PhoneError
from cxmesh_server.mirrors.tenant_regions import TenantRegions
from cxmesh_server.runtime.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from cxmesh_server.runtime.logging import repeating

log = logging.getLogger(__name__)

# How far ahead an immediate callback looks for a free slot, and how many alternatives a
# full slot proposes.
ASAP_HORIZON = timedelta(days=7)
PROPOSED_SLOTS = 5
# A desired time this far in the past is taken as "now" (clocks of web clients drift).
PAST_TOLERANCE = timedelta(minutes=1)
# Buckets an immediate callback tries in its one round trip before looking further ahead.
ASAP_CANDIDATES = 6
ASAP_FIRST_LOOK = timedelta(days=1)
RULES_CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A create request of either surface, with field names for error messages."""

    service_id: str
    phone_number: str
    desired_time: datetime | None
    priority: int = 0
    user_data: dict[str, object] | None = None
    push_targets: tuple[tuple[str, str], ...] = ()
    request_id: str = ""
    # The GES surface's reCAPTCHA token ("" when absent); None where captcha does not apply.
    captcha_token: str | None = None
    # The request's headers (lower-case names), for a service that throttles by one.
    headers: dict[str, str] = field(default_factory=dict)
    service_field: str = "callback.callback_service"
    phone_field: str = "callback.phone_number"
    time_field: str = "callback.desired_time"


class Callbacks:
    def __init__(
        self,
        store: CallbackStore,
        *,
        captcha: CaptchaVerifier | None = None,
        push: PushNotifier | None = None,
        regions: TenantRegions,
    ) -> None:
        self.store = store
        self.captcha = captcha
        self.push = push
        self.regions = regions
        # (tenant, service) → its compiled settings. A create names their version and the
        # database refuses a stale one, so a change applies to the next request everywhere.
        self._rules: dict[tuple[str, str], ServiceRules] = {}

    async def national_region(self, tenant: str, raw_phone: str) -> str:
        """The region a national number (one without +) is read in: the tenant's, from
        IAM's settings mirror (UNAVAILABLE until it is there: read as another region's, it
        would be stored as another person's number); "" for an international one."""
        if raw_phone.lstrip().startswith("+"):
            return ""
        return await self.regions.region(tenant)

    async def rules(
        self, tenant: str, service_id: str, field: str, *, cached: bool = False
    ) -> ServiceRules:
        """The service's settings; `cached` only where the database checks their version."""
        key = (tenant, service_id)
        found = self._rules.get(key) if cached else None
        if found is not None:
            return found
        try:
            rules = await self.store.service_rules(tenant, service_id)
        except NotFound as error:
            self._rules.pop(key, None)
            raise InvalidArgument([FieldViolation(field, "no such callback service")]) from error
        if len(self._rules) >= RULES_CACHE_ENTRIES:
            self._rules.clear()
        self._rules[key] = rules
        return rules

    async def create(
        self, tenant: str, request: CallbackRequest, now: datetime
    ) -> callback_pb2.Callback:
        rules = await self.rules(tenant, request.service_id, request.service_field, cached=True)
        try:
            return await self._create(tenant, rules, request, now)
        except StaleService:
            rules = await self.rules(tenant, request.service_id, request.service_field)
            return await self._create(tenant, rules, request, now)

    async def _create(
        self, tenant: str, rules: ServiceRules, request: CallbackRequest, now: datetime
    ) -> callback_pb2.Callback:
        try:
            phone = rules.phone(
                request.phone_number,
                ""
                if rules.config.phone_validation.default_region
                else await self.national_region(tenant, request.phone_number),
            )
        except PhoneError as error:
            raise InvalidArgument(
                [FieldViolation(request.phone_field, str(error))], reason=error.reason
            ) from error
        if request.captcha_token is not None and rules.config.captcha_required:
            if self.captcha is None:
                raise InvalidArgument(
                    [FieldViolation("captchaToken", "captcha verification is not configured")]
                )
            await self.captcha.verify(request.captcha_token)
        immediate = request.desired_time is None
        if immediate:
            if not rules.immediate_enabled:
                raise InvalidArgument(
                    [FieldViolation(request.time_field, "immediate callbacks are disabled")]
                )
            if rules.config.reject_outside_office_hours and not rules.hours.is_open(now):
                raise InvalidArgument(
                    [FieldViolation(request.time_field, "the office is closed now")]
                )
            floor = now
            # The next open buckets of the coming day; further ahead only if all are full.
            buckets = list(
                islice(
                    slot_starts(rules.hours, rules.capacity, now, now + ASAP_FIRST_LOOK),
                    ASAP_CANDIDATES,
                )
            )
        else:
            assert request.desired_time is not None
            self._check_desired(rules, request, now)
            floor = max(request.desired_time, now)
            buckets = [rules.capacity.bucket_start(floor)]
        new = NewCallback(
            rules=rules,
            phone_number=phone.e164,
            desired_floor=floor,
            immediate=immediate,
            priority=request.priority,
            user_data=request.user_data,
            push_targets=[{"channel": c, "target": t} for c, t in request.push_targets],
            request_id=request.request_id,
            buckets=buckets,
            throttle_key=request.headers.get(rules.config.throttle_header.lower(), "")
            if rules.config.throttle_header
            else "",
        )
        try:
            try:
                created = await self.store.create(tenant, new)
            except CapacityFull:
                if not immediate:
                    raise
                # The next buckets are full: book into the first free one further ahead.
                free = await self.availability(tenant, rules, now, now + ASAP_HORIZON, 1, False)
                if not free:
                    raise
                created = await self.store.create(tenant, replace(new, buckets=[free[0].start]))
        except Refused as refused:
            if refused.kind == "throttled":
                raise ResourceExhausted(str(refused), reason="THROTTLED") from refused
            if refused.kind == "service_full":
                raise ResourceExhausted(str(refused), reason="SERVICE_FULL") from refused
            raise InvalidArgument(
                [FieldViolation(request.phone_field, str(refused))], reason="DUPLICATE_CALLBACK"
            ) from refused
        except CapacityFull as full:
            proposals = await self.availability(
                tenant, rules, floor, floor + ASAP_HORIZON, PROPOSED_SLOTS, False
            )
            raise ResourceExhausted(
                "no capacity left at the desired time",
                reason="CAPACITY_FULL",
                metadata={f"slot_{n}": slot.start.isoformat() for n, slot in enumerate(proposals)},
            ) from full
        CREATED.labels(tenant, request.service_id).inc()
        await self.announce(tenant, created)
        return created

    async def reschedule(
        self, tenant: str, callback_id: str, desired: datetime, now: datetime
    ) -> callback_pb2.Callback:
        current = await self.store.get(tenant, callback_id)
        service_id = current.callback_service.removeprefix("callbackServices/")
        rules = await self.rules(tenant, service_id, "name")
        request = CallbackRequest(
            service_id=service_id,
            phone_number=current.phone_number,
            desired_time=desired,
            time_field="desired_time",
        )
        self._check_desired(rules, request, now)
        try:
            return await self.store.reschedule(tenant, callback_id, rules, max(desired, now))
        except CapacityFull as full:
            raise ResourceExhausted(
                "no capacity left at the desired time", reason="CAPACITY_FULL"
            ) from full

    def _check_desired(self, rules: ServiceRules, request: CallbackRequest, now: datetime) -> None:
        desired = request.desired_time
        assert desired is not None
        if not rules.scheduled_enabled:
            raise InvalidArgument(
                [FieldViolation(request.time_field, "scheduled callbacks are disabled")]
            )
        if desired < now - PAST_TOLERANCE:
            raise InvalidArgument([FieldViolation(request.time_field, "is in the past")])
        if rules.min_lead and desired < now + rules.min_lead:
            minutes = int(rules.min_lead.total_seconds() // 60)
            raise InvalidArgument(
                [FieldViolation(request.time_field, f"must be at least {minutes} min ahead")]
            )
        if desired > now + rules.max_ahead:
            raise InvalidArgument(
                [
                    FieldViolation(
                        request.time_field, f"is more than {rules.max_ahead.days} days ahead"
                    )
                ]
            )
        if rules.config.reject_outside_office_hours and not rules.hours.is_open(max(desired, now)):
            raise InvalidArgument([FieldViolation(request.time_field, "is outside office hours")])

    async def availability(
        self,
        tenant: str,
        rules: ServiceRules,
        start: datetime,
        end: datetime,
        max_slots: int,
        report_busy: bool,
    ) -> list[Slot]:
        starts = slot_starts(rules.hours, rules.capacity, start, end)
        slots: list[Slot] = []
        # Bookings are read a few buckets at a time: most answers need the first ones only.
        chunk = 4
        while batch := list(islice(starts, chunk)):
            for slot in await self.store.booked(tenant, rules, batch):
                if report_busy or slot.free > 0:
                    slots.append(slot)
                    if max_slots and len(slots) >= max_slots:
                        return slots
            chunk = 200
        return slots

    async def wait_of(self, tenant: str, callback: callback_pb2.Callback) -> Estimate | None:
        if callback.state not in WAITING_STATES:
            return None
        queue_id = await self.store.queue_of(tenant, callback.name.removeprefix("callbacks/"))
        facts = await self.store.queue_facts(tenant, queue_id)
        position = callback.position_in_queue or 1
        return estimate("mode2", position, facts.handled, facts.agents_logged_in)

    async def queue_wait(self, tenant: str, queue_id: str, mode: str) -> Estimate:
        """The wait of a callback queued now at the end of the queue."""
        facts = await self.store.queue_facts(tenant, queue_id)
        wait = estimate(mode, facts.queued + 1, facts.handled, facts.agents_logged_in)
        if mode == "mode2":
            ESTIMATED_WAIT.labels(tenant, queue_id).set(wait.seconds)
        return wait

    async def move(
        self, tenant: str, callback_id: str, state: int, reason: int = 0
    ) -> callback_pb2.Callback:
        """A state change along the state machine, announced to the callback's push targets.
        A customer not reached is tried again after the service's retry timeout until its
        last dial attempt, then the callback completes with FAIL_MAX_ATTEMPTS."""
        retry_at = None
        if (
            state == callback_pb2.CALLBACK_STATE_COMPLETED
            and reason == callback_pb2.CALLBACK_REASON_NOT_AVAILABLE
        ):
            current = await self.store.get(tenant, callback_id)
            service_id = current.callback_service.removeprefix("callbackServices/")
            rules = await self.rules(tenant, service_id, "name")
            if current.attempt_count < rules.max_dial_attempts:
                state, reason = callback_pb2.CALLBACK_STATE_SCHEDULED, 0
                retry_at = datetime.now(UTC) + rules.retry_timeout
            else:
                reason = callback_pb2.CALLBACK_REASON_FAIL_MAX_ATTEMPTS
        moved = await self.store.transition(tenant, callback_id, state, reason, retry_at=retry_at)
        if state == callback_pb2.CALLBACK_STATE_COMPLETED:
            COMPLETED.labels(
                tenant,
                moved.callback_service.removeprefix("callbackServices/"),
                callback_pb2.CallbackReason.Name(
                    callback_pb2.CallbackReason.ValueType(reason)
                ).removeprefix("CALLBACK_REASON_"),
            ).inc()
        await self.announce(tenant, moved)
        return moved

    async def complete(self, tenant: str, callback_id: str, reason: int) -> callback_pb2.Callback:
        return await self.move(tenant, callback_id, callback_pb2.CALLBACK_STATE_COMPLETED, reason)

    async def announce(self, tenant: str, callback: callback_pb2.Callback) -> None:
        """Queues push notifications of the callback's new state, if its service sends them
        for that state; never fails the change it announces."""
        if self.push is None or not self.push.enabled or not callback.push_targets:
            return
        try:
            service_id = callback.callback_service.removeprefix("callbackServices/")
            rules = await self.rules(tenant, service_id, "callback_service")
            self.push.notify(tenant, callback, {int(s) for s in rules.config.push_states})
        except Exception:
            log.warning("push notification not queued", exc_info=True, extra=repeating())

    async def announce_moved(self, rows: list[tuple[str, str]]) -> None:
        """Announces callbacks moved by the time-driven transitions (tenant, callback id)."""
        if self.push is None or not self.push.enabled:
            return
        for tenant, callback_id in rows:
            try:
                await self.announce(tenant, await self.store.get(tenant, callback_id))
            except Exception:
                log.warning("push notification not queued", exc_info=True, extra=repeating())
