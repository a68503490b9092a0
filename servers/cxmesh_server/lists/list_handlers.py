"""gRPC handlers of ContactListService: lists, records, export, List Builder."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import phonenumbers
from google.api import httpbody_pb2

from cxmesh.lists.v1 import contact_list_service_pb2 as pb
from cxmesh.lists.v1 import contact_list_service_pb2_grpc
from cxmesh_server.lists.convert import CsvWriter, contact_list_message, filter_sql, record_message
from cxmesh_server.lists.store import ListsStore, new_id
from cxmesh_server.mirrors.tenant_regions import TenantRegions
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.convert import resource_id
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument, Validator
from cxmesh_server.runtime.masks import update_paths

LIST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CUSTOM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
UPDATABLE = {"display_name", "description", "default_region", "custom_field_names"}
EXPORT_CHUNK = 1 << 20


def record_ids(name: str, field: str = "name") -> tuple[str, int]:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "contactLists"
        or parts[2] != "records"
        or not parts[3].isdigit()
    ):
        raise InvalidArgument([FieldViolation(field, "must be contactLists/{id}/records/{id}")])
    return parts[1], int(parts[3])


def validate_list_fields(
    prefix: str, display_name: str, region: str, custom: list[str], check: Validator
) -> None:
    check.require(
        0 < len(display_name) <= 128, f"{prefix}.display_name", "must be 1-128 characters"
    )
    check.require(
        not region or region in phonenumbers.SUPPORTED_REGIONS,
        f"{prefix}.default_region",
        "must be a CLDR region code such as US",
    )
    check.require(len(custom) <= 40, f"{prefix}.custom_field_names", "at most 40")
    bad = [n for n in custom if not CUSTOM_NAME.match(n)]
    check.require(not bad, f"{prefix}.custom_field_names", f"not identifiers: {bad}")


class ContactListHandlers(contact_list_service_pb2_grpc.ContactListServiceServicer):
    def __init__(self, store: ListsStore, regions: TenantRegions) -> None:
        self._store = store
        self._regions = regions

    async def _region(self, requested: str) -> str:
        return requested or await self._regions.region(current_tenant())

    async def CreateContactList(
        self, request: pb.CreateContactListRequest, context: GrpcContext
    ) -> pb.CreateContactListResponse:
        contact_list = request.contact_list
        check = Validator()
        validate_list_fields(
            "contact_list",
            contact_list.display_name,
            contact_list.default_region,
            list(contact_list.custom_field_names),
            check,
        )
        check.require(
            not request.contact_list_id or bool(LIST_ID.match(request.contact_list_id)),
            "contact_list_id",
            "must be 1-63 characters of a-z, 0-9 and '-'",
        )
        check.require(
            len(contact_list.description) <= 1024,
            "contact_list.description",
            "at most 1024 characters",
        )
        check.check()
        row = await self._store.create_list(
            current_tenant(),
            request.contact_list_id or new_id(),
            contact_list.display_name,
            contact_list.description,
            await self._region(contact_list.default_region),
            list(contact_list.custom_field_names),
            request.request_id,
        )
        return pb.CreateContactListResponse(contact_list=contact_list_message(row))

    async def GetContactList(
        self, request: pb.GetContactListRequest, context: GrpcContext
    ) -> pb.GetContactListResponse:
        row = await self._store.get_list(
            current_tenant(), resource_id(request.name, "contactLists", "name")
        )
        return pb.GetContactListResponse(contact_list=contact_list_message(row))

    async def ListContactLists(
        self, request: pb.ListContactListsRequest, context: GrpcContext
    ) -> pb.ListContactListsResponse:
        size = paging.page_size(request.page_size)
        position = paging.decode_token(request.page_token)
        rows = await self._store.list_lists(
            current_tenant(), (position[0], position[1]) if position else None, size + 1
        )
        token = (
            paging.encode_token([rows[size - 1].display_name, rows[size - 1].list_id])
            if len(rows) > size
            else ""
        )
        return pb.ListContactListsResponse(
            contact_lists=[contact_list_message(r) for r in rows[:size]], next_page_token=token
        )

    async def UpdateContactList(
        self, request: pb.UpdateContactListRequest, context: GrpcContext
    ) -> pb.UpdateContactListResponse:
        list_id = resource_id(request.contact_list.name, "contactLists", "contact_list.name")
        paths = update_paths(request.update_mask, UPDATABLE)
        check = Validator()
        new = request.contact_list
        current = await self._store.get_list(current_tenant(), list_id)
        validate_list_fields(
            "contact_list",
            new.display_name if "display_name" in paths else current.display_name,
            new.default_region if "default_region" in paths else current.default_region,
            list(new.custom_field_names)
            if "custom_field_names" in paths
            else current.custom_field_names,
            check,
        )
        check.check()
        changes: dict[str, Any] = {}
        for path in sorted(paths):
            value = getattr(new, path)
            changes[path] = list(value) if path == "custom_field_names" else value
        row = await self._store.update_list(current_tenant(), list_id, changes, new.etag)
        return pb.UpdateContactListResponse(contact_list=contact_list_message(row))

    async def DeleteContactList(
        self, request: pb.DeleteContactListRequest, context: GrpcContext
    ) -> pb.DeleteContactListResponse:
        await self._store.delete_list(
            current_tenant(), resource_id(request.name, "contactLists", "name"), request.etag
        )
        return pb.DeleteContactListResponse()

    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: GrpcContext
    ) -> pb.ListRecordsResponse:
        list_id = resource_id(request.parent, "contactLists", "parent")
        size = paging.page_size(request.page_size, default=100)
        position = paging.decode_token(request.page_token)
        where, args = filter_sql(request.filter)
        rows = await self._store.list_records(
            current_tenant(), list_id, where, args, int(position[0]) if position else 0, size + 1
        )
        token = paging.encode_token([rows[size - 1]["record_id"]]) if len(rows) > size else ""
        return pb.ListRecordsResponse(
            records=[record_message(r) for r in rows[:size]], next_page_token=token
        )

    async def GetRecord(
        self, request: pb.GetRecordRequest, context: GrpcContext
    ) -> pb.GetRecordResponse:
        list_id, record_id = record_ids(request.name)
        return pb.GetRecordResponse(
            record=record_message(
                await self._store.get_record(current_tenant(), list_id, record_id)
            )
        )

    async def UpdateRecord(
        self, request: pb.UpdateRecordRequest, context: GrpcContext
    ) -> pb.UpdateRecordResponse:
        list_id, record_id = record_ids(request.record.name, "record.name")
        paths = set(request.update_mask.paths)
        check = Validator()
        check.require(paths == {"status"}, "update_mask", "only `status` can be updated for now")
        check.require(request.record.status != 0, "record.status", "is required")
        check.check()
        row = await self._store.update_record(
            current_tenant(), list_id, record_id, {"status": request.record.status}
        )
        return pb.UpdateRecordResponse(record=record_message(row))

    async def _csv_chunks(
        self, list_ids: list[str], record_filter: pb.RecordFilter
    ) -> AsyncIterator[bytes]:
        tenant = current_tenant()
        custom: list[str] = []
        for list_id in list_ids:
            for name in (await self._store.get_list(tenant, list_id)).custom_field_names:
                if name not in custom:
                    custom.append(name)
        where, args = filter_sql(record_filter)
        writer = CsvWriter(custom)
        async for row in self._store.stream_records(tenant, list_ids, where, args):
            writer.add(row)
            if writer.buffer.tell() >= EXPORT_CHUNK:
                yield writer.take()
        yield writer.take()

    async def ExportRecords(
        self, request: pb.ExportRecordsRequest, context: GrpcContext
    ) -> AsyncIterator[pb.ExportRecordsResponse]:
        list_id = resource_id(request.parent, "contactLists", "parent")
        async for chunk in self._csv_chunks([list_id], request.filter):
            yield pb.ExportRecordsResponse(csv_chunk=chunk)

    async def DownloadRecords(
        self, request: pb.DownloadRecordsRequest, context: GrpcContext
    ) -> httpbody_pb2.HttpBody:
        list_id = resource_id(request.parent, "contactLists", "parent")
        data = b"".join([chunk async for chunk in self._csv_chunks([list_id], request.filter)])
        return httpbody_pb2.HttpBody(content_type="text/csv; charset=utf-8", data=data)

    async def BuildContactList(
        self, request: pb.BuildContactListRequest, context: GrpcContext
    ) -> pb.BuildContactListResponse:
        check = Validator()
        validate_list_fields(
            "contact_list",
            request.contact_list.display_name,
            request.contact_list.default_region,
            list(request.contact_list.custom_field_names),
            check,
        )
        check.require(
            0 < len(request.source_contact_lists) <= 20, "source_contact_lists", "1-20 lists"
        )
        check.check()
        sources = [
            resource_id(s, "contactLists", f"source_contact_lists[{n}]")
            for n, s in enumerate(request.source_contact_lists)
        ]
        where, args = filter_sql(request.filter)
        tenant = current_tenant()
        async with self._store.transaction(tenant) as db:
            stored = await self._store.applied_response(db, request.request_id)
            if stored is not None:
                return pb.BuildContactListResponse.FromString(stored)
            custom = list(request.contact_list.custom_field_names)
            for source in sources:
                for name in (await self._store.get_list_in(db, source)).custom_field_names:
                    if name not in custom:
                        custom.append(name)
            row = await self._store.create_list(
                tenant,
                new_id(),
                request.contact_list.display_name,
                request.contact_list.description,
                await self._region(request.contact_list.default_region),
                custom,
                "",
                db=db,
            )
            await self._store.copy_records(db, row.list_id, sources, where, args)
            response = pb.BuildContactListResponse(
                contact_list=contact_list_message(await self._store.get_list_in(db, row.list_id))
            )
            await self._store.remember_response(
                db, request.request_id, response.SerializeToString()
            )
        return response

    async def SplitContactList(
        self, request: pb.SplitContactListRequest, context: GrpcContext
    ) -> pb.SplitContactListResponse:
        list_id = resource_id(request.name, "contactLists", "name")
        how = request.WhichOneof("split")
        check = Validator()
        check.require(how is not None, "part_count", "give part_count or field")
        if how == "part_count":
            check.require(2 <= request.part_count <= 100, "part_count", "2-100")
        column_sql = ""
        if how == "field":
            if request.field in SPLIT_COLUMNS:
                column_sql = request.field
            elif request.field.startswith("custom_fields.") and CUSTOM_NAME.match(
                request.field.removeprefix("custom_fields.")
            ):
                column_sql = f"custom_fields ->> '{request.field.removeprefix('custom_fields.')}'"
            else:
                check.require(
                    False,
                    "field",
                    f"a standard field ({', '.join(sorted(SPLIT_COLUMNS))}) or custom_fields.<name>",
                )
        check.check()
        tenant = current_tenant()
        async with self._store.transaction(tenant) as db:
            stored = await self._store.applied_response(db, request.request_id)
            if stored is not None:
                return pb.SplitContactListResponse.FromString(stored)
            source = await self._store.get_list_in(db, list_id)
            parts: list[tuple[str, str, list[Any]]] = []  # (display name, where, args)
            if how == "part_count":
                n = request.part_count
                # Numbered by record order: parts differ in size by at most one record.
                parts = [
                    (
                        f"{source.display_name} part {i + 1} of {n}",
                        f" AND record_id IN (SELECT record_id FROM (SELECT record_id, row_number() OVER (ORDER BY record_id) AS position"
                        f" FROM lists.records WHERE list_id = $1) numbered WHERE (position - 1) % {n} = {i})",
                        [list_id],
                    )
                    for i in range(n)
                ]
            else:
                values = await self._store.distinct_values(
                    db, list_id, column_sql, MAX_SPLIT_PARTS + 1
                )
                if len(values) > MAX_SPLIT_PARTS:
                    raise InvalidArgument(
                        [FieldViolation("field", f"more than {MAX_SPLIT_PARTS} distinct values")]
                    )
                parts = [
                    (
                        f"{source.display_name} {request.field}={value or '(empty)'}",
                        f" AND coalesce({column_sql}, '') = $1",
                        [value],
                    )
                    for value in values
                ]
            created = []
            for display_name, where, args in parts:
                part = await self._store.create_list(
                    tenant,
                    new_id(),
                    display_name,
                    source.description,
                    source.default_region,
                    source.custom_field_names,
                    "",
                    db=db,
                )
                await self._store.copy_records(db, part.list_id, [list_id], where, args)
                created.append(
                    contact_list_message(await self._store.get_list_in(db, part.list_id))
                )
            response = pb.SplitContactListResponse(contact_lists=created)
            await self._store.remember_response(
                db, request.request_id, response.SerializeToString()
            )
        return response


SPLIT_COLUMNS = {"state_province", "time_zone", "country", "postal_code", "company", "status"}
MAX_SPLIT_PARTS = 100
