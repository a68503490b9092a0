"""Suppression entries: what a target is, how it is normalised, when it counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cxmesh.lists.v1 import suppression_service_pb2 as service_pb2
from cxmesh_server.contacts.phones import PhoneError, normalize_phone

KIND_OF_TYPE = {
    service_pb2.SUPPRESSION_TARGET_TYPE_PHONE_NUMBER: "phone",
    service_pb2.SUPPRESSION_TARGET_TYPE_EMAIL: "email",
    service_pb2.SUPPRESSION_TARGET_TYPE_CLIENT_ID: "client",
}
TYPE_OF_KIND = {kind: target_type for target_type, kind in KIND_OF_TYPE.items()}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class SuppressionTarget:
    kind: str  # phone | email | client
    value: str


class TargetError(ValueError):
    pass


def normalize_target(kind: str, raw: str, default_region: str) -> SuppressionTarget:
    value = raw.strip()
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


def expire_ms(expire_time: datetime | None) -> int | None:
    return int(expire_time.timestamp() * 1000) if expire_time else None
