"""Row-level security: the database itself keeps tenants apart."""

from __future__ import annotations

import asyncpg

from cxmesh_server.iam.bootstrap import PROCESS as IAM
from cxmesh_server.runtime.migrations import migrate
from cxmesh_server.runtime.postgres import create_pool, tenant_transaction
from cxmesh_server.stack.datastores import EmbeddedPostgres


async def test_rows_of_other_tenants_are_invisible_and_unwritable(
    postgres: EmbeddedPostgres,
) -> None:
    for schema, folder in IAM.migrations:
        await migrate(postgres.dsn, schema, folder)
    pool = await create_pool(postgres.dsn)
    try:
        async with tenant_transaction(pool, "*") as db:
            await db.execute(
                "INSERT INTO iam.tenants VALUES ('rls-a', 'A', 'UTC', 'US', NULL, now()), "
                "('rls-b', 'B', 'UTC', 'US', NULL, now()) ON CONFLICT DO NOTHING"
            )
        async with tenant_transaction(pool, "rls-a") as db:
            await db.execute(
                "INSERT INTO iam.api_keys (tenant_id, api_key_id, display_name, roles, key_hash, key_prefix)"
                " VALUES ('rls-a', 'k1', 'k', '{engagement}', 'hash-rls-a', 'p')"
                " ON CONFLICT DO NOTHING"
            )
        async with tenant_transaction(pool, "rls-b") as db:
            assert await db.fetch("SELECT * FROM iam.api_keys WHERE tenant_id = 'rls-a'") == []
            assert await db.fetchval("SELECT count(*) FROM iam.tenants") == 1
            try:
                await db.execute(
                    "INSERT INTO iam.api_keys (tenant_id, api_key_id, display_name, roles, key_hash, key_prefix)"
                    " VALUES ('rls-a', 'k2', 'k', '{engagement}', 'hash-rls-b', 'p')"
                )
            except asyncpg.InsufficientPrivilegeError:
                pass
            else:
                raise AssertionError("wrote a row into another tenant")
        async with pool.acquire() as db:  # outside a tenant transaction: nothing at all
            assert await db.fetchval("SELECT count(*) FROM iam.api_keys") == 0
    finally:
        await pool.close()


async def test_a_pooled_connection_carries_no_tenant_into_its_next_use(
    postgres: EmbeddedPostgres,
) -> None:
    pool = await create_pool(postgres.dsn, max_size=1)  # every use gets the same connection
    try:
        async with tenant_transaction(pool, "tenant-a") as db:
            assert await db.fetchval("SELECT current_setting('cxmesh.tenant', true)") == "tenant-a"
        with_failure = None
        try:
            async with tenant_transaction(pool, "tenant-b") as db:
                await db.execute("SELECT 1 / 0")
        except asyncpg.DivisionByZeroError as error:
            with_failure = error
        assert with_failure is not None
        async with pool.acquire() as connection:
            assert not await connection.fetchval("SELECT current_setting('cxmesh.tenant', true)")
            assert await connection.fetchval("SELECT pg_current_xact_id_if_assigned()") is None
    finally:
        await pool.close()
