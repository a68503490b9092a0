"""Where a contact may be, from reference tables built at setup (`make gen`): a US ZIP
code's time zone and state, and the states or provinces a North American area code covers.

Stricter local rules (Florida's calling hours, a state's holidays) follow the contact's
state, which records often leave out. Florida's and Oklahoma's laws presume a called
party with one of their area codes to be a resident, so compliance applies the rules of
every state the record names, its ZIP code lies in, or its area code covers.

The tables are small files rather than the packages' data: the zipcodes package's full
data costs each import worker ~140 MB, phonenumbers' geocoder ~100 MB per process (RSS
of a Python process before and after its first geocoder lookup, measured here).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

_BUILD = Path(__file__).resolve().parents[3] / "build"
ZIP_TABLE = Path(os.environ.get("CXMESH_ZIP_TABLE", _BUILD / "zip_places.tsv"))
AREA_CODE_TABLE = Path(os.environ.get("CXMESH_AREA_CODE_TABLE", _BUILD / "area_codes.tsv"))

# US territories, which the holidays package knows as US subdivisions
_TERRITORIES = frozenset({"AS", "GU", "MP", "PR", "VI"})
# phonenumbers' own spellings that are not a subdivision's name in the holidays package
_GEOCODER_SPELLINGS = {
    "Washington D.C.": "DC",
    "Washington State": "WA",
    "British Colombia": "BC",
}


def write_zip_table(path: Path) -> int:
    """Writes `zip<TAB>zone<TAB>state` for every US ZIP code whose zone is an IANA zone."""
    import zipcodes

    from cxmesh_server.contacts.timezones import valid_zones

    zones = valid_zones()
    everything = zipcodes.list_all()  # type: ignore[no-untyped-call]
    rows = sorted(
        (z["zip_code"], z["timezone"], z["state"]) for z in everything if z.get("timezone") in zones
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return len(rows)


def _subdivision_codes() -> dict[str, str]:
    """Name or code → code of every US and Canadian subdivision."""
    import holidays

    codes: dict[str, str] = dict(_GEOCODER_SPELLINGS)
    for country in ("US", "CA"):
        calendar = holidays.country_holidays(country)
        codes.update(calendar.subdivisions_aliases)
        codes.update((code, code) for code in calendar.subdivisions)
    return codes


def _described(description: str, codes: dict[str, str]) -> Iterable[str]:
    """The subdivisions a geocoder description names: "Miami, FL", "Florida" or
    "Nova Scotia/Prince Edward Island"; nothing for "Canada" or ""."""
    _, _, last = description.rpartition(", ")
    if last in codes:
        return (codes[last],)
    return (codes[name] for name in description.split("/") if name in codes)


def write_area_code_table(path: Path) -> int:
    """Writes `area code<TAB>codes` (comma-separated) for every area code in the US, its
    territories or Canada: what phonenumbers' geocoding data says of the area code itself
    or, where it has no entry of its own, of all its prefixes together."""
    import phonenumbers
    from phonenumbers.geodata import GEOCODE_DATA

    codes = _subdivision_codes()
    own: dict[str, set[str]] = {}
    of_prefixes: dict[str, set[str]] = {}
    for prefix, descriptions in GEOCODE_DATA.items():
        if prefix.startswith("1") and len(prefix) >= 4:
            found = _described(descriptions.get("en", ""), codes)
            table = own if len(prefix) == 4 else of_prefixes
            table.setdefault(prefix[1:4], set()).update(found)
    covered = {**of_prefixes, **{area: states for area, states in own.items() if states}}
    # Territories with area codes of their own are regions to phonenumbers, not places.
    for area in range(200, 1000):
        region = phonenumbers.region_code_for_number(phonenumbers.parse(f"+1{area}2345678"))
        if region in _TERRITORIES:
            covered[str(area)] = {region}
    rows = sorted((area, ",".join(sorted(states))) for area, states in covered.items() if states)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{area}\t{states}\n" for area, states in rows))
    return len(rows)


def _read(path: Path, write: Callable[[Path], int]) -> list[list[str]]:
    if not path.exists():
        write(path)  # a checkout that skipped `make gen`
    return [line.split("\t") for line in path.read_text().splitlines()]


@cache
def _zips() -> dict[str, tuple[str, str]]:
    interned: dict[str, str] = {}
    return {
        code: (interned.setdefault(zone, zone), interned.setdefault(state, state))
        for code, zone, state in _read(ZIP_TABLE, write_zip_table)
    }


@cache
def _area_codes() -> dict[str, tuple[str, ...]]:
    return {
        area: tuple(states.split(","))
        for area, states in _read(AREA_CODE_TABLE, write_area_code_table)
    }


def _zip(postal_code: str, country: str) -> tuple[str, str] | None:
    if country not in ("", "US") or not postal_code:
        return None
    return _zips().get(postal_code.strip()[:5])


def zone_for_postal_code(postal_code: str, country: str) -> str | None:
    found = _zip(postal_code, country)
    return found[0] if found else None


def state_for_postal_code(postal_code: str, country: str) -> str | None:
    found = _zip(postal_code, country)
    return found[1] if found else None


@cache
def _codes_by_folded_name() -> dict[str, str]:
    return {name.casefold(): code for name, code in _subdivision_codes().items()}


def postal_key(value: str) -> str:
    """A postal code as rules compare it: no spaces or dashes, upper case, a US ZIP+4 as
    its ZIP ("k1a 0b1" is K1A0B1; "33101-1234" and "331011234" are 33101)."""
    key = "".join(value.split()).replace("-", "").upper()
    return key[:5] if len(key) == 9 and key.isdigit() else key


def is_subdivision(value: str) -> bool:
    """Whether `value` names a US state or territory or a Canadian province, by code or
    name."""
    return value.strip().casefold() in _codes_by_folded_name()


def subdivision_code(value: str) -> str:
    """A state or province as its code: "Florida", "fl" and "FL" are all "FL"; a value
    that names none is kept, upper-cased."""
    value = value.strip()
    return _codes_by_folded_name().get(value.casefold(), value.upper())


def states_for_e164(e164: str) -> tuple[str, ...]:
    """The states or provinces a North American number's area code covers; () for other
    numbers, toll-free ones and area codes the geocoding data places nowhere."""
    return states_for_area_code(e164[2:5]) if e164.startswith("+1") else ()


def states_for_area_code(area_code: str) -> tuple[str, ...]:
    """The states or provinces a North American area code covers (see states_for_e164)."""
    return _area_codes().get(area_code, ())


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else _BUILD
    print(f"wrote {write_zip_table(folder / ZIP_TABLE.name)} ZIP codes")
    print(f"wrote {write_area_code_table(folder / AREA_CODE_TABLE.name)} area codes")
