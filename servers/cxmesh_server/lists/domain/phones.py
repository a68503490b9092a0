"""Phone numbers to E.164, with phonenumbers: possible, valid, not premium-rate."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

# Types that are never dialled: premium rate by policy; unknown means "not valid".
REFUSED_TYPES = {PhoneNumberType.PREMIUM_RATE: "PREMIUM_RATE_NUMBER"}
NON_GEOGRAPHIC_TYPES = {
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
    PhoneNumberType.PAGER,
}
_UNKNOWN_ZONE = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    region: str | None
    # Candidate IANA zones from the number's prefix; empty for non-geographic numbers.
    time_zones: tuple[str, ...]


class PhoneError(ValueError):
    """Why a value is not a dialable phone number; `reason` is UPPER_SNAKE_CASE."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalize_phone(raw: str, default_region: str) -> Phone:
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError("INVALID_PHONE_NUMBER", f"not a phone number: {exc}") from exc
    number_type = phonenumbers.number_type(number)
    if number_type == PhoneNumberType.UNKNOWN:
        raise PhoneError("INVALID_PHONE_NUMBER", "not a valid number in any numbering plan")
    if number_type in REFUSED_TYPES:
        raise PhoneError(REFUSED_TYPES[number_type], "premium-rate numbers are not dialled")
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    zones: tuple[str, ...] = ()
    if number_type not in NON_GEOGRAPHIC_TYPES:
        zones = zones_for_e164(e164)
    return Phone(e164=e164, region=phonenumbers.region_code_for_number(number), time_zones=zones)


def zones_for_e164(e164: str) -> tuple[str, ...]:
    """The zones phonenumbers maps the number's longest known prefix to (its own lookup in
    timezone.time_zones_for_geographical_number, without parsing the number again)."""
    for length in range(TIMEZONE_LONGEST_PREFIX, 0, -1):
        zones = TIMEZONE_DATA.get(e164[1 : 1 + length])
        if zones is not None:
            return tuple(z for z in zones if z != _UNKNOWN_ZONE)
    return ()
