"""IAM rules: what a valid tenant and API key look like. No I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import phonenumbers

from cxmesh_server.contacts.timezones import valid_zones
from cxmesh_server.runtime.errors import Validator
from cxmesh_server.runtime.roles import API_KEY_ROLES

TENANT_ID = re.compile(r"^[a-z][a-z0-9-]{2,39}$")
PLATFORM_SCOPE = "*"
DEFAULT_API_KEY_ROLES = ("engagement",)


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    display_name: str
    default_time_zone: str
    default_region: str
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    api_key_id: str
    display_name: str
    roles: tuple[str, ...]
    key_prefix: str
    create_time: datetime
    revoke_time: datetime | None


def validate_tenant(tenant: Tenant) -> None:
    check = Validator()
    check.require(
        bool(TENANT_ID.match(tenant.tenant_id)),
        "tenant_id",
        "must be 3-40 characters of a-z, 0-9 and '-', starting with a letter",
    )
    check.require(
        0 < len(tenant.display_name) <= 128, "tenant.display_name", "must be 1-128 characters"
    )
    check.require(
        tenant.default_time_zone in valid_zones(),
        "tenant.default_time_zone",
        "must be an IANA time zone such as America/New_York",
    )
    check.require(
        tenant.default_region in phonenumbers.SUPPORTED_REGIONS,
        "tenant.default_region",
        "must be a CLDR region code such as US",
    )
    check.check()


def validate_api_key(display_name: str, roles: tuple[str, ...]) -> None:
    check = Validator()
    check.require(0 < len(display_name) <= 128, "api_key.display_name", "must be 1-128 characters")
    unknown = sorted(set(roles) - API_KEY_ROLES)
    check.require(
        not unknown,
        "api_key.roles",
        f"an API key may carry only {sorted(API_KEY_ROLES)}; not {unknown}",
    )
    check.check()
