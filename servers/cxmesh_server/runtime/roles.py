"""Roles and the permissions they grant.

Permissions are named `<service>.<resource>.<verb>` in the contracts (the
`cxmesh.types.v1.method_auth` option of every RPC); a role grants a set of patterns.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache

ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    # Operators of the whole platform: create and list tenants.
    "platform-admin": ("*",),
    # A tenant's administrators: everything inside their tenant.
    "admin": (
        "iam.apiKeys.*",
        "iam.tenants.get",
        "lists.*",
        "compliance.*",
        "campaigns.*",
        "scheduler.*",
        "messaging.*",
        "callbacks.*",
        "diagnostics.*",
    ),
    # Campaign and list administrators: no keys, no rule changes.
    "operator": (
        "iam.tenants.get",
        "lists.*",
        "compliance.ruleSets.get",
        "compliance.ruleSets.list",
        "compliance.auditEvents.list",
        "compliance.decisions.*",
        "campaigns.*",
        "scheduler.*",
        "messaging.*",
        "callbacks.*",
        "diagnostics.*",
    ),
    # Read-only users.
    "viewer": ("*.get", "*.list", "diagnostics.*"),
    # Dialers: pre-dial validation, call history, leases.
    "dialer": (
        "compliance.decisions.validate",
        "compliance.attempts.record",
        "campaigns.leases.*",
        "diagnostics.*",
    ),
    # The routing platform (ORS/URS-like): claim callbacks, report states and statistics.
    "routing": ("callbacks.routing.*", "diagnostics.*"),
    # Web and mobile apps on the GES-compatible surface (the role of API keys by default).
    "engagement": (
        "callbacks.callbacks.create",
        "callbacks.callbacks.get",
        "callbacks.callbacks.cancel",
        "callbacks.availability.get",
        "callbacks.callIn.create",
        "callbacks.statistics.get",
        "diagnostics.*",
    ),
}

# Roles an API key may carry: keys travel in fixed headers, so they never get admin rights.
API_KEY_ROLES = frozenset({"engagement", "dialer"})


@lru_cache(maxsize=4096)  # checked on every RPC, with few distinct role sets
def grants(roles: frozenset[str], permission: str) -> bool:
    """Whether any of the roles grants the permission. Unknown roles grant nothing."""
    return any(
        fnmatchcase(permission, pattern)
        for role in roles
        for pattern in ROLE_PERMISSIONS.get(role, ())
    )
