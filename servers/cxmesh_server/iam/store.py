"""IAM storage: tenants and API keys in Postgres, active keys mirrored to Redis."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from redis.asyncio import Redis

from cxmesh_server.iam.domain import PLATFORM_SCOPE, ApiKey, Tenant
from cxmesh_server.mirrors.tenants import TenantSettings, encode, settings_key
from cxmesh_server.runtime.auth import api_key_redis_key
from cxmesh_server.runtime.errors import AlreadyExists, NotFound
from cxmesh_server.runtime.postgres import tenant_transaction
from cxmesh_server.runtime.redis import LoadedMarker


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        tenant_id=row["tenant_id"],
        display_name=row["display_name"],
        default_time_zone=row["default_time_zone"],
        default_region=row["default_region"],
        create_time=row["create_time"],
    )


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        api_key_id=row["api_key_id"],
        display_name=row["display_name"],
        roles=tuple(row["roles"]),
        key_prefix=row["key_prefix"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
    )


# Set once IAM's mirrors (active API keys, tenants' settings) have been built since Redis
# started: a Redis that lost its data (flushed, replaced, restarted without persistence)
# has lost them too.
LOADED_KEY = "cx:iam:loaded"


class IamStore:
    def __init__(self, pool: asyncpg.Pool, redis: Redis) -> None:
        self._pool = pool
        self._redis = redis

    async def create_tenant(self, tenant: Tenant, request_id: str) -> Tenant:
        async with tenant_transaction(self._pool, PLATFORM_SCOPE) as db:
            if request_id:
                row = await db.fetchrow(
                    "SELECT * FROM iam.tenants WHERE request_id = $1", request_id
                )
                if row is not None:
                    existing = _tenant(row)
                    await self._mirror_tenant(existing)  # a retry after a failed mirroring
                    return existing
            row = await db.fetchrow(
                """
                INSERT INTO iam.tenants (tenant_id, display_name, default_time_zone, default_region, request_id)
                VALUES ($1, $2, $3, $4, NULLIF($5, ''))
                ON CONFLICT (tenant_id) DO NOTHING
                RETURNING *
                """,
                tenant.tenant_id,
                tenant.display_name,
                tenant.default_time_zone,
                tenant.default_region,
                request_id,
            )
            if row is None:
                raise AlreadyExists(f"tenant {tenant.tenant_id} already exists")
        created = _tenant(row)
        await self._mirror_tenant(created)
        return created

    async def get_tenant(self, scope: str, tenant_id: str) -> Tenant:
        async with tenant_transaction(self._pool, scope) as db:
            row = await db.fetchrow("SELECT * FROM iam.tenants WHERE tenant_id = $1", tenant_id)
        if row is None:
            raise NotFound(f"tenants/{tenant_id} not found")
        return _tenant(row)

    async def list_tenants(self, after: str | None, limit: int) -> list[Tenant]:
        async with tenant_transaction(self._pool, PLATFORM_SCOPE) as db:
            rows = await db.fetch(
                "SELECT * FROM iam.tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2",
                after or "",
                limit,
            )
        return [_tenant(r) for r in rows]

    async def create_api_key(
        self,
        tenant: str,
        display_name: str,
        roles: tuple[str, ...],
        key_hash: str,
        key_prefix: str,
        request_id: str,
    ) -> tuple[ApiKey, bool]:
        """Stores the key and mirrors it; returns (key, created) — not created for a retry."""
        async with tenant_transaction(self._pool, tenant) as db:
            if request_id:
                row = await db.fetchrow(
                    "SELECT * FROM iam.api_keys WHERE request_id = $1", request_id
                )
                if row is not None:
                    return _api_key(row), False
            exists = await db.fetchval("SELECT 1 FROM iam.tenants WHERE tenant_id = $1", tenant)
            if not exists:
                raise NotFound(f"tenants/{tenant} not found")
            row = await db.fetchrow(
                """
                INSERT INTO iam.api_keys
                    (tenant_id, api_key_id, display_name, roles, key_hash, key_prefix, request_id)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4, $5, NULLIF($6, ''))
                RETURNING *
                """,
                uuid.uuid4().hex,
                display_name,
                list(roles),
                key_hash,
                key_prefix,
                request_id,
            )
            assert row is not None
            # Mirrored inside the transaction: if Redis refuses, the key is not created.
            await self._mirror(tenant, row)
        return _api_key(row), True

    async def get_api_key(self, tenant: str, api_key_id: str) -> ApiKey:
        async with tenant_transaction(self._pool, tenant) as db:
            row = await db.fetchrow("SELECT * FROM iam.api_keys WHERE api_key_id = $1", api_key_id)
        if row is None:
            raise NotFound(f"apiKeys/{api_key_id} not found")
        return _api_key(row)

    async def list_api_keys(
        self, tenant: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[ApiKey]:
        async with tenant_transaction(self._pool, tenant) as db:
            if after is None:
                rows = await db.fetch(
                    "SELECT * FROM iam.api_keys ORDER BY create_time DESC, api_key_id LIMIT $1",
                    limit,
                )
            else:
                rows = await db.fetch(
                    """
                    SELECT * FROM iam.api_keys
                    WHERE (create_time, api_key_id) < ($1, $2)
                    ORDER BY create_time DESC, api_key_id DESC LIMIT $3
                    """,
                    after[0],
                    after[1],
                    limit,
                )
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, tenant: str, api_key_id: str) -> ApiKey:
        async with tenant_transaction(self._pool, tenant) as db:
            row = await db.fetchrow(
                """
                UPDATE iam.api_keys SET revoke_time = coalesce(revoke_time, now())
                WHERE api_key_id = $1 RETURNING *
                """,
                api_key_id,
            )
            if row is None:
                raise NotFound(f"apiKeys/{api_key_id} not found")
            # Removed from the mirror before the revocation commits and returns: a revoked
            # key is refused from the moment the caller hears it is revoked.
            await self._redis.delete(api_key_redis_key(row["key_hash"]))
        return _api_key(row)

    async def mirror_loaded(self) -> bool:
        return await LoadedMarker(self._redis, LOADED_KEY).is_set()

    async def rebuild_mirror(self) -> int:
        """Makes the Redis mirror exactly the active keys of Postgres, mirrors every
        tenant's settings, then marks it loaded; returns how many keys are active."""
        marker = LoadedMarker(self._redis, LOADED_KEY)
        dataset = await marker.begin()
        async with tenant_transaction(self._pool, PLATFORM_SCOPE) as db:
            tenants = [_tenant(r) for r in await db.fetch("SELECT * FROM iam.tenants")]
        for settings in tenants:
            await self._mirror_tenant(settings)
        active: set[str] = set()
        for tenant in (t.tenant_id for t in tenants):
            async with tenant_transaction(self._pool, tenant) as db:
                rows = await db.fetch("SELECT * FROM iam.api_keys WHERE revoke_time IS NULL")
                for row in rows:
                    await self._mirror(tenant, row)
                    active.add(api_key_redis_key(row["key_hash"]))
        async for key in self._redis.scan_iter(match=api_key_redis_key("*"), count=1000):
            if key not in active:
                await self._redis.delete(key)
        await marker.mark(dataset)
        return len(active)

    async def _mirror_tenant(self, tenant: Tenant) -> None:
        await self._redis.hset(
            settings_key(tenant.tenant_id),
            mapping=encode(TenantSettings(tenant.default_time_zone, tenant.default_region)),
        )

    async def _mirror(self, tenant: str, row: asyncpg.Record) -> None:
        await self._redis.hset(
            api_key_redis_key(row["key_hash"]),
            mapping={
                "tenant": tenant,
                "roles": ",".join(row["roles"]),
                "name": f"apiKeys/{row['api_key_id']}",
            },
        )
