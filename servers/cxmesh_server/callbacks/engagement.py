"""The GES-compatible Engagement API v3 (`/engagement/v3`): the wire shapes of
../shared/contracts/ges-engagement-v3.md over the same use cases as the native API.

Every answer carries the GES envelope. Errors keep their gRPC code (Envoy makes it the HTTP
status) and send the envelope as the `cxmesh-ges-body` trailer, which the edge turns into the
response body.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from cxmesh.callbacks.v1 import callback_pb2, engagement_service_pb2, engagement_service_pb2_grpc
from cxmesh_server.callbacks.domain.hours import zone
from cxmesh_server.callbacks.domain.states import WAITING_STATES
from cxmesh_server.callbacks.usecases import CallbackRequest, Callbacks
from cxmesh_server.contacts.timezones import valid_zones
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

E = engagement_service_pb2
GES_BODY_HEADER = "cxmesh-ges-body"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}
# What clients generated from the published spec send as cbOfferType: "not given".
SPEC_OFFER_TYPE_SENTENCE = "ASAP if the request does not include"
DEFAULT_CALL_IN_TTL = timedelta(minutes=10)
# Statistics are cached for 5 min; a client may ask for fresher ones, down to 15 s.
STATISTICS_MAX_AGE = 300
STATISTICS_MIN_AGE = 15

Response = TypeVar("Response")


def corr_id(context: GrpcContext) -> str:
    """Envoy's x-request-id: the same id is in the edge's access log."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return uuid.uuid4().hex


def ges_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as GES writes dates: 2026-11-23T15:30:00.000Z."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def parse_time(value: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise InvalidArgument(
            [FieldViolation(field, "must be ISO-8601, e.g. 2026-11-23T15:30:00.000Z")]
        ) from error
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _envelope(code: int, message: str, corr: str, data: Any = None) -> str:
    body: dict[str, Any] = {"status": {"code": code, "message": message, "corrId": corr}}
    if data is not None:
        body["data"] = data
    return json.dumps(body, separators=(",", ":"))


def ges(
    method: Callable[[Any, Any, GrpcContext], Awaitable[Response]],
) -> Callable[[Any, Any, GrpcContext], Awaitable[Response]]:
    """Sends a domain error's GES envelope with it."""

    @wraps(method)
    async def run(self: Any, request: Any, context: GrpcContext) -> Response:
        try:
            return await method(self, request, context)
        except DomainError as error:
            http = HTTP_STATUS.get(error.code, 500)
            data = None
            slots = {k: v for k, v in error.metadata.items() if k.startswith("slot_")}
            if slots:
                data = {"slots": {str(n): slots[k] for n, k in enumerate(sorted(slots))}}
            error.trailers = (
                (GES_BODY_HEADER, _envelope(http, error.message, corr_id(context), data)),
            )
            raise

    return run


def _ok(context: GrpcContext) -> E.GesStatus:
    return E.GesStatus(code=0, message="OK", corr_id=corr_id(context))


def _zone_name(value: str, field: str) -> str:
    if not value:
        return "UTC"
    if value not in valid_zones():
        raise InvalidArgument([FieldViolation(field, "must be an IANA time zone")])
    return value


def _ges_callback(callback: callback_pb2.Callback) -> E.GesCallback:
    state = callback_pb2.CallbackState.Name(callback.state).removeprefix("CALLBACK_STATE_")
    data = E.GesCallback(
        id=callback.name.removeprefix("callbacks/"),
        desired_time=ges_time(callback.desired_time.ToDatetime(tzinfo=UTC)),
        callback_state=state,
        phone_number=callback.phone_number,
    )
    if callback.state == callback_pb2.CALLBACK_STATE_COMPLETED:
        data.callback_reason = callback_pb2.CallbackReason.Name(callback.reason).removeprefix(
            "CALLBACK_REASON_"
        )
    return data


class EngagementHandlers(engagement_service_pb2_grpc.EngagementServiceServicer):
    def __init__(self, callbacks: Callbacks) -> None:
        self._callbacks = callbacks
        # tenant → (when computed, statistics)
        self._statistics: dict[str, tuple[float, struct_pb2.Struct]] = {}

    # `alwaysCheckCapacity` is accepted and has no effect: every callback, immediate ones
    # included, takes a place in a capacity bucket.
    @ges
    async def GesCreateCallback(
        self, request: E.GesCreateCallbackRequest, context: GrpcContext
    ) -> E.GesCreateCallbackResponse:
        missing = [
            FieldViolation(field, "is required")
            for field, value in (
                ("serviceName", request.service_name),
                ("phoneNumber", request.phone_number),
            )
            if not value.strip()
        ]
        if missing:
            raise InvalidArgument(missing)
        tenant = current_tenant()
        targets = [(t.channel.upper(), t.target) for t in request.push_targets if t.target]
        if request.push_target:
            targets.append(((request.push_channel or "FCM").upper(), request.push_target))
        user_data = None
        if request.HasField("user_data"):
            values = json_format.MessageToDict(request.user_data)
            user_data = {k: v for k, v in values.items() if k.isidentifier()} or None
        created = await self._callbacks.create(
            tenant,
            CallbackRequest(
                service_id=request.service_name,
                phone_number=request.phone_number,
                desired_time=(
                    parse_time(request.desired_time, "desiredTime")
                    if request.desired_time
                    else None
                ),
                priority=request.priority,
                user_data=user_data,
                push_targets=tuple(targets),
                captcha_token=request.captcha_token,
                headers={
                    k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)
                },
                service_field="serviceName",
                phone_field="phoneNumber",
                time_field="desiredTime",
            ),
            datetime.now(UTC),
        )
        return E.GesCreateCallbackResponse(
            status=_ok(context), data=E.GesCallbackId(id=created.name.removeprefix("callbacks/"))
        )

    @ges
    async def GesRetrieveCallback(
        self, request: E.GesRetrieveCallbackRequest, context: GrpcContext
    ) -> E.GesRetrieveCallbackResponse:
        tenant = current_tenant()
        callback = await self._callbacks.store.get(tenant, self._id(request.id))
        data = _ges_callback(callback)
        if callback.state in WAITING_STATES:
            wait = await self._callbacks.wait_of(tenant, callback)
            data.position_in_queue = callback.position_in_queue or 1
            data.estimated_wait_time = wait.seconds if wait is not None else -1
        return E.GesRetrieveCallbackResponse(status=_ok(context), data=data)

    @ges
    async def GesCancelCallback(
        self, request: E.GesCancelCallbackRequest, context: GrpcContext
    ) -> E.GesCancelCallbackResponse:
        callback_id = self._id(request.id)
        await self._callbacks.complete(
            current_tenant(), callback_id, callback_pb2.CALLBACK_REASON_CANCELLED
        )
        return E.GesCancelCallbackResponse(
            status=_ok(context), data=E.GesCallbackId(id=callback_id)
        )

    @staticmethod
    def _id(value: str) -> str:
        if not value.strip():
            raise InvalidArgument([FieldViolation("id", "is required")])
        if len(value) > 64 or not value.isalnum():
            raise NotFound(f"callback {value!r} not found")
        return value

    @ges
    async def GesGetAvailability(
        self, request: E.GesGetAvailabilityRequest, context: GrpcContext
    ) -> E.GesGetAvailabilityResponse:
        tenant = current_tenant()
        rules = await self._callbacks.rules(tenant, request.service_name, "serviceName")
        now = datetime.now(UTC)
        if request.start:
            start = parse_time(request.start, "start")
        elif request.start_ms:
            start = datetime.fromtimestamp(request.start_ms / 1000, UTC)
        else:
            start = now
        if request.end:
            end = parse_time(request.end, "end")
        elif request.end_ms:
            end = datetime.fromtimestamp(request.end_ms / 1000, UTC)
        elif request.number_of_days:
            end = start + timedelta(days=request.number_of_days)
        else:
            end = start
        if end < start:
            raise InvalidArgument([FieldViolation("end", "must not be before start")])
        # Nothing ends before the slot that holds `start`; nothing is offered in the past.
        end = max(end, start + rules.capacity.bucket)
        if end - start > timedelta(days=31):
            raise InvalidArgument([FieldViolation("end", "at most 31 days after start")])
        local_zone = _zone_name(request.timezone, "timezone")
        slots = await self._callbacks.availability(
            tenant, rules, max(start, now), end, request.max_time_slots, request.report_busy
        )
        data = E.GesAvailability(
            duration_min=int(rules.capacity.bucket.total_seconds() // 60), timezone=local_zone
        )
        for slot in slots:
            data.slots.add(
                utc_time=ges_time(slot.start),
                local_time=slot.start.astimezone(zone(local_zone)).isoformat(
                    timespec="milliseconds"
                ),
                capacity=slot.free,
                total=slot.size,
            )
        return E.GesGetAvailabilityResponse(status=_ok(context), data=data)

    @ges
    async def GesGetOpenFor(
        self, request: E.GesGetOpenForRequest, context: GrpcContext
    ) -> E.GesGetOpenForResponse:
        rules = await self._callbacks.rules(current_tenant(), request.service_name, "serviceName")
        _zone_name(request.timezone, "timezone")
        start = parse_time(request.start, "start") if request.start else datetime.now(UTC)
        open_for = rules.hours.open_for(start)
        return E.GesGetOpenForResponse(
            status=_ok(context), data=E.GesOpenFor(open_for=int(open_for.total_seconds()))
        )

    @ges
    async def GesGetQueueStatus(
        self, request: E.GesGetQueueStatusRequest, context: GrpcContext
    ) -> E.GesGetQueueStatusResponse:
        tenant = current_tenant()
        wait = await self._callbacks.queue_wait(tenant, request.queue_name, "mode2")
        services = await self._callbacks.store.services_of_queue(tenant, request.queue_name)
        now = datetime.now(UTC)
        immediate = wait.result_code != -2 and any(
            s.immediate_enabled and s.hours.open_for(now).total_seconds() > max(wait.seconds, 0)
            for s in services
        )
        return E.GesGetQueueStatusResponse(
            status=_ok(context),
            data=E.GesQueueStatus(
                ewt=wait.seconds,
                offer_immediate_callback=immediate,
                offer_scheduled_callback=bool(services),
            ),
        )

    @ges
    async def GesGetEstimatedWaitTime(
        self, request: E.GesGetEstimatedWaitTimeRequest, context: GrpcContext
    ) -> E.GesGetEstimatedWaitTimeResponse:
        names = [n.strip() for n in request.virtual_queues.split(",") if n.strip()]
        if not names:
            raise InvalidArgument([FieldViolation("virtual-queues", "is required")])
        mode = request.mode or "mode2"
        if mode not in ("mode1", "mode2", "mode3"):
            raise InvalidArgument([FieldViolation("mode", "mode1, mode2 or mode3")])
        tenant = current_tenant()
        response = E.GesGetEstimatedWaitTimeResponse(status=_ok(context))
        for name in names:
            try:
                wait = await self._callbacks.queue_wait(tenant, name, mode)
            except NotFound as error:
                raise InvalidArgument(
                    [FieldViolation("virtual-queues", f"no virtual queue {name!r}")]
                ) from error
            response.data.add(
                virtual_queue=name,
                estimated_wait_time=wait.seconds,
                message=wait.message,
                result_code=wait.result_code,
            )
        return response

    @ges
    async def GesCreateCallInRequest(
        self, request: E.GesCreateCallInRequestRequest, context: GrpcContext
    ) -> E.GesCreateCallInRequestResponse:
        if not request.group_name.strip():
            raise InvalidArgument([FieldViolation("groupName", "is required")])
        tenant = current_tenant()
        try:
            group = await self._callbacks.store.get_call_in_group(tenant, request.group_name)
        except NotFound as error:
            raise InvalidArgument([FieldViolation("groupName", "no such call-in group")]) from error
        ttl = group.code_ttl.ToTimedelta() or DEFAULT_CALL_IN_TTL
        row = await self._callbacks.store.create_call_in_request(
            tenant,
            group,
            request.from_phone_number,
            request.callback_service_id,
            datetime.now(UTC) + ttl,
        )
        return E.GesCreateCallInRequestResponse(
            status=_ok(context),
            data=E.GesCallInRequest(
                id=row["request_id"],
                to_phone_number=row["to_number"],
                group_name=request.group_name,
                expiration_time=int(row["expires"].timestamp() * 1000),
                access_code=int(row["access_code"]),
                from_phone_number=row["from_number"],
                callback_service_id=row["callback_id"],
            ),
        )

    @ges
    async def GesGetStatistics(
        self, request: E.GesGetStatisticsRequest, context: GrpcContext
    ) -> E.GesGetStatisticsResponse:
        """Served from a per-tenant cache up to 5 min old, or as fresh as a
        `cache-control: max-age=N` header asks (N at least 15 s), as GES does."""
        tenant = current_tenant()
        max_age = STATISTICS_MAX_AGE
        for key, value in context.invocation_metadata() or ():
            if key == "cache-control" and isinstance(value, str):
                match = re.search(r"max-age=(\d+)", value)
                if match:
                    max_age = min(max(int(match.group(1)), STATISTICS_MIN_AGE), max_age)
        cached = self._statistics.get(tenant)
        if cached is None or time.monotonic() - cached[0] > max_age:
            cached = (time.monotonic(), await self._statistics_of(tenant))
            self._statistics[tenant] = cached
        return E.GesGetStatisticsResponse(status=_ok(context), data=cached[1])

    async def _statistics_of(self, tenant: str) -> struct_pb2.Struct:
        by_service: dict[str, dict[str, float]] = {}
        for row in await self._callbacks.store.statistics(tenant):
            state = callback_pb2.CallbackState.Name(row["state"]).removeprefix("CALLBACK_STATE_")
            if row["state"] == callback_pb2.CALLBACK_STATE_COMPLETED:
                reason = callback_pb2.CallbackReason.Name(row["reason"])
                state = f"{state}_{reason.removeprefix('CALLBACK_REASON_')}"
            by_service.setdefault(row["service_id"], {})[state] = float(row["callbacks"])
        data = struct_pb2.Struct()
        data.update({"callbacks": by_service})
        return data
