"""gRPC handlers of ImportService: uploads, progress, cancel, error reports, specifications."""

from __future__ import annotations

import asyncio
import csv
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from google.api import httpbody_pb2

from cxmesh.lists.v1 import import_pb2, import_service_pb2_grpc
from cxmesh.lists.v1 import import_service_pb2 as pb
from cxmesh_server.lists.domain import formats
from cxmesh_server.lists.domain.records import ColumnPlan, RowSettings
from cxmesh_server.lists.importer import Importer, ImportJob, plan_for_file
from cxmesh_server.lists.imports_store import FINAL_STATES, ImportsStore, import_message
from cxmesh_server.lists.store import ListsStore, new_id
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.convert import resource_id
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument, Validator

MAX_FILE_BYTES = 2 * 1024**3
SNIFF_BYTES = 64 * 1024
WATCH_SECONDS = 0.25
DEFAULT_FORMAT = import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_CSV, has_header=True)


def import_ids(name: str, field: str = "name") -> tuple[str, str]:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "contactLists"
        or parts[2] != "imports"
        or not parts[1]
        or not parts[3]
    ):
        raise InvalidArgument([FieldViolation(field, "must be contactLists/{id}/imports/{id}")])
    return parts[1], parts[3]


class Spool:
    """An uploaded file on local disk while it is imported."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", delete=False)  # noqa: SIM115
        self.path = Path(handle.name)
        self._handle = handle
        self.size = 0

    @classmethod
    def of_file(cls, folder: Path, source: Path) -> Spool:
        """A copy of a file already on disk (drop folder): the import owns its spool."""
        spool = cls(folder)
        with source.open("rb") as handle:
            while data := handle.read(1 << 20):
                spool.write(data)
        spool.close()
        return spool

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_FILE_BYTES:
            self.discard()
            raise InvalidArgument(
                [FieldViolation("file", "larger than 2 GiB; split it")], reason="FILE_TOO_LARGE"
            )
        self._handle.write(data)

    def close(self) -> None:
        self._handle.close()

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


class ImportHandlers(import_service_pb2_grpc.ImportServiceServicer):
    def __init__(
        self, lists: ListsStore, imports: ImportsStore, importer: Importer, spool_dir: Path
    ) -> None:
        self._lists = lists
        self._imports = imports
        self._importer = importer
        self._spool_dir = spool_dir

    async def UploadImport(
        self, request_iterator: AsyncIterator[pb.UploadImportRequest], context: GrpcContext
    ) -> pb.UploadImportResponse:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("part") != "start":
            raise InvalidArgument(
                [FieldViolation("start", "the first message must carry the import")]
            )
        spool = Spool(self._spool_dir)
        try:
            async for message in request_iterator:
                spool.write(message.chunk)
        finally:
            spool.close()
        row = await self._begin(
            first.start.parent, first.start.import_job, spool, import_pb2.IMPORT_SOURCE_GRPC_UPLOAD
        )
        return pb.UploadImportResponse(import_job=row)

    async def CreateImport(
        self, request: pb.CreateImportRequest, context: GrpcContext
    ) -> pb.CreateImportResponse:
        spool = Spool(self._spool_dir)
        try:
            spool.write(request.file.data)
        finally:
            spool.close()
        requested = import_pb2.Import(
            mode=request.mode, file_name=request.file_name, request_id=request.request_id
        )
        if request.specification:
            requested.specification = request.specification
        row = await self._begin(
            request.parent, requested, spool, import_pb2.IMPORT_SOURCE_REST_UPLOAD
        )
        return pb.CreateImportResponse(import_job=row)

    async def _begin(
        self, parent: str, requested: import_pb2.Import, spool: Spool, source: int
    ) -> import_pb2.Import:
        return await self.begin(current_tenant(), parent, requested, spool, source)

    async def begin(
        self, tenant: str, parent: str, requested: import_pb2.Import, spool: Spool, source: int
    ) -> import_pb2.Import:
        """Validates, records the import, starts it; returns it PENDING or RUNNING.
        Problems visible before the first row (format, charset, header) fail the call."""
        try:
            list_id = resource_id(parent, "contactLists", "parent")
            existing = await self._imports.find_by_request(tenant, list_id, requested.request_id)
            if existing is not None:
                spool.discard()
                return import_message(existing)
            check = Validator()
            check.require(
                requested.mode != import_pb2.IMPORT_MODE_UNSPECIFIED,
                "import.mode",
                "CREATE, APPEND or REPLACE",
            )
            check.require(
                len(requested.file_name) <= 255, "import.file_name", "at most 255 characters"
            )
            check.require(spool.size > 0, "file", "the file is empty")
            check.check()
            contact_list = await self._lists.get_list(tenant, list_id)
            file_format, specification = await self._format(tenant, requested)
            plan, has_header = await asyncio.to_thread(self._inspect, spool, file_format)
            import_id = new_id()
            row = await self._imports.create(
                tenant,
                list_id,
                import_id,
                requested.mode,
                None if specification else file_format,
                specification,
                requested.file_name,
                source,
                requested.request_id,
            )
            if row["import_id"] != import_id:  # a concurrent retry created it first
                spool.discard()
                return import_message(row)
            region = file_format.default_region or contact_list.default_region
            self._importer.start(
                ImportJob(
                    tenant=tenant,
                    list_id=list_id,
                    import_id=import_id,
                    mode=requested.mode,
                    path=spool.path,
                    file_format=file_format,
                    plan=plan,
                    skip_first_row=has_header,
                    settings=RowSettings(default_region=region, default_time_zone=""),
                )
            )
            return import_message(row)
        except BaseException:
            spool.discard()
            raise

    async def _format(
        self, tenant: str, requested: import_pb2.Import
    ) -> tuple[import_pb2.FileFormat, str]:
        which = requested.WhichOneof("file_format")
        if which == "specification":
            specification_id = resource_id(
                requested.specification, "specifications", "import.specification"
            )
            row = await self._imports.get_specification(tenant, specification_id)
            file_format = import_pb2.FileFormat.FromString(row["file_format"])
            return file_format, requested.specification
        file_format = requested.inline_format if which == "inline_format" else DEFAULT_FORMAT
        problems = formats.check_format(file_format)
        if problems:
            raise InvalidArgument(
                [FieldViolation(f"import.inline_format.{f}", d) for f, d in problems]
            )
        return file_format, ""

    @staticmethod
    def _inspect(spool: Spool, file_format: import_pb2.FileFormat) -> tuple[ColumnPlan, bool]:
        try:
            if file_format.file_type != import_pb2.FILE_TYPE_XLSX:
                with spool.path.open("rb") as handle:
                    formats.sniff_text(handle.read(SNIFF_BYTES), file_format.charset)
            return plan_for_file(spool.path, file_format)
        except formats.FormatError as error:
            raise InvalidArgument(
                [FieldViolation(error.field, str(error))], reason="UNREADABLE_FILE"
            ) from error
        except UnicodeDecodeError as error:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "charset",
                        f"the file is not {file_format.charset or 'UTF-8'}; set the charset",
                    )
                ],
                reason="WRONG_CHARSET",
            ) from error

    async def GetImport(
        self, request: pb.GetImportRequest, context: GrpcContext
    ) -> pb.GetImportResponse:
        list_id, import_id = import_ids(request.name)
        return pb.GetImportResponse(
            import_job=import_message(await self._imports.get(current_tenant(), list_id, import_id))
        )

    async def ListImports(
        self, request: pb.ListImportsRequest, context: GrpcContext
    ) -> pb.ListImportsResponse:
        list_id = resource_id(request.parent, "contactLists", "parent")
        await self._lists.get_list(current_tenant(), list_id)
        page = paging.offset_page(request.page_size, request.page_token)
        rows = await self._imports.list_imports(current_tenant(), list_id, page.offset, page.limit)
        token = page.next_token(len(rows))
        return pb.ListImportsResponse(
            imports=[import_message(r) for r in rows[: page.size]], next_page_token=token
        )

    async def WatchImport(
        self, request: pb.WatchImportRequest, context: GrpcContext
    ) -> AsyncIterator[pb.WatchImportResponse]:
        list_id, import_id = import_ids(request.name)
        last = None
        while True:
            message = import_message(await self._imports.get(current_tenant(), list_id, import_id))
            if message != last:
                yield pb.WatchImportResponse(import_job=message)
                last = message
            if message.state in FINAL_STATES:
                return
            await asyncio.sleep(WATCH_SECONDS)

    async def CancelImport(
        self, request: pb.CancelImportRequest, context: GrpcContext
    ) -> pb.CancelImportResponse:
        list_id, import_id = import_ids(request.name)
        tenant = current_tenant()
        await self._imports.request_cancel(tenant, list_id, import_id)
        # The worker sees the request within a progress interval and rolls back.
        for _ in range(200):
            row = await self._imports.get(tenant, list_id, import_id)
            if row["state"] in FINAL_STATES:
                break
            await asyncio.sleep(0.05)
        return pb.CancelImportResponse(import_job=import_message(row))

    async def ListImportErrors(
        self, request: pb.ListImportErrorsRequest, context: GrpcContext
    ) -> pb.ListImportErrorsResponse:
        list_id, import_id = import_ids(request.name)
        page = paging.offset_page(request.page_size, request.page_token, default=100)
        rows = await self._imports.errors(
            current_tenant(), list_id, import_id, page.offset, page.limit
        )
        token = page.next_token(len(rows))
        return pb.ListImportErrorsResponse(
            import_errors=[
                import_pb2.ImportError(
                    line_number=r["line_number"],
                    column=r["column_name"],
                    raw_value=r["raw_value"],
                    reason=r["reason"],
                    message=r["message"],
                )
                for r in rows[: page.size]
            ],
            next_page_token=token,
        )

    async def DownloadImportErrors(
        self, request: pb.DownloadImportErrorsRequest, context: GrpcContext
    ) -> httpbody_pb2.HttpBody:
        list_id, import_id = import_ids(request.name)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["line", "column", "raw_value", "reason", "message"])
        async for r in self._imports.stream_errors(current_tenant(), list_id, import_id):
            writer.writerow(
                [r["line_number"], r["column_name"], r["raw_value"], r["reason"], r["message"]]
            )
        return httpbody_pb2.HttpBody(
            content_type="text/csv; charset=utf-8", data=buffer.getvalue().encode()
        )

    async def CreateSpecification(
        self, request: pb.CreateSpecificationRequest, context: GrpcContext
    ) -> pb.CreateSpecificationResponse:
        specification = request.specification
        check = Validator()
        check.require(
            0 < len(specification.display_name) <= 128,
            "specification.display_name",
            "must be 1-128 characters",
        )
        for field, description in formats.check_format(specification.format):
            check.require(False, f"specification.format.{field}", description)
        check.check()
        row = await self._imports.create_specification(
            current_tenant(),
            new_id(),
            specification.display_name,
            specification.format,
            request.request_id,
        )
        return pb.CreateSpecificationResponse(specification=_specification(row))

    async def GetSpecification(
        self, request: pb.GetSpecificationRequest, context: GrpcContext
    ) -> pb.GetSpecificationResponse:
        row = await self._imports.get_specification(
            current_tenant(), resource_id(request.name, "specifications", "name")
        )
        return pb.GetSpecificationResponse(specification=_specification(row))

    async def ListSpecifications(
        self, request: pb.ListSpecificationsRequest, context: GrpcContext
    ) -> pb.ListSpecificationsResponse:
        page = paging.offset_page(request.page_size, request.page_token)
        rows = await self._imports.list_specifications(current_tenant(), page.offset, page.limit)
        token = page.next_token(len(rows))
        return pb.ListSpecificationsResponse(
            specifications=[_specification(r) for r in rows[: page.size]], next_page_token=token
        )

    async def DeleteSpecification(
        self, request: pb.DeleteSpecificationRequest, context: GrpcContext
    ) -> pb.DeleteSpecificationResponse:
        await self._imports.delete_specification(
            current_tenant(), resource_id(request.name, "specifications", "name")
        )
        return pb.DeleteSpecificationResponse()


def _specification(row: object) -> import_pb2.Specification:
    from cxmesh_server.runtime.convert import timestamp

    return import_pb2.Specification(
        name=f"specifications/{row['specification_id']}",  # type: ignore[index]
        display_name=row["display_name"],  # type: ignore[index]
        format=import_pb2.FileFormat.FromString(row["file_format"]),  # type: ignore[index]
        create_time=timestamp(row["create_time"]),  # type: ignore[index]
    )
