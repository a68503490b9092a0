"""Suppression lists and entries: Postgres first, then the Redis mirror, before returning."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from cxmesh_server.lists.domain.suppression import KIND_OF_TYPE, TYPE_OF_KIND, expire_ms
from cxmesh_server.lists.store import new_id
from cxmesh_server.mirrors.suppression import Entry, SuppressionMirror, channel_mask
from cxmesh_server.runtime.errors import NotFound
from cxmesh_server.runtime.logging import repeating
from cxmesh_server.runtime.postgres import Db, copy_into, tenant_transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SuppressionListRow:
    list_id: str
    display_name: str
    campaigns: list[str]
    source: int
    entry_count: int
    create_time: datetime


@dataclass(frozen=True, slots=True)
class EntryRow:
    kind: str
    target: str
    channels: list[int]
    expire_time: datetime | None
    emergency: bool
    reason: str
    create_time: datetime | None = None


def _channels(mask: int) -> list[int]:
    return [bit for bit in range(1, 16) if mask & (1 << bit)]


# What `channel_mask(_channels(mask))` keeps of a stored mask, in one step for a rebuild.
_CHANNEL_BITS = channel_mask(range(1, 16))
# Entries read from Postgres per round trip while a list is mirrored afresh.
_REBUILD_ROWS = 10_000


async def _mirror_entries(db: Db, list_id: str) -> AsyncIterator[Entry]:
    """A list's entries as the mirror holds them, read in chunks of only the columns the
    mirror needs (a rebuild after Redis lost everything denies every decision meanwhile,
    so its Python work per entry is kept to the least)."""
    rows = await db.cursor(
        "SELECT target_type, target, channels_mask, expire_time"
        " FROM lists.suppression_entries WHERE list_id = $1",
        list_id,
    )
    while chunk := await rows.fetch(_REBUILD_ROWS):
        for target_type, target, mask, expire_time in chunk:
            yield Entry(
                KIND_OF_TYPE[target_type], target, mask & _CHANNEL_BITS, expire_ms(expire_time)
            )


def _entry(row: asyncpg.Record) -> EntryRow:
    return EntryRow(
        kind=KIND_OF_TYPE[row["target_type"]],
        target=row["target"],
        channels=_channels(row["channels_mask"]),
        expire_time=row["expire_time"],
        emergency=row["emergency"],
        reason=row["reason"],
        create_time=row["create_time"],
    )


def mirror_entry(entry: EntryRow) -> Entry:
    return Entry(
        entry.kind, entry.target, channel_mask(entry.channels), expire_ms(entry.expire_time)
    )


class SuppressionStore:
    def __init__(self, pool: asyncpg.Pool, mirror: SuppressionMirror) -> None:
        self.pool = pool
        self.mirror = mirror

    async def create_list(
        self, tenant: str, display_name: str, campaigns: Sequence[str], source: int, request_id: str
    ) -> SuppressionListRow:
        async with tenant_transaction(self.pool, tenant) as db:
            if request_id:
                existing = await db.fetchval(
                    "SELECT list_id FROM lists.suppression_lists WHERE request_id = $1", request_id
                )
                if existing:
                    return await self._get(db, existing)
            list_id = new_id()
            await db.execute(
                """
                INSERT INTO lists.suppression_lists (tenant_id, list_id, display_name, campaigns, source, request_id)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4, NULLIF($5, ''))
                """,
                list_id,
                display_name,
                list(campaigns),
                source,
                request_id,
            )
            await self.mirror.put_list(tenant, list_id, campaigns)
            return await self._get(db, list_id)

    async def get_list(self, tenant: str, list_id: str) -> SuppressionListRow:
        async with tenant_transaction(self.pool, tenant) as db:
            return await self._get(db, list_id)

    async def _require(self, db: Db, list_id: str) -> None:
        """Existence only: counting a large list's entries is for reads of the list itself."""
        if not await db.fetchval(
            "SELECT 1 FROM lists.suppression_lists WHERE list_id = $1", list_id
        ):
            raise NotFound(f"suppressionLists/{list_id} not found")

    async def _get(self, db: Db, list_id: str) -> SuppressionListRow:
        row = await db.fetchrow(
            """
            SELECT l.*, (SELECT count(*) FROM lists.suppression_entries e
                         WHERE e.tenant_id = l.tenant_id AND e.list_id = l.list_id
                           AND (e.expire_time IS NULL OR e.expire_time > now())) AS entry_count
            FROM lists.suppression_lists l WHERE l.list_id = $1
            """,
            list_id,
        )
        if row is None:
            raise NotFound(f"suppressionLists/{list_id} not found")
        return SuppressionListRow(
            list_id=row["list_id"],
            display_name=row["display_name"],
            campaigns=list(row["campaigns"]),
            source=row["source"],
            entry_count=row["entry_count"],
            create_time=row["create_time"],
        )

    async def list_lists(self, tenant: str, after: str, limit: int) -> list[SuppressionListRow]:
        async with tenant_transaction(self.pool, tenant) as db:
            ids = await db.fetch(
                """
                SELECT list_id FROM lists.suppression_lists
                WHERE (display_name || '/' || list_id) > $1
                ORDER BY display_name || '/' || list_id LIMIT $2
                """,
                after,
                limit,
            )
            return [await self._get(db, r["list_id"]) for r in ids]

    async def delete_list(self, tenant: str, list_id: str) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            deleted = await db.execute(
                "DELETE FROM lists.suppression_lists WHERE list_id = $1", list_id
            )
            if deleted == "DELETE 0":
                raise NotFound(f"suppressionLists/{list_id} not found")
        # Removals leave the mirror only once committed (`delete_entries`).
        await self.mirror.drop_list(tenant, list_id)

    async def upsert_entries(
        self, tenant: str, list_id: str, entries: Sequence[EntryRow], *, emergency: bool = False
    ) -> list[EntryRow]:
        """Writes entries, and the mirror inside the transaction before the commit: a
        failure of either leaves Postgres as it was and the mirror at most suppressing more
        (Redis writes are idempotent upserts). Adding never loosens: a target already in
        force (or given twice) keeps the union of the channels and the later expiry, as a
        consumer who opted out of calls and then of texts has opted out of both."""
        async with tenant_transaction(self.pool, tenant) as db:
            await self._require(db, list_id)
            # Mask 0 is every channel and no expiry is forever: either wins a merge.
            rows = await db.fetch(
                """
                WITH given AS (
                    SELECT t, v,
                           CASE WHEN bool_or(m = 0) THEN 0 ELSE bit_or(m) END AS m,
                           CASE WHEN bool_or(x IS NULL) THEN NULL ELSE max(x) END AS x,
                           (array_agg(r ORDER BY n DESC))[1] AS r
                    FROM unnest($2::smallint[], $3::text[], $4::smallint[], $5::timestamptz[],
                                $6::text[]) WITH ORDINALITY AS u(t, v, m, x, r, n)
                    GROUP BY t, v
                )
                INSERT INTO lists.suppression_entries AS e
                    (tenant_id, list_id, target_type, target, channels_mask, expire_time, emergency, reason)
                SELECT current_setting('cxmesh.tenant'), $1, t, v, m, x, $7, r FROM given
                ON CONFLICT (tenant_id, list_id, target_type, target) DO UPDATE
                SET channels_mask = CASE
                        WHEN e.expire_time <= now() THEN excluded.channels_mask
                        WHEN e.channels_mask = 0 OR excluded.channels_mask = 0 THEN 0
                        ELSE e.channels_mask | excluded.channels_mask END,
                    expire_time = CASE
                        WHEN e.expire_time <= now() THEN excluded.expire_time
                        WHEN e.expire_time IS NULL OR excluded.expire_time IS NULL THEN NULL
                        ELSE greatest(e.expire_time, excluded.expire_time) END,
                    emergency = (e.emergency AND (e.expire_time IS NULL OR e.expire_time > now()))
                        OR excluded.emergency,
                    reason = excluded.reason
                RETURNING *
                """,
                list_id,
                [TYPE_OF_KIND[e.kind] for e in entries],
                [e.target for e in entries],
                [channel_mask(e.channels) for e in entries],
                [e.expire_time for e in entries],
                [e.reason for e in entries],
                emergency,
            )
            stored = [_entry(r) for r in rows]
            await self.mirror.put_entries(tenant, list_id, (mirror_entry(e) for e in stored))
        by_target = {(e.kind, e.target): e for e in stored}
        return [by_target[key] for key in dict.fromkeys((e.kind, e.target) for e in entries)]

    async def delete_entries(
        self,
        tenant: str,
        list_id: str,
        targets: dict[str, list[str]],
        *,
        keep_emergency: bool = False,
    ) -> int:
        """Deletes the entries of these targets; with `keep_emergency` (a registry's
        deletions file) not the emergency ones: a consumer's own "never call me again"
        outlives the number leaving a registry."""
        deleted: dict[str, list[str]] = {}
        async with tenant_transaction(self.pool, tenant) as db:
            await self._require(db, list_id)
            for kind, values in targets.items():
                if values:
                    rows = await db.fetch(
                        """
                        DELETE FROM lists.suppression_entries
                        WHERE list_id = $1 AND target_type = $2 AND target = ANY($3::text[])
                          AND NOT ($4 AND emergency)
                        RETURNING target
                        """,
                        list_id,
                        TYPE_OF_KIND[kind],
                        values,
                        keep_emergency,
                    )
                    deleted[kind] = [r["target"] for r in rows]
        # Removed from the mirror only once committed: a removal that failed to commit
        # would otherwise leave numbers Postgres still suppresses callable. If this fails
        # the mirror suppresses more than Postgres until retried or rebuilt: never less.
        await self.mirror.remove_entries(tenant, list_id, deleted)
        return sum(len(values) for values in deleted.values())

    async def list_entries(
        self, tenant: str, list_id: str, after: tuple[int, str], limit: int, show_expired: bool
    ) -> list[EntryRow]:
        async with tenant_transaction(self.pool, tenant) as db:
            await self._require(db, list_id)
            rows = await db.fetch(
                """
                SELECT * FROM lists.suppression_entries
                WHERE list_id = $1 AND (target_type, target) > ($2, $3)
                  AND ($4 OR expire_time IS NULL OR expire_time > now())
                ORDER BY target_type, target LIMIT $5
                """,
                list_id,
                after[0],
                after[1],
                show_expired,
                limit,
            )
        return [_entry(r) for r in rows]

    async def replace_all(
        self, tenant: str, list_id: str, kind: str, batches: AsyncIterable[list[str]], reason: str
    ) -> int:
        """A full load (a DNC full file): the list becomes exactly these targets (every
        channel, no expiry) and its emergency entries, which a registry never lifts; in
        Postgres in one transaction and in Redis by swapping a staged copy in, so neither
        ever shows a half-loaded list. Batches stream: memory stays bounded whatever the
        file size. Returns how many of the file's targets were loaded."""
        columns = ["tenant_id", "list_id", "target_type", "target", "channels_mask", "reason"]
        target_type = TYPE_OF_KIND[kind]
        count = 0
        try:
            async with (
                self.mirror.writing(tenant, diverged=False) as write,
                tenant_transaction(self.pool, tenant) as db,
            ):
                await self._require(db, list_id)
                await db.execute(
                    "DELETE FROM lists.suppression_entries WHERE list_id = $1 AND NOT emergency",
                    list_id,
                )
                kept = [
                    _entry(r)
                    for r in await db.fetch(
                        "SELECT * FROM lists.suppression_entries WHERE list_id = $1", list_id
                    )
                ]
                staging = f"{list_id}.staging"
                await self.mirror.drop_list(tenant, staging)
                await self.mirror.put_entries(tenant, staging, (mirror_entry(e) for e in kept))
                already = {e.target for e in kept if e.kind == kind}
                async for batch in batches:
                    batch = [target for target in batch if target not in already]
                    rows = [(tenant, list_id, target_type, target, 0, reason) for target in batch]
                    await copy_into(db, "lists", "suppression_entries", columns, rows)
                    count += await self.mirror.put_targets(
                        tenant, staging, kind, batch, mask=0, expire_ms=None
                    )
                # From the swap to the commit the mirror holds a list Postgres does not
                # have yet: if the load fails, is cancelled or dies in between, the
                # tenant is rebuilt.
                write.diverged = True
                await self.mirror.swap_in(tenant, staging, list_id)
        except Exception:
            await self._repair_now()  # not a keeper's check later
            raise
        return count

    async def _repair_now(self) -> None:
        try:
            await self.repair_abandoned()
        except Exception:
            log.exception("suppression mirror repair failed; the keeper retries", extra=repeating())

    async def repair_abandoned(self) -> int:
        """Rebuilds each tenant whose mirror change failed or whose writer died (a full
        load cancelled between its swap and its commit, a rebuild that crashed); returns
        how many. Run by every lists replica; each repair is claimed by one."""
        repaired = 0
        for member in await self.mirror.abandoned():
            tenant = member.rpartition("|")[0]
            # Our own lease first, so a repair is never lost between the claim and the work.
            async with self.mirror.writing(tenant):
                if not await self.mirror.claim(member):
                    continue
                log.warning("rebuilding a suppression mirror left unlike Postgres")
                await self.rebuild_mirror(tenant)
                repaired += 1
        return repaired

    async def rebuild_mirror(self, tenant: str) -> int:
        """Rebuilds the tenant's mirror from Postgres; not ready while it runs."""
        async with self.mirror.writing(tenant):
            return await self._rebuild_mirror(tenant)

    async def _rebuild_mirror(self, tenant: str) -> int:
        await self.mirror.set_ready(tenant, False)
        total = 0
        async with tenant_transaction(self.pool, tenant) as db:
            lists = await db.fetch("SELECT list_id, campaigns FROM lists.suppression_lists")
            known = set(await self.mirror.lists(tenant))
            for stale in known - {r["list_id"] for r in lists}:
                await self.mirror.drop_list(tenant, stale)
            for row in lists:
                await self.mirror.put_list(tenant, row["list_id"], row["campaigns"])
                total += await self.mirror.replace_list(
                    tenant, row["list_id"], _mirror_entries(db, row["list_id"])
                )
        await self.mirror.set_ready(tenant, True)
        return total

    async def tenants_with_lists(self) -> list[str]:
        async with self.pool.acquire() as db:
            rows = await db.fetch("SELECT tenant_id FROM lists.suppression_tenants()")
        return [r["tenant_id"] for r in rows]
