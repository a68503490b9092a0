"""Imports, their error reports and stored specifications in Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg

from cxmesh.lists.v1 import import_pb2
from cxmesh_server.runtime.convert import timestamp
from cxmesh_server.runtime.errors import FailedPrecondition, NotFound
from cxmesh_server.runtime.postgres import tenant_transaction

FINAL_STATES = (
    import_pb2.IMPORT_STATE_SUCCEEDED,
    import_pb2.IMPORT_STATE_FAILED,
    import_pb2.IMPORT_STATE_CANCELLED,
)


def import_message(row: asyncpg.Record) -> import_pb2.Import:
    message = import_pb2.Import(
        name=f"contactLists/{row['list_id']}/imports/{row['import_id']}",
        mode=row["mode"],
        file_name=row["file_name"],
        source=row["source"],
        state=row["state"],
        progress=import_pb2.ImportProgress(
            rows_read=row["rows_read"],
            rows_accepted=row["rows_accepted"],
            rows_rejected=row["rows_rejected"],
            rows_suppressed=row["rows_suppressed"],
            rows_duplicate=row["rows_duplicate"],
            bytes_read=row["bytes_read"],
        ),
        failure_reason=row["failure_reason"],
        request_id=row["request_id"] or "",
        create_time=timestamp(row["create_time"]),
        end_time=timestamp(row["end_time"]),
    )
    if row["specification"]:
        message.specification = row["specification"]
    elif row["file_format"]:
        message.inline_format.ParseFromString(row["file_format"])
    return message


class ImportsStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def find_by_request(
        self, tenant: str, list_id: str, request_id: str
    ) -> asyncpg.Record | None:
        if not request_id:
            return None
        async with tenant_transaction(self.pool, tenant) as db:
            return await db.fetchrow(
                "SELECT * FROM lists.imports WHERE list_id = $1 AND request_id = $2",
                list_id,
                request_id,
            )

    async def create(
        self,
        tenant: str,
        list_id: str,
        import_id: str,
        mode: int,
        file_format: import_pb2.FileFormat | None,
        specification: str,
        file_name: str,
        source: int,
        request_id: str,
    ) -> asyncpg.Record:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                """
                INSERT INTO lists.imports (tenant_id, list_id, import_id, mode, file_format,
                    specification, file_name, source, state, request_id)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, ''))
                ON CONFLICT (tenant_id, list_id, request_id) DO NOTHING
                RETURNING *
                """,
                list_id,
                import_id,
                mode,
                file_format.SerializeToString() if file_format is not None else None,
                specification,
                file_name,
                source,
                import_pb2.IMPORT_STATE_PENDING,
                request_id,
            )
            if row is None:  # a concurrent request with the same request_id won
                row = await db.fetchrow(
                    "SELECT * FROM lists.imports WHERE list_id = $1 AND request_id = $2",
                    list_id,
                    request_id,
                )
        assert row is not None
        return row

    async def get(self, tenant: str, list_id: str, import_id: str) -> asyncpg.Record:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM lists.imports WHERE list_id = $1 AND import_id = $2",
                list_id,
                import_id,
            )
        if row is None:
            raise NotFound(f"contactLists/{list_id}/imports/{import_id} not found")
        return row

    async def list_imports(
        self, tenant: str, list_id: str, offset: int, limit: int
    ) -> list[asyncpg.Record]:
        async with tenant_transaction(self.pool, tenant) as db:
            return await db.fetch(
                """
                SELECT * FROM lists.imports WHERE list_id = $1
                ORDER BY create_time DESC, import_id DESC OFFSET $2 LIMIT $3
                """,
                list_id,
                offset,
                limit,
            )

    async def request_cancel(self, tenant: str, list_id: str, import_id: str) -> asyncpg.Record:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                """
                UPDATE lists.imports SET cancel_requested = true
                WHERE list_id = $1 AND import_id = $2 RETURNING *
                """,
                list_id,
                import_id,
            )
        if row is None:
            raise NotFound(f"contactLists/{list_id}/imports/{import_id} not found")
        if row["state"] in FINAL_STATES:
            raise FailedPrecondition(
                f"the import already ended ({import_pb2.ImportState.Name(row['state'])})",
                reason="IMPORT_FINISHED",
            )
        return row

    async def errors(
        self, tenant: str, list_id: str, import_id: str, after: int, limit: int
    ) -> list[asyncpg.Record]:
        await self.get(tenant, list_id, import_id)
        async with tenant_transaction(self.pool, tenant) as db:
            return await db.fetch(
                """
                SELECT *, ctid::text AS position FROM lists.import_errors
                WHERE list_id = $1 AND import_id = $2
                ORDER BY line_number, column_name OFFSET $3 LIMIT $4
                """,
                list_id,
                import_id,
                after,
                limit,
            )

    async def stream_errors(
        self, tenant: str, list_id: str, import_id: str
    ) -> AsyncIterator[asyncpg.Record]:
        await self.get(tenant, list_id, import_id)
        async with tenant_transaction(self.pool, tenant) as db:
            async for row in db.cursor(
                """
                SELECT * FROM lists.import_errors WHERE list_id = $1 AND import_id = $2
                ORDER BY line_number, column_name
                """,
                list_id,
                import_id,
            ):
                yield row

    async def fail_interrupted(self, min_age: timedelta) -> int:
        """Marks imports whose process died as FAILED: nothing of them was applied, since
        their transaction rolled back. An import's worker holds its advisory lock."""
        failed = 0
        async with self.pool.acquire() as db:
            candidates = await db.fetch("SELECT * FROM lists.unfinished_imports($1)", min_age)
        for row in candidates:
            async with tenant_transaction(self.pool, row["tenant_id"]) as db:
                free = await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", row["lock_id"])
                if free:
                    await db.execute(
                        """
                        UPDATE lists.imports SET state = $2, end_time = now(), rows_accepted = 0,
                            failure_reason = 'interrupted: the server stopped during the import; nothing was applied'
                        WHERE import_id = $1 AND state NOT IN (3, 4, 5)
                        """,
                        row["import_id"],
                        import_pb2.IMPORT_STATE_FAILED,
                    )
                    failed += 1
        return failed

    # Specifications -------------------------------------------------------------------

    async def create_specification(
        self,
        tenant: str,
        specification_id: str,
        display_name: str,
        file_format: import_pb2.FileFormat,
        request_id: str,
    ) -> asyncpg.Record:
        async with tenant_transaction(self.pool, tenant) as db:
            if request_id:
                row = await db.fetchrow(
                    "SELECT * FROM lists.specifications WHERE request_id = $1", request_id
                )
                if row is not None:
                    return row
            row = await db.fetchrow(
                """
                INSERT INTO lists.specifications (tenant_id, specification_id, display_name, file_format, request_id)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, NULLIF($4, '')) RETURNING *
                """,
                specification_id,
                display_name,
                file_format.SerializeToString(),
                request_id,
            )
        assert row is not None
        return row

    async def get_specification(self, tenant: str, specification_id: str) -> asyncpg.Record:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM lists.specifications WHERE specification_id = $1", specification_id
            )
        if row is None:
            raise NotFound(f"specifications/{specification_id} not found")
        return row

    async def list_specifications(
        self, tenant: str, offset: int, limit: int
    ) -> list[asyncpg.Record]:
        async with tenant_transaction(self.pool, tenant) as db:
            return await db.fetch(
                "SELECT * FROM lists.specifications ORDER BY display_name, specification_id OFFSET $1 LIMIT $2",
                offset,
                limit,
            )

    async def delete_specification(self, tenant: str, specification_id: str) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            result = await db.execute(
                "DELETE FROM lists.specifications WHERE specification_id = $1", specification_id
            )
        if result == "DELETE 0":
            raise NotFound(f"specifications/{specification_id} not found")
