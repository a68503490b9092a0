"""The region national phone numbers are read in when a request gives none: the tenant's,
from IAM's settings mirror. A tenant's settings never change, so each process keeps them."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from cxmesh_server.mirrors import tenants as tenants_mirror
from cxmesh_server.runtime.errors import Unavailable


class TenantRegions:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._known: dict[str, str] = {}

    async def region(self, tenant: str) -> str:
        known = self._known.get(tenant)
        if known:
            return known
        fields = await self._redis.hgetall(tenants_mirror.settings_key(tenant))
        settings = tenants_mirror.decode(cast("dict[str, str]", fields))  # decoded responses
        if settings is None or not settings.default_region:
            # Guessing a region could store a national number as another number.
            raise Unavailable("the tenant's settings are not available yet; retry shortly")
        self._known[tenant] = settings.default_region
        return settings.default_region
