"""gRPC handlers of SuppressionService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from cxmesh.lists.v1 import suppression_pb2, suppression_service_pb2_grpc
from cxmesh.lists.v1 import suppression_service_pb2 as pb
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.contacts.campaigns import is_campaign
from cxmesh_server.contacts.text import CONTROL
from cxmesh_server.lists.convert import entry_message, suppression_list_message
from cxmesh_server.lists.dnc import load_dnc_file
from cxmesh_server.lists.domain.suppression import (
    KIND_OF_TYPE,
    TargetError,
    expiry,
    normalize_target,
)
from cxmesh_server.lists.suppression_store import EntryRow, SuppressionStore
from cxmesh_server.mirrors.tenant_regions import TenantRegions
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.convert import defined_values, resource_id
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument, Validator

MAX_BATCH = 1000
# Compliance reads a list's campaigns with its index on every change of it.
MAX_CAMPAIGNS = 1000
_CHANNELS = defined_values(channel_pb2.Channel.DESCRIPTOR, unspecified=False)


def _check_channels(channels: Iterable[int], field: str, check: Validator) -> None:
    # UNSPECIFIED or an undefined channel is one no decision is for: an entry of it would
    # suppress nothing.
    check.require(
        all(channel in _CHANNELS for channel in channels),
        field,
        "must be defined channels (none: every channel)",
    )


def entry_row(
    field: str,
    entry: suppression_pb2.SuppressionEntry,
    check: Validator,
    region: str,
    emergency: bool = False,
) -> EntryRow | None:
    """`region` reads national phone numbers: the tenant's default region."""
    target = entry.WhichOneof("target")
    if target is None:
        check.require(False, field, "needs a phone_number, email or client_id")
        return None
    kind = {"phone_number": "phone", "email": "email", "client_id": "client"}[target]
    try:
        normalized = normalize_target(kind, getattr(entry, target), region)
    except TargetError as error:
        check.require(False, f"{field}.{target}", str(error))
        return None
    check.require(len(entry.reason) <= 256, f"{field}.reason", "at most 256 characters")
    check.require(not CONTROL.search(entry.reason), f"{field}.reason", "no control characters")
    _check_channels(entry.channels, f"{field}.channels", check)
    expire = None
    if entry.HasField("expire_time"):
        try:
            expire = expiry(entry.expire_time.ToDatetime(tzinfo=UTC))
        except TargetError as error:
            check.require(False, f"{field}.expire_time", str(error))
    return EntryRow(
        kind=kind,
        target=normalized.value,
        channels=sorted(set(entry.channels)),
        expire_time=expire,
        emergency=emergency,
        reason=entry.reason,
    )


class SuppressionHandlers(suppression_service_pb2_grpc.SuppressionServiceServicer):
    def __init__(self, store: SuppressionStore, regions: TenantRegions) -> None:
        self._store = store
        self._regions = regions

    async def CreateSuppressionList(
        self, request: pb.CreateSuppressionListRequest, context: GrpcContext
    ) -> pb.CreateSuppressionListResponse:
        suppression_list = request.suppression_list
        check = Validator()
        check.require(
            0 < len(suppression_list.display_name) <= 128,
            "suppression_list.display_name",
            "must be 1-128 characters",
        )
        check.require(
            len(suppression_list.campaigns) <= MAX_CAMPAIGNS,
            "suppression_list.campaigns",
            f"at most {MAX_CAMPAIGNS:,}",
        )
        for n, campaign in enumerate(suppression_list.campaigns):
            check.require(
                is_campaign(campaign),
                f"suppression_list.campaigns[{n}]",
                "must be campaigns/{id}, the id at most 255 characters",
            )
        check.check()
        row = await self._store.create_list(
            current_tenant(),
            suppression_list.display_name,
            list(suppression_list.campaigns),
            suppression_list.source,
            request.request_id,
        )
        return pb.CreateSuppressionListResponse(suppression_list=suppression_list_message(row))

    async def GetSuppressionList(
        self, request: pb.GetSuppressionListRequest, context: GrpcContext
    ) -> pb.GetSuppressionListResponse:
        row = await self._store.get_list(
            current_tenant(), resource_id(request.name, "suppressionLists", "name")
        )
        return pb.GetSuppressionListResponse(suppression_list=suppression_list_message(row))

    async def ListSuppressionLists(
        self, request: pb.ListSuppressionListsRequest, context: GrpcContext
    ) -> pb.ListSuppressionListsResponse:
        size = paging.page_size(request.page_size)
        position = paging.decode_token(request.page_token)
        rows = await self._store.list_lists(
            current_tenant(), str(position[0]) if position else "", size + 1
        )
        token = (
            paging.encode_token([f"{rows[size - 1].display_name}/{rows[size - 1].list_id}"])
            if len(rows) > size
            else ""
        )
        return pb.ListSuppressionListsResponse(
            suppression_lists=[suppression_list_message(r) for r in rows[:size]],
            next_page_token=token,
        )

    async def DeleteSuppressionList(
        self, request: pb.DeleteSuppressionListRequest, context: GrpcContext
    ) -> pb.DeleteSuppressionListResponse:
        await self._store.delete_list(
            current_tenant(), resource_id(request.name, "suppressionLists", "name")
        )
        return pb.DeleteSuppressionListResponse()

    async def CreateSuppressionEntries(
        self, request: pb.CreateSuppressionEntriesRequest, context: GrpcContext
    ) -> pb.CreateSuppressionEntriesResponse:
        list_id = resource_id(request.parent, "suppressionLists", "parent")
        check = Validator()
        check.require(0 < len(request.entries) <= MAX_BATCH, "entries", f"1-{MAX_BATCH} entries")
        region = await self._regions.region(current_tenant())
        rows = [entry_row(f"entries[{n}]", e, check, region) for n, e in enumerate(request.entries)]
        check.check()
        stored = await self._store.upsert_entries(
            current_tenant(), list_id, [r for r in rows if r is not None]
        )
        return pb.CreateSuppressionEntriesResponse(
            entries=[entry_message(list_id, e) for e in stored]
        )

    async def CreateEmergencySuppressionEntry(
        self, request: pb.CreateEmergencySuppressionEntryRequest, context: GrpcContext
    ) -> pb.CreateEmergencySuppressionEntryResponse:
        list_id = resource_id(request.parent, "suppressionLists", "parent")
        check = Validator()
        region = await self._regions.region(current_tenant())
        row = entry_row("entry", request.entry, check, region, emergency=True)
        check.check()
        assert row is not None
        stored = await self._store.upsert_entries(current_tenant(), list_id, [row], emergency=True)
        return pb.CreateEmergencySuppressionEntryResponse(entry=entry_message(list_id, stored[0]))

    async def DeleteSuppressionEntries(
        self, request: pb.DeleteSuppressionEntriesRequest, context: GrpcContext
    ) -> pb.DeleteSuppressionEntriesResponse:
        list_id = resource_id(request.parent, "suppressionLists", "parent")
        check = Validator()
        targets: dict[str, list[str]] = {"phone": [], "email": [], "client": []}
        region = await self._regions.region(current_tenant())
        for kind, field, values in (
            ("phone", "phone_numbers", request.phone_numbers),
            ("email", "emails", request.emails),
            ("client", "client_ids", request.client_ids),
        ):
            for n, value in enumerate(values):
                try:
                    targets[kind].append(normalize_target(kind, value, region).value)
                except TargetError as error:
                    check.require(False, f"{field}[{n}]", str(error))
        total = sum(len(v) for v in targets.values())
        check.require(0 < total <= MAX_BATCH, "phone_numbers", f"1-{MAX_BATCH} targets in all")
        check.check()
        deleted = await self._store.delete_entries(current_tenant(), list_id, targets)
        return pb.DeleteSuppressionEntriesResponse(deleted_count=deleted)

    async def ListSuppressionEntries(
        self, request: pb.ListSuppressionEntriesRequest, context: GrpcContext
    ) -> pb.ListSuppressionEntriesResponse:
        list_id = resource_id(request.parent, "suppressionLists", "parent")
        size = paging.page_size(request.page_size, default=100)
        position = paging.decode_token(request.page_token)
        after = (int(position[0]), str(position[1])) if position else (0, "")
        rows = await self._store.list_entries(
            current_tenant(), list_id, after, size + 1, request.show_expired
        )
        token = ""
        if len(rows) > size:
            from cxmesh_server.lists.domain.suppression import TYPE_OF_KIND

            last = rows[size - 1]
            token = paging.encode_token([TYPE_OF_KIND[last.kind], last.target])
        return pb.ListSuppressionEntriesResponse(
            entries=[entry_message(list_id, e) for e in rows[:size]], next_page_token=token
        )

    async def ImportSuppressionEntries(
        self,
        request_iterator: AsyncIterator[pb.ImportSuppressionEntriesRequest],
        context: GrpcContext,
    ) -> pb.ImportSuppressionEntriesResponse:
        options = await _options(request_iterator)
        list_id = resource_id(options.parent, "suppressionLists", "options.parent")
        kind = KIND_OF_TYPE.get(options.target_type)
        check = Validator()
        check.require(kind is not None, "options.target_type", "is required")
        _check_channels(options.channels, "options.channels", check)
        check.check()
        assert kind is not None
        result = pb.ImportSuppressionEntriesResponse()
        region = await self._regions.region(current_tenant())
        entries: list[EntryRow] = []
        async for line_number, line in _lines(request_iterator):
            result.lines_read += 1
            target, _, expire_text = line.partition(",")
            try:
                normalized = normalize_target(kind, target, region)
                expire = (
                    expiry(datetime.fromisoformat(expire_text.strip().replace("Z", "+00:00")))
                    if expire_text.strip()
                    else None
                )
            except (TargetError, ValueError) as error:
                result.lines_rejected += 1
                if len(result.errors) < 100:
                    result.errors.append(f"line {line_number}: {error}")
                continue
            entries.append(
                EntryRow(kind, normalized.value, sorted(set(options.channels)), expire, False, "")
            )
        for start in range(0, len(entries), 10_000):
            await self._store.upsert_entries(
                current_tenant(), list_id, entries[start : start + 10_000]
            )
        result.entries_added = len(entries)
        return result

    async def ImportDncFile(
        self, request_iterator: AsyncIterator[pb.ImportDncFileRequest], context: GrpcContext
    ) -> pb.ImportDncFileResponse:
        options = await _options(request_iterator)
        list_id = resource_id(options.parent, "suppressionLists", "options.parent")
        check = Validator()
        check.require(
            options.provider == suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC,
            "options.provider",
            "only US_NATIONAL_DNC is supported",
        )
        check.require(options.kind != pb.DNC_FILE_KIND_UNSPECIFIED, "options.kind", "FULL or DELTA")
        check.check()
        result = await load_dnc_file(
            self._store, current_tenant(), list_id, options.kind, _lines(request_iterator)
        )
        return pb.ImportDncFileResponse(result=result)

    async def RebuildSuppressionMirror(
        self, request: pb.RebuildSuppressionMirrorRequest, context: GrpcContext
    ) -> pb.RebuildSuppressionMirrorResponse:
        count = await self._store.rebuild_mirror(current_tenant())
        return pb.RebuildSuppressionMirrorResponse(entry_count=count)


async def _options(request_iterator: AsyncIterator[Any]) -> Any:
    """The options every file upload of this service starts with."""
    first = await anext(request_iterator, None)
    if first is None or first.WhichOneof("part") != "options":
        raise InvalidArgument(
            [FieldViolation("options", "the first message must carry the options")]
        )
    return first.options


async def _lines(
    request_iterator: AsyncIterator[pb.ImportSuppressionEntriesRequest]
    | AsyncIterator[pb.ImportDncFileRequest],
) -> AsyncIterator[tuple[int, str]]:
    """The non-empty lines of a streamed UTF-8 file with their numbers."""
    pending = b""
    number = 0
    async for message in request_iterator:
        pending += message.chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield number, text
    if pending.strip():
        yield number + 1, pending.decode("utf-8", errors="replace").strip()
