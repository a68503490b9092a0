"""Where a contact may be: the states a ZIP code or an area code places it in."""

from __future__ import annotations

import pytest

from cxmesh_server.contacts.places import (
    state_for_postal_code,
    states_for_e164,
    subdivision_code,
    zone_for_postal_code,
)


@pytest.mark.parametrize(
    ("number", "states"),
    [
        ("+13055550100", ("FL",)),  # Miami
        ("+12125550100", ("NY",)),
        ("+12025550100", ("DC",)),
        ("+14055550100", ("OK",)),
        ("+17875550100", ("PR",)),  # a territory with area codes of its own
        ("+14165550100", ("ON",)),  # Toronto
        ("+19025550100", ("NS", "PE")),  # one area code, two provinces: both
        ("+18005550100", ()),  # toll-free: no place
        ("+442079460000", ()),  # not North American
    ],
)
def test_an_area_code_places_a_number_in_the_states_it_covers(
    number: str, states: tuple[str, ...]
) -> None:
    assert states_for_e164(number) == states


def test_a_zip_code_gives_its_state_and_zone() -> None:
    assert state_for_postal_code("33101", "US") == "FL"
    assert zone_for_postal_code("33101-1234", "US") == "America/New_York"
    assert state_for_postal_code("33101", "CA") is None
    assert state_for_postal_code("00000", "US") is None


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("FL", "FL"),
        ("fl", "FL"),
        ("Florida", "FL"),
        (" florida ", "FL"),
        ("Ontario", "ON"),
        ("Atlantis", "ATLANTIS"),
    ],
)
def test_a_state_is_read_by_its_code_or_its_name(value: str, code: str) -> None:
    assert subdivision_code(value) == code
