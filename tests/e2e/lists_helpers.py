"""A small client for the lists tests: one fresh tenant, stubs through the edge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from cxmesh.lists.v1 import (
    contact_list_pb2,
    contact_list_service_pb2,
    contact_list_service_pb2_grpc,
    import_pb2,
    import_service_pb2,
    import_service_pb2_grpc,
    suppression_pb2,
    suppression_service_pb2,
    suppression_service_pb2_grpc,
)

FINAL = {
    import_pb2.IMPORT_STATE_SUCCEEDED,
    import_pb2.IMPORT_STATE_FAILED,
    import_pb2.IMPORT_STATE_CANCELLED,
}


@dataclass
class Lists:
    channel: grpc.Channel
    token: str
    tenant: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def contact_lists(self) -> contact_list_service_pb2_grpc.ContactListServiceStub:
        return contact_list_service_pb2_grpc.ContactListServiceStub(self.channel)

    @property
    def imports(self) -> import_service_pb2_grpc.ImportServiceStub:
        return import_service_pb2_grpc.ImportServiceStub(self.channel)

    @property
    def suppression(self) -> suppression_service_pb2_grpc.SuppressionServiceStub:
        return suppression_service_pb2_grpc.SuppressionServiceStub(self.channel)

    def new_list(self, name: str, **fields: object) -> contact_list_pb2.ContactList:
        return self.contact_lists.CreateContactList(
            contact_list_service_pb2.CreateContactListRequest(
                contact_list=contact_list_pb2.ContactList(display_name=name, **fields)  # type: ignore[arg-type]
            ),
            metadata=self.md,
            timeout=10,
        ).contact_list

    def upload(
        self,
        list_name: str,
        data: bytes,
        mode: int = import_pb2.IMPORT_MODE_APPEND,
        file_format: import_pb2.FileFormat | None = None,
        specification: str = "",
        request_id: str = "",
        chunk: int = 4096,
    ) -> import_pb2.Import:
        job = import_pb2.Import(mode=mode, file_name="test.csv", request_id=request_id)  # type: ignore[arg-type]
        if file_format is not None:
            job.inline_format.CopyFrom(file_format)
        if specification:
            job.specification = specification

        def messages() -> Iterator[import_service_pb2.UploadImportRequest]:
            yield import_service_pb2.UploadImportRequest(
                start=import_service_pb2.UploadImportStart(parent=list_name, import_job=job)
            )
            for start in range(0, len(data), chunk):
                yield import_service_pb2.UploadImportRequest(chunk=data[start : start + chunk])

        return self.imports.UploadImport(messages(), metadata=self.md, timeout=30).import_job

    def wait(self, name: str, timeout: float = 60) -> import_pb2.Import:
        deadline = time.monotonic() + timeout
        while True:
            current = self.imports.GetImport(
                import_service_pb2.GetImportRequest(name=name), metadata=self.md, timeout=10
            ).import_job
            if current.state in FINAL or time.monotonic() > deadline:
                return current
            time.sleep(0.1)

    def import_file(self, list_name: str, data: bytes, **options: object) -> import_pb2.Import:
        return self.wait(self.upload(list_name, data, **options).name)  # type: ignore[arg-type]

    def records(self, list_name: str, **filter_fields: object) -> list:  # type: ignore[type-arg]
        found, token = [], ""
        while True:
            page = self.contact_lists.ListRecords(
                contact_list_service_pb2.ListRecordsRequest(
                    parent=list_name,
                    filter=contact_list_service_pb2.RecordFilter(**filter_fields),  # type: ignore[arg-type]
                    page_size=500,
                    page_token=token,
                ),
                metadata=self.md,
                timeout=10,
            )
            found += list(page.records)
            token = page.next_page_token
            if not token:
                return found

    def errors(self, import_name: str) -> list:  # type: ignore[type-arg]
        return list(
            self.imports.ListImportErrors(
                import_service_pb2.ListImportErrorsRequest(name=import_name, page_size=1000),
                metadata=self.md,
                timeout=10,
            ).import_errors
        )

    def records_lists(self) -> list[contact_list_pb2.ContactList]:
        return list(
            self.contact_lists.ListContactLists(
                contact_list_service_pb2.ListContactListsRequest(page_size=1000),
                metadata=self.md,
                timeout=10,
            ).contact_lists
        )

    def new_suppression_list(
        self, name: str, campaigns: list[str] | None = None
    ) -> suppression_pb2.SuppressionList:
        return self.suppression.CreateSuppressionList(
            suppression_service_pb2.CreateSuppressionListRequest(
                suppression_list=suppression_pb2.SuppressionList(
                    display_name=name, campaigns=campaigns or []
                )
            ),
            metadata=self.md,
            timeout=10,
        ).suppression_list
