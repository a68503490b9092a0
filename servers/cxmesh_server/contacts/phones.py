"""Phone numbers to E.164, with phonenumbers: possible, valid, not premium-rate."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.tzdata import TIMEZONE_DATA

from cxmesh_server.contacts.number_types import national_number_type
from cxmesh_server.contacts.number_types import number_type as typed

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
    # Candidate IANA zones from the number's prefix; empty for non-geographic numbers.
    time_zones: tuple[str, ...]


class PhoneError(ValueError):
    """Why a value is not a dialable phone number; `reason` is UPPER_SNAKE_CASE."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The usual ways of writing a North American number: [+1] (NPA) NXX-XXXX with spaces, dots
# or dashes. phonenumbers.parse reads these as country code 1 and the ten digits; taking
# the digits directly skips most of parse's work (its most expensive step on imports) and
# building its PhoneNumber (~0.6 µs; normalising such a number now takes ~2 in all).
# ASCII digits only: others (Arabic-Indic, full-width) are phonenumbers.parse's to convert.
_NANP = re.compile(
    r"^\s*(\+1|1)?[\s.-]?\(?([2-9]\d{2})\)?[\s.-]?(\d{3})[\s.-]?(\d{4})\s*$", re.ASCII
)


def _north_american(raw: str, default_region: str) -> str | None:
    """The national number of a North American number in one of the usual ways, or None
    (phonenumbers.parse reads it)."""
    # E.164 already, as lists store numbers and dialers send them: no expression needed.
    if len(raw) == 12 and raw.startswith("+1") and raw.isascii() and raw[2:].isdigit():
        return raw[2:] if raw[2] not in "01" else None
    match = _NANP.match(raw)
    if match and (match.group(1) == "+1" or _country_code(default_region) == 1):
        return match.group(2) + match.group(3) + match.group(4)
    return None


@functools.cache
def _country_code(region: str) -> int:
    return int(phonenumbers.country_code_for_region(region))


def normalize_phone(raw: str, default_region: str) -> Phone:
    """`default_region` "" reads international numbers only: a national one is a
    NO_REGION error (its caller does not know the region yet, and must not guess)."""
    if not default_region and not raw.lstrip().startswith("+"):
        raise PhoneError("NO_REGION", "a national number, and no region to read it in")
    national = _north_american(raw, default_region)
    if national is not None:
        # What format_number gives in E.164: "+", the country code, the national number.
        e164 = "+1" + national
        number_type = national_number_type(1, national)
    else:
        try:
            number = phonenumbers.parse(raw, default_region)
        except phonenumbers.NumberParseException as exc:
            raise PhoneError("INVALID_PHONE_NUMBER", f"not a phone number: {exc}") from exc
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        number_type = typed(number)
    if number_type == PhoneNumberType.UNKNOWN:
        raise PhoneError("INVALID_PHONE_NUMBER", "not a valid number in any numbering plan")
    if number_type in REFUSED_TYPES:
        raise PhoneError(REFUSED_TYPES[number_type], "premium-rate numbers are not dialled")
    zones: tuple[str, ...] = ()
    if number_type not in NON_GEOGRAPHIC_TYPES:
        zones = zones_for_e164(e164)
    return Phone(e164=e164, time_zones=zones)


def zones_for_e164(e164: str) -> tuple[str, ...]:
    """The zones phonenumbers maps the number's longest known prefix to (its own lookup in
    timezone.time_zones_for_geographical_number, without parsing the number again)."""
    zones_by_prefix, lengths = _zone_table()
    digits = e164[1:]
    for length in lengths.get(digits[:1], ()):
        zones = zones_by_prefix.get(digits[:length])
        if zones is not None:
            return zones
    return ()


@functools.cache
def _zone_table() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[int, ...]]]:
    """phonenumbers' prefix → zones table without its "unknown" zone, and the prefix
    lengths it holds by first digit, longest first (North American prefixes are 7 digits
    at most, so a lookup of one skips the two longer lengths)."""
    zones_by_prefix = {
        prefix: tuple(z for z in zones if z != _UNKNOWN_ZONE)
        for prefix, zones in TIMEZONE_DATA.items()
    }
    lengths: dict[str, set[int]] = {}
    for prefix in zones_by_prefix:
        lengths.setdefault(prefix[:1], set()).add(len(prefix))
    return zones_by_prefix, {
        digit: tuple(sorted(found, reverse=True)) for digit, found in lengths.items()
    }
