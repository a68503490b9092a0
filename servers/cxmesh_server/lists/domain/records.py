"""One source row → one record: field mapping, validation, normalisation, dedupe key.

Pure and picklable: import workers run it in other processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cxmesh.types.v1 import device_pb2
from cxmesh_server.contacts.phones import PhoneError, normalize_phone
from cxmesh_server.contacts.timezones import derive_time_zone, valid_zones

MAX_NAME = 64
MAX_SHORT = 16
MAX_CUSTOM_VALUE = 512
MAX_DEVICES = 10
MAX_COLUMNS = 50
MAX_RAW_IN_REPORT = 128

STANDARD_FIELDS = {
    "client_id": MAX_NAME,
    "first_name": MAX_NAME,
    "last_name": MAX_NAME,
    "company": MAX_NAME,
    "postal_code": MAX_SHORT,
    "state_province": MAX_SHORT,
    "country": 2,
    "time_zone": 64,
}
DEVICE_FIELDS = {
    "devices.home_phone": device_pb2.DEVICE_TYPE_HOME_PHONE,
    "devices.work_phone": device_pb2.DEVICE_TYPE_WORK_PHONE,
    "devices.mobile_phone": device_pb2.DEVICE_TYPE_MOBILE_PHONE,
    "devices.other_phone": device_pb2.DEVICE_TYPE_OTHER_PHONE,
    "devices.email": device_pb2.DEVICE_TYPE_EMAIL,
}
# Header names recognised without a specification (lower-cased, spaces and dashes as _).
HEADER_ALIASES = {
    **{name: name for name in STANDARD_FIELDS},
    **{name: name for name in DEVICE_FIELDS},
    "id": "client_id",
    "clientid": "client_id",
    "customer_id": "client_id",
    "first": "first_name",
    "firstname": "first_name",
    "last": "last_name",
    "lastname": "last_name",
    "zip": "postal_code",
    "zip_code": "postal_code",
    "zipcode": "postal_code",
    "postcode": "postal_code",
    "state": "state_province",
    "province": "state_province",
    "timezone": "time_zone",
    "tz": "time_zone",
    "phone": "devices.home_phone",
    "home_phone": "devices.home_phone",
    "work_phone": "devices.work_phone",
    "business_phone": "devices.work_phone",
    "mobile": "devices.mobile_phone",
    "mobile_phone": "devices.mobile_phone",
    "cell": "devices.mobile_phone",
    "cell_phone": "devices.mobile_phone",
    "other_phone": "devices.other_phone",
    "email": "devices.email",
    "email_address": "devices.email",
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CUSTOM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Where source columns go: (column label, record field, index of the value in a row).
    Columns of the file that no entry names are ignored."""

    columns: tuple[tuple[str, str, int], ...]

    @property
    def custom_fields(self) -> list[str]:
        return [
            f.removeprefix("custom_fields.")
            for _, f, _ in self.columns
            if f.startswith("custom_fields.")
        ]


@dataclass(frozen=True, slots=True)
class RowSettings:
    default_region: str
    default_time_zone: str


class RowError(NamedTuple):
    line: int
    column: str
    raw_value: str
    reason: str
    message: str


class Record(NamedTuple):
    """A validated record, in the column order of lists.records (from dedupe_key to
    custom_fields) plus its line. Devices are parallel lists (type, address, raw). Workers
    send records back as plain tuples: they pickle several times faster."""

    dedupe_key: str
    client_id: str
    first_name: str
    last_name: str
    company: str
    device_types: list[int]
    device_addresses: list[str]
    device_raw: list[str]
    postal_code: str
    state_province: str
    country: str
    time_zone: str
    time_zone_source: int
    candidate_time_zones: list[str]
    custom_fields: str  # JSON object
    line: int


def normalize_header(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def plan_from_header(header: Sequence[str]) -> tuple[ColumnPlan, list[str]]:
    """Maps a header row by names; unknown names become custom fields. Returns the plan and
    the problems that make the header unusable."""
    problems: list[str] = []
    columns: list[tuple[str, str, int]] = []
    for index, name in enumerate(header):
        key = normalize_header(name)
        if not key:
            problems.append("a header cell is empty")
            continue
        target = HEADER_ALIASES.get(key)
        if target is None:
            if not _CUSTOM_NAME.match(key):
                problems.append(f"column {name!r} is not a field name")
                continue
            target = f"custom_fields.{key}"
        columns.append((name, target, index))
    plan = ColumnPlan(tuple(columns))
    problems += check_plan(plan)
    return plan, problems


def check_plan(plan: ColumnPlan) -> list[str]:
    problems = []
    if len(plan.columns) > MAX_COLUMNS:
        problems.append(f"{len(plan.columns)} columns; at most {MAX_COLUMNS}")
    fields = [f for _, f, _ in plan.columns]
    unknown = sorted(
        f
        for f in fields
        if f not in STANDARD_FIELDS and f not in DEVICE_FIELDS and not _is_custom(f)
    )
    if unknown:
        problems.append(f"unknown fields: {', '.join(unknown)}")
    if not any(f in DEVICE_FIELDS for f in fields):
        problems.append(
            "no phone or email column (recognised names: phone, mobile, email, devices.*)"
        )
    targets = [f for f in fields if f not in DEVICE_FIELDS]
    duplicated = sorted({f for f in targets if targets.count(f) > 1})
    if duplicated:
        problems.append(f"several columns map to {', '.join(duplicated)}")
    if sum(1 for f in fields if f in DEVICE_FIELDS) > MAX_DEVICES:
        problems.append(f"more than {MAX_DEVICES} device columns")
    return problems


def _is_custom(field: str) -> bool:
    return field.startswith("custom_fields.") and bool(
        _CUSTOM_NAME.match(field.removeprefix("custom_fields."))
    )


def _clip(value: str) -> str:
    return value if len(value) <= MAX_RAW_IN_REPORT else value[:MAX_RAW_IN_REPORT] + "…"


def _mask(value: str) -> str:
    """Error reports keep six characters of a phone number: enough to recognise it."""
    return value[:6] + "*" * max(0, len(value) - 6)


def build_record(
    line: int, values: Sequence[str], plan: ColumnPlan, settings: RowSettings
) -> tuple[Record | None, list[RowError]]:
    """A record and the problems of the row; no record when the row is refused."""
    errors: list[RowError] = []
    refused = False
    standard: dict[str, str] = {}
    custom: dict[str, str] = {}
    devices: list[tuple[int, str, str]] = []
    for column, target, index in plan.columns:
        raw = values[index].strip() if index < len(values) else ""
        if not raw:
            continue
        if target in DEVICE_FIELDS:
            devices.append((DEVICE_FIELDS[target], raw, column))
        elif target.startswith("custom_fields."):
            if len(raw) > MAX_CUSTOM_VALUE:
                errors.append(
                    RowError(
                        line,
                        column,
                        _clip(raw),
                        "VALUE_TOO_LONG",
                        f"at most {MAX_CUSTOM_VALUE} characters",
                    )
                )
                refused = True
            custom[target.removeprefix("custom_fields.")] = raw
        else:
            limit = STANDARD_FIELDS[target]
            if len(raw) > limit:
                errors.append(
                    RowError(
                        line, column, _clip(raw), "VALUE_TOO_LONG", f"at most {limit} characters"
                    )
                )
                refused = True
            standard[target] = raw
    zone = standard.get("time_zone", "")
    if zone and zone not in valid_zones():
        errors.append(
            RowError(
                line,
                _column_of(plan, "time_zone"),
                _clip(zone),
                "INVALID_TIME_ZONE",
                "not an IANA time zone",
            )
        )
        refused = True
    country = standard.get("country", "").upper()
    region = country or settings.default_region
    types: list[int] = []
    addresses: list[str] = []
    raws: list[str] = []
    phone_zones: tuple[str, ...] | None = None
    for device_type, raw, column in devices:
        if device_type == device_pb2.DEVICE_TYPE_EMAIL:
            address = raw.lower()
            if not _EMAIL.match(address) or len(address) > 254:
                errors.append(
                    RowError(line, column, _clip(raw), "INVALID_EMAIL", "not an email address")
                )
                continue
        else:
            try:
                phone = normalize_phone(raw, region)
            except PhoneError as error:
                errors.append(RowError(line, column, _mask(_clip(raw)), error.reason, str(error)))
                continue
            address = phone.e164
            if phone_zones is None:
                phone_zones = phone.time_zones
        if address in addresses:
            continue  # the same device twice in a row counts once
        types.append(device_type)
        addresses.append(address)
        raws.append(raw[:64])
    if not addresses:
        if not devices:  # invalid devices already have their own errors
            errors.append(
                RowError(
                    line, "", "", "NO_VALID_DEVICE", "the row has no valid phone number or email"
                )
            )
        refused = True
    if refused:
        return None, errors
    decision = derive_time_zone(
        explicit=zone,
        postal_code=standard.get("postal_code", ""),
        country=country,
        phone_zones=phone_zones,
        default_zone=settings.default_time_zone,
    )
    client_id = standard.get("client_id", "")
    record = Record(
        dedupe_key=f"c:{client_id}" if client_id else f"d:{addresses[0]}",
        client_id=client_id,
        first_name=standard.get("first_name", ""),
        last_name=standard.get("last_name", ""),
        company=standard.get("company", ""),
        device_types=types,
        device_addresses=addresses,
        device_raw=raws,
        postal_code=standard.get("postal_code", ""),
        state_province=standard.get("state_province", "").upper(),
        country=country,
        time_zone=decision.time_zone if decision else "",
        time_zone_source=decision.source if decision else 0,
        candidate_time_zones=list(decision.candidates) if decision else [],
        custom_fields=json.dumps(custom, separators=(",", ":")),
        line=line,
    )
    return record, errors


def _column_of(plan: ColumnPlan, target: str) -> str:
    return next((c for c, f, _ in plan.columns if f == target), target)


RecordTuple = tuple[Any, ...]
ErrorTuple = tuple[Any, ...]


def build_records(
    rows: Sequence[tuple[int, Sequence[str]]], plan: ColumnPlan, settings: RowSettings
) -> tuple[list[RecordTuple], list[ErrorTuple]]:
    """A chunk of rows at once: the unit of work sent to import workers."""
    records: list[RecordTuple] = []
    errors: list[ErrorTuple] = []
    for line, values in rows:
        record, row_errors = build_record(line, values, plan, settings)
        if record is not None:
            records.append(tuple(record))
        errors.extend(tuple(e) for e in row_errors)
    return records, errors


def plan_from_mappings(
    mappings: Sequence[tuple[str, str]], header: Sequence[str] | None
) -> tuple[ColumnPlan, list[str]]:
    """A plan from (column, field) pairs. A column is a header name when the file has a
    header, else a 1-based position (fixed-width columns are numbered in mapping order)."""
    problems: list[str] = []
    columns: list[tuple[str, str, int]] = []
    names = {normalize_header(h): i for i, h in enumerate(header)} if header is not None else {}
    for column, target in mappings:
        if column.isdigit():
            index = int(column) - 1
        elif header is not None and normalize_header(column) in names:
            index = names[normalize_header(column)]
        else:
            problems.append(f"column {column!r} is not in the file")
            continue
        columns.append((column, target, index))
    plan = ColumnPlan(tuple(columns))
    return plan, problems + check_plan(plan)


def warm_up_worker() -> None:
    """Loads the data every row needs (ZIP zones, phone metadata) when a worker starts,
    rather than during the first import."""
    from cxmesh_server.contacts.phones import normalize_phone
    from cxmesh_server.contacts.places import zone_for_postal_code

    zone_for_postal_code("10001", "US")
    normalize_phone("+14155550101", "US")
