"""Tenants' settings as services on a hot path read them from Redis; IAM writes them.

Layout: `cx:{t}:tenant` hash with `default_time_zone` and `default_region`. A tenant's
settings never change once it is created. IAM writes the hash when it creates the tenant
and whenever it rebuilds its mirrors (its loaded marker gone: Redis lost its data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.typing import EncodableT, FieldT


@dataclass(frozen=True, slots=True)
class TenantSettings:
    default_time_zone: str  # IANA
    default_region: str  # CLDR region national numbers are read in


def settings_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:tenant"


def encode(settings: TenantSettings) -> dict[FieldT, EncodableT]:
    return {
        "default_time_zone": settings.default_time_zone,
        "default_region": settings.default_region,
    }


def decode(fields: Mapping[str, str]) -> TenantSettings | None:
    """None when the hash is missing (not mirrored yet, or lost with Redis)."""
    if not fields:
        return None
    return TenantSettings(fields.get("default_time_zone", ""), fields.get("default_region", ""))
