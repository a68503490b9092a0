"""gRPC handlers of the native callbacks API: CallbackService, CallbackConfigService and the
routing platform's RoutingService."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from cxmesh.callbacks.v1 import (
    callback_pb2,
    callback_service_pb2,
    callback_service_pb2_grpc,
)
from cxmesh_server.callbacks.domain.services import NAME, validate_service
from cxmesh_server.callbacks.store import CallbackFilter
from cxmesh_server.callbacks.usecases import CallbackRequest, Callbacks
from cxmesh_server.contacts.phones import PhoneError, normalize_phone
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.convert import resource_id
from cxmesh_server.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Validator,
)
from cxmesh_server.runtime.masks import update_paths

S = callback_pb2
M = callback_service_pb2
DEFAULT_LEASE = timedelta(seconds=60)
MAX_LEASE = timedelta(minutes=30)
UPDATABLE_SETTINGS = {
    field.name
    for field in S.CallbackServiceConfig.DESCRIPTOR.fields
    if field.name not in ("name", "create_time")
}


def _identifier(value: str, field: str) -> str:
    if not NAME.match(value):
        raise InvalidArgument([FieldViolation(field, "1-64 letters, digits, _ or -")])
    return value


async def _e164_filter(callbacks: Callbacks, tenant: str, number: str) -> str:
    """A number to list the callbacks of, as callbacks store it: national numbers in the
    tenant's region (a service's own region is for creating callbacks in it)."""
    if not number.strip():
        return ""
    try:
        return normalize_phone(number, await callbacks.national_region(tenant, number)).e164
    except PhoneError as error:
        raise InvalidArgument([FieldViolation("phone_number", str(error))]) from error


def user_data_of(message: S.Callback) -> dict[str, object] | None:
    """Keys must be identifiers; others are ignored (as GES does)."""
    if not message.HasField("user_data"):
        return None
    values = json_format.MessageToDict(message.user_data)
    return {k: v for k, v in values.items() if k.isidentifier()} or None


class CallbackHandlers(callback_service_pb2_grpc.CallbackServiceServicer):
    def __init__(self, callbacks: Callbacks) -> None:
        self._callbacks = callbacks

    async def CreateCallback(
        self, request: M.CreateCallbackRequest, context: GrpcContext
    ) -> M.CreateCallbackResponse:
        message = request.callback
        check = Validator()
        check.require(
            message.callback_service.startswith("callbackServices/"),
            "callback.callback_service",
            "must be callbackServices/<name>",
        )
        check.require(bool(message.phone_number.strip()), "callback.phone_number", "is required")
        check.check()
        created = await self._callbacks.create(
            current_tenant(),
            CallbackRequest(
                service_id=message.callback_service.removeprefix("callbackServices/"),
                phone_number=message.phone_number,
                desired_time=(
                    message.desired_time.ToDatetime(tzinfo=UTC)
                    if message.HasField("desired_time")
                    else None
                ),
                priority=message.priority,
                user_data=user_data_of(message),
                push_targets=tuple((t.channel, t.target) for t in message.push_targets),
                request_id=request.request_id,
            ),
            datetime.now(UTC),
        )
        return M.CreateCallbackResponse(callback=created)

    async def GetCallback(
        self, request: M.GetCallbackRequest, context: GrpcContext
    ) -> M.GetCallbackResponse:
        tenant = current_tenant()
        callback = await self._callbacks.store.get(
            tenant, resource_id(request.name, "callbacks", "name")
        )
        wait = await self._callbacks.wait_of(tenant, callback)
        if wait is not None and wait.seconds >= 0:
            callback.estimated_wait_time.FromTimedelta(timedelta(seconds=wait.seconds))
        return M.GetCallbackResponse(callback=callback)

    async def ListCallbacks(
        self, request: M.ListCallbacksRequest, context: GrpcContext
    ) -> M.ListCallbacksResponse:
        where = CallbackFilter(
            service_id=(
                resource_id(request.callback_service, "callbackServices", "callback_service")
                if request.callback_service
                else ""
            ),
            states=[int(s) for s in request.states],
            phone_number=await _e164_filter(
                self._callbacks, current_tenant(), request.phone_number
            ),
            desired_after=(
                request.desired_after.ToDatetime(tzinfo=UTC)
                if request.HasField("desired_after")
                else None
            ),
            desired_before=(
                request.desired_before.ToDatetime(tzinfo=UTC)
                if request.HasField("desired_before")
                else None
            ),
        )
        tenant = current_tenant()
        rows, token = await paging.read_page(
            request.page_size,
            request.page_token,
            lambda offset, limit: self._callbacks.store.list_callbacks(
                tenant, where, offset, limit
            ),
        )
        return M.ListCallbacksResponse(callbacks=rows, next_page_token=token)

    async def RescheduleCallback(
        self, request: M.RescheduleCallbackRequest, context: GrpcContext
    ) -> M.RescheduleCallbackResponse:
        if not request.HasField("desired_time"):
            raise InvalidArgument([FieldViolation("desired_time", "is required")])
        moved = await self._callbacks.reschedule(
            current_tenant(),
            resource_id(request.name, "callbacks", "name"),
            request.desired_time.ToDatetime(tzinfo=UTC),
            datetime.now(UTC),
        )
        return M.RescheduleCallbackResponse(callback=moved)

    async def GetCallbackStatistics(
        self, request: M.GetCallbackStatisticsRequest, context: GrpcContext
    ) -> M.GetCallbackStatisticsResponse:
        rows = await self._callbacks.store.statistics(current_tenant())
        return M.GetCallbackStatisticsResponse(
            counts=[
                M.CallbackCount(
                    callback_service=f"callbackServices/{r['service_id']}",
                    state=r["state"],
                    reason=r["reason"],
                    count=r["callbacks"],
                )
                for r in rows
            ]
        )

    async def CancelCallback(
        self, request: M.CancelCallbackRequest, context: GrpcContext
    ) -> M.CancelCallbackResponse:
        cancelled = await self._callbacks.complete(
            current_tenant(),
            resource_id(request.name, "callbacks", "name"),
            S.CALLBACK_REASON_CANCELLED,
        )
        return M.CancelCallbackResponse(callback=cancelled)


class CallbackConfigHandlers(callback_service_pb2_grpc.CallbackConfigServiceServicer):
    def __init__(self, callbacks: Callbacks) -> None:
        self._store = callbacks.store

    async def CreateCallbackService(
        self, request: M.CreateCallbackServiceRequest, context: GrpcContext
    ) -> M.CreateCallbackServiceResponse:
        service_id = _identifier(request.callback_service_id, "callback_service_id")
        check = Validator()
        validate_service(request.callback_service, check)
        check.check()
        created = await self._store.create_service(
            current_tenant(), service_id, request.callback_service
        )
        return M.CreateCallbackServiceResponse(callback_service=created)

    async def GetCallbackService(
        self, request: M.GetCallbackServiceRequest, context: GrpcContext
    ) -> M.GetCallbackServiceResponse:
        service_id = resource_id(request.name, "callbackServices", "name")
        return M.GetCallbackServiceResponse(
            callback_service=await self._store.get_service(current_tenant(), service_id)
        )

    async def ListCallbackServices(
        self, request: M.ListCallbackServicesRequest, context: GrpcContext
    ) -> M.ListCallbackServicesResponse:
        tenant = current_tenant()
        rows, token = await paging.read_page(
            request.page_size,
            request.page_token,
            lambda offset, limit: self._store.list_services(tenant, offset, limit),
        )
        return M.ListCallbackServicesResponse(callback_services=rows, next_page_token=token)

    async def UpdateCallbackService(
        self, request: M.UpdateCallbackServiceRequest, context: GrpcContext
    ) -> M.UpdateCallbackServiceResponse:
        tenant = current_tenant()
        service_id = resource_id(
            request.callback_service.name, "callbackServices", "callback_service.name"
        )
        paths = update_paths(request.update_mask, UPDATABLE_SETTINGS)
        merged = await self._store.get_service(tenant, service_id)
        for path in paths:
            merged.ClearField(path)  # type: ignore[arg-type]
            field = S.CallbackServiceConfig.DESCRIPTOR.fields_by_name[path]
            if field.is_repeated:
                getattr(merged, path).extend(getattr(request.callback_service, path))
            elif field.message_type is not None:
                getattr(merged, path).CopyFrom(getattr(request.callback_service, path))
            elif not field.has_presence or request.callback_service.HasField(path):  # type: ignore[arg-type]
                # A masked optional field left unset goes back to its default.
                setattr(merged, path, getattr(request.callback_service, path))
        check = Validator()
        validate_service(merged, check)
        check.check()
        updated = await self._store.replace_service(tenant, service_id, merged)
        return M.UpdateCallbackServiceResponse(callback_service=updated)

    async def PublishCallbackServices(
        self, request: M.PublishCallbackServicesRequest, context: GrpcContext
    ) -> M.PublishCallbackServicesResponse:
        check = Validator()
        table = []
        seen: set[str] = set()
        for n, config in enumerate(request.callback_services):
            service_id = config.name.removeprefix("callbackServices/")
            check.require(
                config.name.startswith("callbackServices/") and bool(NAME.match(service_id)),
                f"callback_services[{n}].name",
                "must be callbackServices/<1-64 letters, digits, _ or ->",
            )
            check.require(service_id not in seen, f"callback_services[{n}].name", "appears twice")
            seen.add(service_id)
            validate_service(config, check, f"callback_services[{n}]")
            table.append((service_id, config))
        check.check()
        version, stored = await self._store.publish_services(current_tenant(), table)
        return M.PublishCallbackServicesResponse(version=version, callback_services=stored)

    async def DeleteCallbackService(
        self, request: M.DeleteCallbackServiceRequest, context: GrpcContext
    ) -> M.DeleteCallbackServiceResponse:
        await self._store.delete_service(
            current_tenant(), resource_id(request.name, "callbackServices", "name")
        )
        return M.DeleteCallbackServiceResponse()

    async def CreateVirtualQueue(
        self, request: M.CreateVirtualQueueRequest, context: GrpcContext
    ) -> M.CreateVirtualQueueResponse:
        queue_id = _identifier(request.virtual_queue_id, "virtual_queue_id")
        return M.CreateVirtualQueueResponse(
            virtual_queue=await self._store.create_queue(current_tenant(), queue_id)
        )

    async def ListVirtualQueues(
        self, request: M.ListVirtualQueuesRequest, context: GrpcContext
    ) -> M.ListVirtualQueuesResponse:
        tenant = current_tenant()
        rows, token = await paging.read_page(
            request.page_size,
            request.page_token,
            lambda offset, limit: self._store.list_queues(tenant, offset, limit),
        )
        return M.ListVirtualQueuesResponse(virtual_queues=rows, next_page_token=token)

    async def CreateCallInGroup(
        self, request: M.CreateCallInGroupRequest, context: GrpcContext
    ) -> M.CreateCallInGroupResponse:
        group_id = _identifier(request.call_in_group_id, "call_in_group_id")
        group = request.call_in_group
        check = Validator()
        check.require(
            0 < len(group.phone_numbers) <= 1000, "call_in_group.phone_numbers", "1-1000 numbers"
        )
        check.require(
            group.code_length == 0 or 4 <= group.code_length <= 10,
            "call_in_group.code_length",
            "4-10 digits",
        )
        check.check()
        return M.CreateCallInGroupResponse(
            call_in_group=await self._store.create_call_in_group(current_tenant(), group_id, group)
        )

    async def ListCallInGroups(
        self, request: M.ListCallInGroupsRequest, context: GrpcContext
    ) -> M.ListCallInGroupsResponse:
        tenant = current_tenant()
        rows, token = await paging.read_page(
            request.page_size,
            request.page_token,
            lambda offset, limit: self._store.list_call_in_groups(tenant, offset, limit),
        )
        return M.ListCallInGroupsResponse(call_in_groups=rows, next_page_token=token)


class RoutingHandlers(callback_service_pb2_grpc.RoutingServiceServicer):
    """The routing platform's side: claim queued callbacks, report what happened."""

    def __init__(self, callbacks: Callbacks) -> None:
        self._callbacks = callbacks

    async def ClaimCallback(
        self, request: M.ClaimCallbackRequest, context: GrpcContext
    ) -> M.ClaimCallbackResponse:
        queue_id = resource_id(request.virtual_queue, "virtualQueues", "virtual_queue")
        lease = request.lease_duration.ToTimedelta() or DEFAULT_LEASE
        if not timedelta(seconds=1) <= lease <= MAX_LEASE:
            raise InvalidArgument([FieldViolation("lease_duration", "1 s to 30 min")])
        tenant = current_tenant()
        claimed = await self._callbacks.store.claim(tenant, queue_id, lease)
        if claimed is not None:
            await self._callbacks.announce(tenant, claimed)
        return M.ClaimCallbackResponse(callback=claimed)

    async def ReportCallbackState(
        self, request: M.ReportCallbackStateRequest, context: GrpcContext
    ) -> M.ReportCallbackStateResponse:
        tenant = current_tenant()
        callback_id = resource_id(request.name, "callbacks", "name")
        if request.state == S.CALLBACK_STATE_SCHEDULED:
            raise FailedPrecondition(
                "routing does not schedule callbacks: report COMPLETED with NOT_AVAILABLE "
                "and the service schedules the retry",
                reason="ILLEGAL_TRANSITION",
            )
        if request.state == S.CALLBACK_STATE_COMPLETED:
            if request.reason == S.CALLBACK_REASON_UNSPECIFIED:
                raise InvalidArgument([FieldViolation("reason", "is required to complete")])
            moved = await self._callbacks.complete(tenant, callback_id, request.reason)
        else:
            moved = await self._callbacks.move(tenant, callback_id, request.state, request.reason)
        return M.ReportCallbackStateResponse(callback=moved)

    async def ReportQueueStatistics(
        self, request: M.ReportQueueStatisticsRequest, context: GrpcContext
    ) -> M.ReportQueueStatisticsResponse:
        queue_id = resource_id(request.virtual_queue, "virtualQueues", "virtual_queue")
        check = Validator()
        check.require(request.agents_logged_in >= 0, "agents_logged_in", "at least 0")
        check.require(
            0 <= request.agents_ready <= request.agents_logged_in,
            "agents_ready",
            "0 to agents_logged_in",
        )
        check.check()
        await self._callbacks.store.report_queue(
            current_tenant(),
            queue_id,
            request.agents_logged_in,
            request.agents_ready,
            [
                (
                    h.wait_time.ToTimedelta().total_seconds(),
                    h.handle_time.ToTimedelta().total_seconds(),
                )
                for h in request.handled_interactions
            ],
        )
        return M.ReportQueueStatisticsResponse()

    async def MatchCallInCode(
        self, request: M.MatchCallInCodeRequest, context: GrpcContext
    ) -> M.MatchCallInCodeResponse:
        row = await self._callbacks.store.match_call_in(
            current_tenant(), request.to_phone_number, request.access_code
        )
        if row is None:
            raise NotFound("no valid request for this number and code")
        return M.MatchCallInCodeResponse(
            call_in_group=f"callInGroups/{row['group_id']}",
            from_phone_number=row["from_number"],
            callback=f"callbacks/{row['callback_id']}" if row["callback_id"] else "",
        )
