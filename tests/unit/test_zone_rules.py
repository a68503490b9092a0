"""Calling windows are decided from the IANA rules of the tzdata package the project
installs, the same on every host, never from a host's own (possibly stale) zoneinfo."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

import cxmesh_server  # noqa: F401  (sets where zone rules come from)


def test_zone_rules_come_from_the_tzdata_package_not_the_host() -> None:
    assert zoneinfo.TZPATH == ()
    assert "America/New_York" in zoneinfo.available_timezones()


def test_a_rule_younger_than_some_hosts_zoneinfo_applies() -> None:
    # Mexico City has kept UTC-6 all year since 30 October 2022 (IANA 2022f).
    july = datetime(2025, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("America/Mexico_City"))
    assert july.utcoffset() == timedelta(hours=-6)
