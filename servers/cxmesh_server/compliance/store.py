"""Rule sets and their audit trail in Postgres; every change mirrored to Redis before the
call returns, so every replica sees it on its next decision."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress

import asyncpg
from redis.asyncio.lock import Lock
from redis.exceptions import RedisError

from cxmesh.compliance.v1 import rule_set_pb2
from cxmesh_server.compliance.attempts import AttemptStore
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.runtime.errors import Aborted, NotFound
from cxmesh_server.runtime.postgres import Db, tenant_transaction

log = logging.getLogger(__name__)

# Held by the replica replaying attempts into a Redis that lost them; renewed while it runs.
RESTORE_LOCK = "cx:compliance:restoring"
RESTORE_LEASE_SECONDS = 30.0


def _message(row: asyncpg.Record) -> rule_set_pb2.RuleSet:
    message = rule_set_pb2.RuleSet.FromString(row["body"])
    message.name = f"ruleSets/{row['rule_set_id']}"
    message.revision = row["revision"]
    message.etag = row["etag"]
    message.create_time.FromDatetime(row["create_time"])
    message.update_time.FromDatetime(row["update_time"])
    return message


class RuleSetStore:
    def __init__(self, pool: asyncpg.Pool, mirror: RulesMirror, attempts: AttemptStore) -> None:
        self.pool = pool
        self.mirror = mirror
        self.attempts = attempts

    async def create(
        self, tenant: str, actor: str, rule_set: rule_set_pb2.RuleSet, request_id: str
    ) -> rule_set_pb2.RuleSet:
        async with tenant_transaction(self.pool, tenant) as db:
            if request_id:
                row = await db.fetchrow(
                    "SELECT * FROM compliance.rule_sets WHERE request_id = $1", request_id
                )
                if row is not None:
                    return _message(row)
            rule_set_id = uuid.uuid4().hex[:16]
            body = _body(rule_set)
            row = await db.fetchrow(
                """
                INSERT INTO compliance.rule_sets (tenant_id, rule_set_id, display_name, revision, body, etag, request_id)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, 1, $3, $4, NULLIF($5, '')) RETURNING *
                """,
                rule_set_id,
                rule_set.display_name,
                body,
                uuid.uuid4().hex[:16],
                request_id,
            )
            assert row is not None
            created = _message(row)
            await self._audit(db, rule_set_id, actor, None, created)
            await self.mirror.put(tenant, created)
        return created

    async def get(self, tenant: str, rule_set_id: str) -> rule_set_pb2.RuleSet:
        async with tenant_transaction(self.pool, tenant) as db:
            return _message(await self._row(db, rule_set_id))

    async def _row(self, db: Db, rule_set_id: str, *, lock: bool = False) -> asyncpg.Record:
        row: asyncpg.Record | None = await db.fetchrow(
            "SELECT * FROM compliance.rule_sets WHERE rule_set_id = $1"
            + (" FOR UPDATE" if lock else ""),
            rule_set_id,
        )
        if row is None:
            raise NotFound(f"ruleSets/{rule_set_id} not found")
        return row

    async def list_rule_sets(
        self, tenant: str, offset: int, limit: int
    ) -> list[rule_set_pb2.RuleSet]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                "SELECT * FROM compliance.rule_sets ORDER BY display_name, rule_set_id OFFSET $1 LIMIT $2",
                offset,
                limit,
            )
        return [_message(r) for r in rows]

    async def update(
        self, tenant: str, actor: str, rule_set: rule_set_pb2.RuleSet, etag: str
    ) -> rule_set_pb2.RuleSet:
        rule_set_id = rule_set.name.removeprefix("ruleSets/")
        async with tenant_transaction(self.pool, tenant) as db:
            before = _message(await self._row(db, rule_set_id, lock=True))
            if etag and etag != before.etag:
                raise Aborted("the rule set changed since it was read (etag mismatch)")
            row = await db.fetchrow(
                """
                UPDATE compliance.rule_sets SET display_name = $2, body = $3, revision = revision + 1,
                    etag = $4, update_time = now()
                WHERE rule_set_id = $1 RETURNING *
                """,
                rule_set_id,
                rule_set.display_name,
                _body(rule_set),
                uuid.uuid4().hex[:16],
            )
            assert row is not None
            after = _message(row)
            await self._audit(db, rule_set_id, actor, before, after)
            await self.mirror.put(tenant, after)
        return after

    async def delete(self, tenant: str, actor: str, rule_set_id: str, etag: str) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            before = _message(await self._row(db, rule_set_id, lock=True))
            if etag and etag != before.etag:
                raise Aborted("the rule set changed since it was read (etag mismatch)")
            await db.execute("DELETE FROM compliance.rule_sets WHERE rule_set_id = $1", rule_set_id)
            await self._audit(db, rule_set_id, actor, before, None)
            await self.mirror.remove(tenant, rule_set_id)

    async def audit_events(
        self, tenant: str, rule_set_id: str, offset: int, limit: int
    ) -> list[asyncpg.Record]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows: list[asyncpg.Record] = await db.fetch(
                """
                SELECT * FROM compliance.audit_events WHERE rule_set_id = $1
                ORDER BY event_id DESC OFFSET $2 LIMIT $3
                """,
                rule_set_id,
                offset,
                limit,
            )
        return rows

    async def _audit(
        self,
        db: Db,
        rule_set_id: str,
        actor: str,
        before: rule_set_pb2.RuleSet | None,
        after: rule_set_pb2.RuleSet | None,
    ) -> None:
        await db.execute(
            """
            INSERT INTO compliance.audit_events (tenant_id, rule_set_id, actor, before, after)
            VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4)
            """,
            rule_set_id,
            actor,
            before.SerializeToString() if before else None,
            after.SerializeToString() if after else None,
        )

    async def rebuild_mirror(self) -> int:
        """Mirrors every tenant's rules into Redis and, if this Redis lacks them (lost,
        restarted, failed over), every attempt; returns how many tenants' rules it
        mirrored (none while another replica rebuilds a lost Redis)."""
        # Read first: if a failover interrupts the rebuild, the marker names the old dataset.
        dataset = await self.mirror.begin_load()
        lost = not await self.mirror.is_loaded()
        if lost and await self.mirror.redis.exists(RESTORE_LOCK):
            # Another replica is rebuilding, rules included: the waiting replicas, retrying
            # each second, would reread every tenant's rules and make every replica
            # recompile them, for as long as the replay takes.
            return 0
        async with self.pool.acquire() as db:
            tenants = [
                r["tenant_id"]
                for r in await db.fetch("SELECT tenant_id FROM compliance.rule_set_tenants()")
            ]
        for tenant in tenants:
            async with tenant_transaction(self.pool, tenant) as db:
                rows = await db.fetch("SELECT * FROM compliance.rule_sets")
            await self.mirror.replace(tenant, [_message(r) for r in rows])
        if not lost:
            await self.mirror.mark_loaded(dataset)
            return len(tenants)
        # One replica replays the attempts; the others find the lock taken and leave the
        # mirror unmarked (decisions deny) until it is done, or its lease lapses.
        replay = self.mirror.redis.lock(
            RESTORE_LOCK, timeout=RESTORE_LEASE_SECONDS, blocking=False, thread_local=False
        )
        if not await replay.acquire():
            return len(tenants)
        renewal = asyncio.create_task(_keep_leased(replay))
        log.warning("Redis lost the attempts; replaying them from Postgres")
        started = time.monotonic()
        try:
            replayed = await self.attempts.restore_mirror()
            # Attempt sets Redis kept from before the index (a loaded marker means none).
            await self.mirror.index_attempts()
            await self.mirror.mark_loaded(dataset)
            log.warning(
                "attempts replayed",
                extra={"count": replayed, "seconds": round(time.monotonic() - started, 1)},
            )
        finally:
            renewal.cancel()
            with suppress(RedisError):  # lapsed or Redis gone: nothing left to release
                await replay.release()
        return len(tenants)


async def _keep_leased(lock: Lock) -> None:
    while True:
        await asyncio.sleep(RESTORE_LEASE_SECONDS / 3)
        with suppress(RedisError):  # a missed renewal costs at most a second replay
            await lock.reacquire()


def _body(rule_set: rule_set_pb2.RuleSet) -> bytes:
    body = rule_set_pb2.RuleSet()
    body.CopyFrom(rule_set)
    for field in ("name", "revision", "etag", "create_time", "update_time"):
        body.ClearField(field)  # kept in columns
    return body.SerializeToString()
