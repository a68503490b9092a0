"""A contact's time zone: explicit field > postal code > phone number > tenant default.

Where the data leaves several zones possible (an area code spanning two zones), every
candidate is kept and the record is marked ambiguous: compliance then allows only times
allowed in all of them.
"""

from __future__ import annotations

import os
import zoneinfo
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cxmesh.lists.v1 import record_pb2

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


# ZIP code → zone, derived at setup (`make gen`) from the zipcodes package's data into a
# small table: loading the package's full data set costs each import worker ~140 MB.
ZIP_ZONES_TABLE = Path(
    os.environ.get(
        "CXMESH_ZIP_ZONES", Path(__file__).resolve().parents[3] / "build" / "zip_zones.tsv"
    )
)


def write_zip_zone_table(path: Path) -> int:
    """Writes `zip<TAB>zone` for every US ZIP code whose zone is an IANA zone."""
    import zipcodes

    zones = valid_zones()
    everything = zipcodes.list_all()  # type: ignore[no-untyped-call]
    rows = sorted((z["zip_code"], z["timezone"]) for z in everything if z.get("timezone") in zones)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{code}\t{zone}\n" for code, zone in rows))
    return len(rows)


@cache
def _us_zip_zones() -> dict[str, str]:
    if not ZIP_ZONES_TABLE.exists():
        write_zip_zone_table(ZIP_ZONES_TABLE)  # a checkout that skipped `make gen`
    interned: dict[str, str] = {}
    table = {}
    for line in ZIP_ZONES_TABLE.read_text().splitlines():
        code, _, zone = line.partition("\t")
        table[code] = interned.setdefault(zone, zone)
    return table


def zone_for_postal_code(postal_code: str, country: str) -> str | None:
    if country not in ("", "US") or not postal_code:
        return None
    return _us_zip_zones().get(postal_code.strip()[:5])


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


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ZIP_ZONES_TABLE
    print(f"wrote {write_zip_zone_table(target)} ZIP code zones to {target}")
