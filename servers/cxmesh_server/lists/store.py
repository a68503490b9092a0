"""Postgres storage of the lists service. Every method runs in a tenant transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from cxmesh_server.runtime.errors import Aborted, AlreadyExists, NotFound
from cxmesh_server.runtime.postgres import Db, tenant_transaction


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class ContactListRow:
    list_id: str
    display_name: str
    description: str
    default_region: str
    custom_field_names: list[str]
    record_count: int
    create_time: datetime
    update_time: datetime
    etag: str


def _contact_list(row: asyncpg.Record) -> ContactListRow:
    return ContactListRow(
        list_id=row["list_id"],
        display_name=row["display_name"],
        description=row["description"],
        default_region=row["default_region"],
        custom_field_names=list(row["custom_field_names"]),
        record_count=row["record_count"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


_LIST_COLUMNS = """
    l.list_id, l.display_name, l.description, l.default_region, l.custom_field_names,
    l.create_time, l.update_time, l.etag,
    (SELECT count(*) FROM lists.records r WHERE r.tenant_id = l.tenant_id AND r.list_id = l.list_id)
        AS record_count
"""


class ListsStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def transaction(self, tenant: str) -> Any:
        return tenant_transaction(self.pool, tenant)

    # Contact lists ---------------------------------------------------------------------

    async def create_list(
        self,
        tenant: str,
        list_id: str,
        display_name: str,
        description: str,
        default_region: str,
        custom_field_names: Sequence[str],
        request_id: str,
        db: Db | None = None,
    ) -> ContactListRow:
        async with _maybe(self, tenant, db) as conn:
            if request_id:
                existing = await conn.fetchval(
                    "SELECT list_id FROM lists.contact_lists WHERE request_id = $1", request_id
                )
                if existing:
                    return await self.get_list_in(conn, existing)
            try:
                await conn.execute(
                    """
                    INSERT INTO lists.contact_lists (tenant_id, list_id, display_name, description,
                        default_region, custom_field_names, request_id, etag)
                    VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4, $5, NULLIF($6, ''), $7)
                    """,
                    list_id,
                    display_name,
                    description,
                    default_region,
                    list(custom_field_names),
                    request_id,
                    new_id(),
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(
                    f"a contact list named {display_name!r} or with id {list_id!r} already exists"
                ) from exc
            return await self.get_list_in(conn, list_id)

    async def get_list(self, tenant: str, list_id: str) -> ContactListRow:
        async with self.transaction(tenant) as conn:
            return await self.get_list_in(conn, list_id)

    async def get_list_in(self, conn: Db, list_id: str) -> ContactListRow:
        row = await conn.fetchrow(
            f"SELECT {_LIST_COLUMNS} FROM lists.contact_lists l WHERE l.list_id = $1", list_id
        )
        if row is None:
            raise NotFound(f"contactLists/{list_id} not found")
        return _contact_list(row)

    async def list_lists(
        self, tenant: str, after: tuple[str, str] | None, limit: int
    ) -> list[ContactListRow]:
        async with self.transaction(tenant) as conn:
            rows = await conn.fetch(
                f"""
                SELECT {_LIST_COLUMNS} FROM lists.contact_lists l
                WHERE ($1::text IS NULL OR (l.display_name, l.list_id) > ($1, $2))
                ORDER BY l.display_name, l.list_id LIMIT $3
                """,
                after[0] if after else None,
                after[1] if after else "",
                limit,
            )
        return [_contact_list(r) for r in rows]

    async def update_list(
        self, tenant: str, list_id: str, changes: dict[str, Any], etag: str
    ) -> ContactListRow:
        async with self.transaction(tenant) as conn:
            current = await self.get_list_in(conn, list_id)
            if etag and etag != current.etag:
                raise Aborted("the contact list changed since it was read (etag mismatch)")
            assignments = ", ".join(f"{column} = ${n + 2}" for n, column in enumerate(changes))
            try:
                await conn.execute(
                    f"""
                    UPDATE lists.contact_lists SET {assignments}{"," if assignments else ""}
                        update_time = now(), etag = ${len(changes) + 2}
                    WHERE list_id = $1
                    """,
                    list_id,
                    *changes.values(),
                    new_id(),
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists("another contact list has that display name") from exc
            return await self.get_list_in(conn, list_id)

    async def delete_list(self, tenant: str, list_id: str, etag: str) -> None:
        async with self.transaction(tenant) as conn:
            current = await self.get_list_in(conn, list_id)
            if etag and etag != current.etag:
                raise Aborted("the contact list changed since it was read (etag mismatch)")
            # Records and import errors carry no foreign key (see migration 0004).
            for table in ("records", "import_errors", "contact_lists"):
                await conn.execute(f"DELETE FROM lists.{table} WHERE list_id = $1", list_id)

    # Records -------------------------------------------------------------------------

    async def list_records(
        self, tenant: str, list_id: str, where: str, args: Sequence[Any], after: int, limit: int
    ) -> list[asyncpg.Record]:
        async with self.transaction(tenant) as conn:
            await self.get_list_in(conn, list_id)
            offset = len(args)
            rows: list[asyncpg.Record] = await conn.fetch(
                f"""
                SELECT * FROM lists.records
                WHERE list_id = ${offset + 1} AND record_id > ${offset + 2} {where}
                ORDER BY record_id LIMIT ${offset + 3}
                """,
                *args,
                list_id,
                after,
                limit,
            )
            return rows

    async def stream_records(
        self, tenant: str, list_ids: Sequence[str], where: str, args: Sequence[Any]
    ) -> AsyncIterator[asyncpg.Record]:
        """Every matching record of the lists, in record order, read with a cursor."""
        async with self.transaction(tenant) as conn:
            for list_id in list_ids:
                await self.get_list_in(conn, list_id)
            offset = len(args)
            async for row in conn.cursor(
                f"""
                SELECT * FROM lists.records WHERE list_id = ANY(${offset + 1}::text[]) {where}
                ORDER BY list_id, record_id
                """,
                *args,
                list(list_ids),
                prefetch=2000,
            ):
                yield row

    async def get_record(self, tenant: str, list_id: str, record_id: int) -> asyncpg.Record:
        async with self.transaction(tenant) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT * FROM lists.records WHERE list_id = $1 AND record_id = $2",
                list_id,
                record_id,
            )
        if row is None:
            raise NotFound(f"contactLists/{list_id}/records/{record_id} not found")
        return row

    async def update_record(
        self, tenant: str, list_id: str, record_id: int, changes: dict[str, Any]
    ) -> asyncpg.Record:
        assignments = ", ".join(f"{column} = ${n + 3}" for n, column in enumerate(changes))
        async with self.transaction(tenant) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(
                f"""
                UPDATE lists.records SET {assignments}, update_time = now()
                WHERE list_id = $1 AND record_id = $2 RETURNING *
                """,
                list_id,
                record_id,
                *changes.values(),
            )
        if row is None:
            raise NotFound(f"contactLists/{list_id}/records/{record_id} not found")
        return row

    # List Builder ------------------------------------------------------------------------

    async def copy_records(
        self,
        conn: Db,
        target_list: str,
        source_lists: Sequence[str],
        where: str,
        args: Sequence[Any],
    ) -> int:
        """Copies matching records into another list; a contact already there (same dedupe
        key) is not copied twice. Returns how many were copied."""
        offset = len(args)
        result = await conn.execute(
            f"""
            INSERT INTO lists.records (tenant_id, list_id, dedupe_key, client_id, first_name,
                last_name, company, device_types, device_addresses, device_raw, postal_code,
                state_province, country, time_zone, time_zone_source, candidate_time_zones,
                custom_fields, status, suppression_lists)
            SELECT tenant_id, ${offset + 1}, dedupe_key, client_id, first_name, last_name, company,
                device_types, device_addresses, device_raw, postal_code, state_province, country,
                time_zone, time_zone_source, candidate_time_zones, custom_fields, 1, suppression_lists
            FROM lists.records
            WHERE list_id = ANY(${offset + 2}::text[]) {where}
            ORDER BY list_id, record_id
            ON CONFLICT (tenant_id, list_id, dedupe_key) DO NOTHING
            """,
            *args,
            target_list,
            list(source_lists),
        )
        return int(result.split()[-1])

    async def distinct_values(
        self, conn: Db, list_id: str, column_sql: str, limit: int
    ) -> list[str]:
        rows = await conn.fetch(
            f"SELECT DISTINCT coalesce({column_sql}, '') AS value FROM lists.records WHERE list_id = $1 ORDER BY 1 LIMIT $2",
            list_id,
            limit,
        )
        return [r["value"] for r in rows]

    async def applied_response(self, conn: Db, request_id: str) -> bytes | None:
        if not request_id:
            return None
        value: bytes | None = await conn.fetchval(
            "SELECT response FROM lists.applied_requests WHERE request_id = $1", request_id
        )
        return value

    async def remember_response(self, conn: Db, request_id: str, response: bytes) -> None:
        if request_id:
            await conn.execute(
                "INSERT INTO lists.applied_requests (tenant_id, request_id, response) VALUES (current_setting('cxmesh.tenant'), $1, $2)",
                request_id,
                response,
            )


class _maybe:
    """Uses the given connection, or opens a tenant transaction."""

    def __init__(self, store: ListsStore, tenant: str, db: Db | None) -> None:
        self._store, self._tenant, self._db = store, tenant, db
        self._context: Any = None

    async def __aenter__(self) -> Db:
        if self._db is not None:
            return self._db
        self._context = self._store.transaction(self._tenant)
        return await self._context.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> None:
        if self._context is not None:
            await self._context.__aexit__(*exc)
