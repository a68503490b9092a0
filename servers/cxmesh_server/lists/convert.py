"""Proto ↔ storage conversions and filters of the lists service."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from cxmesh.lists.v1 import contact_list_pb2, contact_list_service_pb2, record_pb2, suppression_pb2
from cxmesh.types.v1 import device_pb2
from cxmesh_server.lists.store import ContactListRow
from cxmesh_server.lists.suppression_store import EntryRow, SuppressionListRow
from cxmesh_server.runtime.convert import timestamp
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument

STANDARD_COLUMNS = (
    "client_id",
    "first_name",
    "last_name",
    "company",
    "postal_code",
    "state_province",
    "country",
    "time_zone",
)
DEVICE_TYPE_NAMES = {
    value: name.removeprefix("DEVICE_TYPE_").lower()
    for name, value in device_pb2.DeviceType.items()
    if value
}


def contact_list_message(row: ContactListRow) -> contact_list_pb2.ContactList:
    return contact_list_pb2.ContactList(
        name=f"contactLists/{row.list_id}",
        display_name=row.display_name,
        description=row.description,
        default_region=row.default_region,
        custom_field_names=row.custom_field_names,
        record_count=row.record_count,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        etag=row.etag,
    )


def record_message(row: asyncpg.Record) -> record_pb2.Record:
    return record_pb2.Record(
        name=f"contactLists/{row['list_id']}/records/{row['record_id']}",
        client_id=row["client_id"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        company=row["company"],
        devices=[
            device_pb2.Device(type=t, address=a, raw_address=r)
            for t, a, r in zip(
                row["device_types"], row["device_addresses"], row["device_raw"], strict=True
            )
        ],
        postal_code=row["postal_code"],
        state_province=row["state_province"],
        country=row["country"],
        time_zone=row["time_zone"],
        time_zone_source=row["time_zone_source"],
        candidate_time_zones=row["candidate_time_zones"],
        custom_fields=json.loads(row["custom_fields"]),
        status=row["status"],
        suppression_lists=[f"suppressionLists/{s}" for s in row["suppression_lists"]],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )


def suppression_list_message(row: SuppressionListRow) -> suppression_pb2.SuppressionList:
    return suppression_pb2.SuppressionList(
        name=f"suppressionLists/{row.list_id}",
        display_name=row.display_name,
        campaigns=row.campaigns,
        source=row.source,  # type: ignore[arg-type]
        entry_count=row.entry_count,
        create_time=timestamp(row.create_time),
    )


def entry_message(list_id: str, entry: EntryRow) -> suppression_pb2.SuppressionEntry:
    message = suppression_pb2.SuppressionEntry(
        name=f"suppressionLists/{list_id}/entries/{entry.kind}:{entry.target}",
        channels=entry.channels,  # type: ignore[arg-type]
        expire_time=timestamp(entry.expire_time),
        emergency=entry.emergency,
        reason=entry.reason,
        create_time=timestamp(entry.create_time),
    )
    if entry.kind == "phone":
        message.phone_number = entry.target
    elif entry.kind == "email":
        message.email = entry.target
    else:
        message.client_id = entry.target
    return message


def filter_sql(
    record_filter: contact_list_service_pb2.RecordFilter, first_arg: int = 1
) -> tuple[str, list[Any]]:
    """A record filter as `AND …` SQL with its arguments, numbered from `first_arg`."""
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${first_arg + len(args) - 1}"

    if record_filter.state_provinces:
        clauses.append(
            f"state_province = ANY({arg([s.upper() for s in record_filter.state_provinces])}::text[])"
        )
    if record_filter.time_zones:
        clauses.append(f"time_zone = ANY({arg(list(record_filter.time_zones))}::text[])")
    if record_filter.statuses:
        clauses.append(f"status = ANY({arg(list(record_filter.statuses))}::smallint[])")
    for n, condition in enumerate(record_filter.custom_fields):
        if not condition.field or not condition.values:
            raise InvalidArgument(
                [
                    FieldViolation(
                        f"filter.custom_fields[{n}]", "needs a field and at least one value"
                    )
                ]
            )
        clauses.append(
            f"custom_fields ->> {arg(condition.field)} = ANY({arg(list(condition.values))}::text[])"
        )
    if record_filter.HasField("suppressed"):
        clauses.append(
            "cardinality(suppression_lists) > 0"
            if record_filter.suppressed
            else "cardinality(suppression_lists) = 0"
        )
    return "".join(f" AND {c}" for c in clauses), args


class CsvWriter:
    """Records as CSV rows: standard fields, one column per device type, custom fields,
    status and suppression."""

    def __init__(self, custom_field_names: Sequence[str]) -> None:
        self.custom = list(custom_field_names)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")
        self.writer.writerow(
            [
                *STANDARD_COLUMNS,
                *(f"devices.{n}" for n in DEVICE_TYPE_NAMES.values()),
                *self.custom,
                "status",
                "suppression_lists",
                "record",
            ]
        )

    def add(self, row: asyncpg.Record) -> None:
        devices: dict[str, list[str]] = {}
        for device_type, address in zip(row["device_types"], row["device_addresses"], strict=True):
            devices.setdefault(DEVICE_TYPE_NAMES[device_type], []).append(address)
        custom = json.loads(row["custom_fields"])
        self.writer.writerow(
            [
                *(row[c] for c in STANDARD_COLUMNS),
                *(" ".join(devices.get(n, [])) for n in DEVICE_TYPE_NAMES.values()),
                *(custom.get(c, "") for c in self.custom),
                record_pb2.RecordStatus.Name(row["status"]).removeprefix("RECORD_STATUS_"),
                " ".join(row["suppression_lists"]),
                f"contactLists/{row['list_id']}/records/{row['record_id']}",
            ]
        )

    def take(self) -> bytes:
        data = self.buffer.getvalue().encode()
        self.buffer.seek(0)
        self.buffer.truncate()
        return data
