"""Pure list rules: phone normalisation, time zones, record building."""

from __future__ import annotations

import random

import phonenumbers
import phonenumbers.timezone
import pytest
from phonenumbers.tzdata import TIMEZONE_DATA

from cxmesh.lists.v1 import record_pb2
from cxmesh_server.contacts.number_types import number_type
from cxmesh_server.contacts.phones import PhoneError, normalize_phone, zones_for_e164
from cxmesh_server.contacts.timezones import derive_time_zone
from cxmesh_server.lists.domain.records import Record, RowSettings, build_record, plan_from_header
from cxmesh_server.lists.importer import RECORD_COLUMNS


def test_record_tuples_are_in_the_column_order_of_the_records_table() -> None:
    assert Record._fields[:15] == tuple(RECORD_COLUMNS[2:17])


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(415) 555-0101", "US", "+14155550101"),
        ("+44 20 7946 0018", "US", "+442079460018"),
        ("020 7946 0018", "GB", "+442079460018"),
    ],
)
def test_phones_become_e164_with_the_lists_region(raw: str, region: str, e164: str) -> None:
    assert normalize_phone(raw, region).e164 == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12", "INVALID_PHONE_NUMBER"),
        ("+1 900 555 0123", "PREMIUM_RATE_NUMBER"),
        ("hello", "INVALID_PHONE_NUMBER"),
    ],
)
def test_impossible_and_premium_numbers_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(PhoneError) as caught:
        normalize_phone(raw, "US")
    assert caught.value.reason == reason


def test_non_geographic_numbers_have_no_zone() -> None:
    assert normalize_phone("+1 800 555 0199", "US").time_zones == ()


def test_the_fast_number_type_agrees_with_phonenumbers() -> None:
    rng = random.Random(3)
    samples = [f"+1{rng.randrange(2_000_000_000, 9_999_999_999)}" for _ in range(3000)]
    # Countries of several regions (the main one first, or one chosen by leading digits),
    # of one, and non-geographic codes.
    for code in (44, 7, 39, 590, 262, 61, 49, 52, 33, 800, 882):
        samples += [f"+{code}{rng.randrange(10**7, 10**10)}" for _ in range(300)]
    for raw in samples:
        number = phonenumbers.parse(raw)
        assert number_type(number) == phonenumbers.number_type(number), raw


def test_the_number_type_agrees_with_phonenumbers_in_every_country_code() -> None:
    """Every region's and non-geographic code's example number of each type, numbers of
    every length a country code's regions allow, and every North American area code."""
    rng = random.Random(5)
    numbers: list[phonenumbers.PhoneNumber] = []
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                numbers.append(example)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            numbers.append(example)
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        lengths: set[int] = set()
        for region in regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            if metadata is not None and metadata.general_desc is not None:
                lengths.update(metadata.general_desc.possible_length)
        for length in lengths:
            numbers += [
                phonenumbers.PhoneNumber(
                    country_code=code, national_number=rng.randrange(10 ** (length - 1), 10**length)
                )
                for _ in range(200 if len(regions) > 1 else 20)
            ]
    for area in range(200, 1000):
        for exchange in (200, 555, rng.randrange(200, 1000)):
            numbers.append(
                phonenumbers.PhoneNumber(
                    country_code=1,
                    national_number=int(f"{area}{exchange}{rng.randrange(10**4):04d}"),
                )
            )
    numbers.append(phonenumbers.PhoneNumber(country_code=999, national_number=12345678))
    assert len(numbers) > 20_000
    for number in numbers:
        assert number_type(number) == phonenumbers.number_type(number), number


def test_a_numbers_zones_are_those_phonenumbers_gives_it() -> None:
    """Numbers under every prefix phonenumbers has zones for (each at every length it is
    a prefix of, padded out), and numbers of every North American area code."""
    rng = random.Random(7)
    numbers = [
        f"+{prefix}{rng.randrange(10**12):012d}"[: 1 + length]
        for prefix in TIMEZONE_DATA
        for length in range(max(len(prefix), 2), 16)
    ]
    numbers += [f"+1{area}{rng.randrange(10**7):07d}" for area in range(200, 1000)]
    for e164 in numbers:
        number = phonenumbers.PhoneNumber(
            country_code=int(e164[1:2]), national_number=int(e164[2:])
        )
        expected = phonenumbers.timezone.time_zones_for_geographical_number(number)
        if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != e164:
            continue  # not the number's E.164 form (a leading zero)
        assert zones_for_e164(e164) == tuple(z for z in expected if z != "Etc/Unknown"), e164


def _zone(**facts: object) -> str | None:
    arguments: dict[str, object] = {
        "explicit": "",
        "postal_code": "",
        "country": "US",
        "phone_zones": (),
        "default_zone": "",
    }
    decision = derive_time_zone(**(arguments | facts))  # type: ignore[arg-type]
    return decision.time_zone if decision else None


def test_zone_order_explicit_then_postal_code_then_phone_then_default() -> None:
    la = ("America/Los_Angeles",)
    assert _zone(explicit="Europe/Paris", postal_code="10001", phone_zones=la) == "Europe/Paris"
    assert _zone(postal_code="10001", phone_zones=la) == "America/New_York"
    assert _zone(phone_zones=la) == "America/Los_Angeles"
    assert _zone(default_zone="America/Chicago") == "America/Chicago"
    assert _zone() is None
    fallback = derive_time_zone(
        explicit="", postal_code="", country="", phone_zones=(), default_zone="UTC"
    )
    assert fallback is not None and fallback.source == record_pb2.TIME_ZONE_SOURCE_TENANT_DEFAULT


def test_a_second_invalid_phone_is_dropped_and_reported_but_the_row_kept() -> None:
    plan, problems = plan_from_header(["client_id", "phone", "mobile"])
    assert problems == []
    record, errors = build_record(7, ["A", "(415) 555-0101", "123"], plan, RowSettings("US", ""))
    assert record is not None and record.device_addresses == ["+14155550101"]
    assert [(e.line, e.column, e.reason) for e in errors] == [(7, "mobile", "INVALID_PHONE_NUMBER")]


def test_unknown_header_names_become_custom_fields() -> None:
    plan, problems = plan_from_header(["Phone", "Loyalty Tier"])
    assert problems == []
    assert plan.custom_fields == ["loyalty_tier"]


@pytest.mark.parametrize(
    "raw",
    [
        "(415) 555-0101",
        "415-555-0101",
        "415.555.0101",
        "+1 415 555 0101",
        "1 (415) 555-0101",
        "4155550101",
        "+14155550101",
        "(212)5550102",
        "+1 212 \u0665\u0665\u0665 \u0660\u0661\u0660\u0660",  # Arabic-Indic digits
        "\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff10\uff11",  # full-width
    ],
)
@pytest.mark.parametrize("region", ["US", "CA", "GB"])
def test_the_fast_north_american_parse_agrees_with_phonenumbers(raw: str, region: str) -> None:
    try:
        expected = phonenumbers.format_number(
            phonenumbers.parse(raw, region), phonenumbers.PhoneNumberFormat.E164
        )
    except phonenumbers.NumberParseException:
        expected = None
    try:
        got: str | None = normalize_phone(raw, region).e164
    except PhoneError:
        got = None
    if (
        expected is not None
        and phonenumbers.number_type(phonenumbers.parse(expected))
        == phonenumbers.PhoneNumberType.UNKNOWN
    ):
        expected = None
    assert got == expected
