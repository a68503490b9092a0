"""Suppression entries: what a target is, how it is normalised, when it counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cxmesh.lists.v1 import suppression_service_pb2 as service_pb2
from cxmesh_server.contacts.phones import PhoneError, normalize_phone
from cxmesh_server.contacts.text import CONTROL

KIND_OF_TYPE = {
    service_pb2.SUPPRESSION_TARGET_TYPE_PHONE_NUMBER: "phone",
    service_pb2.SUPPRESSION_TARGET_TYPE_EMAIL: "email",
    service_pb2.SUPPRESSION_TARGET_TYPE_CLIENT_ID: "client",
}
TYPE_OF_KIND = {kind: target_type for target_type, kind in KIND_OF_TYPE.items()}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SuppressionTarget:
    kind: str  # phone | email | client
    value: str


class TargetError(ValueError):
    pass


def normalize_target(kind: str, raw: str, default_region: str) -> SuppressionTarget:
    value = raw.strip()
    if CONTROL.search(value):
        raise TargetError("no control characters")
    if kind == "phone":
        try:
            # Premium-rate numbers may still be suppressed: only validity matters here.
            return SuppressionTarget(kind, normalize_phone(value, default_region).e164)
        except PhoneError as error:
            if error.reason == "PREMIUM_RATE_NUMBER":
                import phonenumbers

                number = phonenumbers.parse(value, default_region)
                return SuppressionTarget(kind, phonenumbers.format_number(number, 0))
            raise TargetError(str(error)) from error
    if kind == "email":
        if not _EMAIL.match(value) or len(value) > 254:
            raise TargetError("not an email address")
        return SuppressionTarget(kind, value.lower())
    if not value or len(value) > 64:
        raise TargetError("a client id is 1-64 characters")
    return SuppressionTarget(kind, value)


def expiry(moment: datetime) -> datetime:
    """An entry's expiry, in UTC when given without an offset. One already passed is kept
    (an entry migrated with its history) and suppresses nothing; one before 1970 is no
    one's (year 1 overflowed the mirror's epoch milliseconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment < _EPOCH:
        raise TargetError("an expiry is after 1970-01-01")
    return moment


def expire_ms(expire_time: datetime | None) -> int | None:
    return int(expire_time.timestamp() * 1000) if expire_time else None
