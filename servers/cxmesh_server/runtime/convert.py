"""Conversions between proto well-known types and Python values."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    result = Timestamp()
    result.FromDatetime(value)
    return result


def resource_id(name: str, collection: str, field: str) -> str:
    """The id in `<collection>/<id>`; anything else is an invalid argument."""
    from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument

    prefix = collection + "/"
    if not name.startswith(prefix) or "/" in name[len(prefix) :] or len(name) == len(prefix):
        raise InvalidArgument([FieldViolation(field, f"must be {collection}/{{id}}")])
    return name[len(prefix) :]


def defined_values(enum: EnumDescriptor, *, unspecified: bool) -> frozenset[int]:
    """The values `enum` defines, its UNSPECIFIED zero only with `unspecified`. Protobuf
    enums are open: a value nobody defined arrives intact, matches no rule, and a rule or
    record carrying one would silently restrict nothing."""
    values = frozenset(enum.values_by_number)
    return values if unspecified else values - {0}
