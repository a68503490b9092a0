"""A contact's time zone: explicit field > postal code > phone number > tenant default.

Where the data leaves several zones possible (an area code spanning two zones), every
candidate is kept and the record is marked ambiguous: compliance then allows only times
allowed in all of them.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from functools import cache

from cxmesh.lists.v1 import record_pb2
from cxmesh_server.contacts.places import zone_for_postal_code

Source = int  # a record_pb2.TimeZoneSource value


@dataclass(frozen=True, slots=True)
class ZoneDecision:
    time_zone: str
    source: Source
    # Set when the zone is not certain: every zone the contact may be in.
    candidates: tuple[str, ...] = ()


@cache
def valid_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# Why a zone that is not a place's is refused where a contact's zone is given.
PLACE_ZONE = (
    "must be a place's IANA zone, such as America/New_York: EST, UTC and Etc/ zones are"
    " fixed offsets that ignore the contact's daylight saving"
)


def is_local_zone(zone: str) -> bool:
    """Whether `zone` is some place's local time (`Area/Location`), not UTC, GMT or a fixed
    offset (`EST`, `Etc/GMT+5`)."""
    return "/" in zone and not zone.startswith("Etc/") and zone in valid_zones()


def derive_time_zone(
    *,
    explicit: str,
    postal_code: str,
    country: str,
    phone_zones: tuple[str, ...] | None,
    default_zone: str,
) -> ZoneDecision | None:
    """`phone_zones` is None when the record has no phone, () for a non-geographic one.
    Returns None when nothing decides and no default applies."""
    if explicit:
        return ZoneDecision(explicit, record_pb2.TIME_ZONE_SOURCE_EXPLICIT)
    by_postal = zone_for_postal_code(postal_code, country)
    if by_postal:
        return ZoneDecision(by_postal, record_pb2.TIME_ZONE_SOURCE_POSTAL_CODE)
    if phone_zones:
        if len(phone_zones) == 1:
            return ZoneDecision(phone_zones[0], record_pb2.TIME_ZONE_SOURCE_PHONE_NUMBER)
        # Several zones and nothing better: the first is only a label, the candidates rule.
        return ZoneDecision(
            phone_zones[0], record_pb2.TIME_ZONE_SOURCE_PHONE_NUMBER, tuple(phone_zones)
        )
    if default_zone:
        return ZoneDecision(default_zone, record_pb2.TIME_ZONE_SOURCE_TENANT_DEFAULT)
    return None
