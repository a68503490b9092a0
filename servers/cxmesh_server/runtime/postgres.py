"""The asyncpg pool and tenant-scoped transactions.

Tenant isolation is enforced by Postgres itself: every tenant table has a row-level
security policy on `cxmesh.tenant`, forced for the table owner too, and service
connections run as the non-superuser role `cxmesh_app` (superusers would bypass RLS).
A query outside `tenant_transaction` sees no tenant rows at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A pooled connection, as tenant_transaction hands it out.
Db: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

APP_ROLE = "cxmesh_app"

# Postgres failures that trying again, later, gets past: the call's answer is UNAVAILABLE.
POSTGRES_OUTAGES = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # shutting down, starting up, statement timeout
    asyncpg.InterfaceError,
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.ReadOnlySQLTransactionError,  # a demoted primary, until the pool reconnects
    asyncpg.LockNotAvailableError,
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Released connections are not reset with a query (asyncpg's default costs a round trip
    on every release); an open transaction is still rolled back. This holds because no code
    leaves session state on a pooled connection: settings are SET LOCAL / set_config(…, true),
    advisory locks are transaction locks, cursors live in transactions, nothing LISTENs."""


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        reset=_keep_session,
        # A startup parameter, so it survives the RESET ALL of connection reuse.
        server_settings={"role": APP_ROLE, "application_name": "cxmesh"},
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_transaction(pool: asyncpg.Pool, tenant: str) -> AsyncIterator[Db]:
    """A transaction in which only `tenant`'s rows are visible and writable."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT set_config('cxmesh.tenant', $1, true)", tenant)
        yield connection


async def copy_into(
    conn: Db, schema: str, table: str, columns: Sequence[str], records: Iterable[Sequence[Any]]
) -> None:
    """Bulk insert through COPY. Postgres refuses COPY FROM into tables under row-level
    security, so rows go to a temporary staging table first and then into the table with an
    INSERT, which the tenant policy checks. Call inside a transaction."""
    stage = f"stage_{schema}_{table}"
    column_list = ", ".join(columns)
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DROP AS "
        f"SELECT {column_list} FROM {schema}.{table} WITH NO DATA"
    )
    await conn.copy_records_to_table(stage, columns=list(columns), records=records)
    await conn.execute(
        f"INSERT INTO {schema}.{table} ({column_list}) SELECT {column_list} FROM {stage}; TRUNCATE {stage}"
    )
