"""The suppression mirror never suppresses less than Postgres: entries reach it before
their commit, and removals leave it only after theirs. A removal whose commit fails leaves
the numbers suppressed in both; a full load that fails, or is cancelled, after its swap is
undone in the mirror (real Postgres, real Redis; the commit is made to fail, or to wait, by
a deferred constraint trigger)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cxmesh.types.v1 import channel_pb2
from cxmesh_server.lists.bootstrap import PROCESS as LISTS
from cxmesh_server.lists.suppression_store import EntryRow, SuppressionStore
from cxmesh_server.mirrors.suppression import (
    WRITERS_KEY,
    SuppressionMirror,
    is_active,
    list_key,
    rebuilding_key,
)
from cxmesh_server.runtime.migrations import migrate
from cxmesh_server.runtime.postgres import create_pool
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.stack.datastores import EmbeddedPostgres, EmbeddedRedis

TENANT = "mirror-order"
# Reasons whose entries fail their transaction's commit: when deleted, when inserted; and
# whose insertion's commit takes 30 s.
UNDELETABLE = "fails the commit of its deletion"
UNINSERTABLE = "fails the commit of its insertion"
SLOW = "commits slowly"
_FAIL_COMMIT = f"""
CREATE OR REPLACE FUNCTION lists.refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (TG_OP = 'DELETE' AND OLD.reason = '{UNDELETABLE}')
     OR (TG_OP = 'INSERT' AND NEW.reason = '{UNINSERTABLE}') THEN
    RAISE EXCEPTION 'commit refused';
  END IF;
  IF TG_OP = 'INSERT' AND NEW.reason = '{SLOW}' THEN
    PERFORM pg_sleep(30);
  END IF;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS refuse_commit ON lists.suppression_entries;
CREATE CONSTRAINT TRIGGER refuse_commit AFTER DELETE OR INSERT ON lists.suppression_entries
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lists.refuse_commit();
"""
_REMOVE_TRIGGER = """
DROP TRIGGER IF EXISTS refuse_commit ON lists.suppression_entries;
DROP FUNCTION IF EXISTS lists.refuse_commit();
"""


@pytest.fixture
async def store(
    postgres: EmbeddedPostgres, own_redis: EmbeddedRedis
) -> AsyncIterator[SuppressionStore]:
    for schema, folder in LISTS.migrations:
        await migrate(postgres.dsn, schema, folder)
    owner = await asyncpg.connect(postgres.dsn)  # the schema's owner, not the app's role
    await owner.execute(_FAIL_COMMIT)
    pool = await create_pool(postgres.dsn)
    redis = create_redis(own_redis.url)
    try:
        yield SuppressionStore(pool, SuppressionMirror(redis))
    finally:
        await owner.execute(_REMOVE_TRIGGER)
        await owner.close()
        await pool.close()
        await redis.aclose()


async def _suppressed(store: SuppressionStore, list_id: str, target: str) -> bool:
    value = await store.mirror._redis.hget(list_key(TENANT, list_id, "phone"), target)
    return value is not None and is_active(str(value), 0, channel_pb2.CHANNEL_VOICE)


async def test_a_removal_that_fails_to_commit_leaves_the_number_suppressed(
    store: SuppressionStore,
) -> None:
    created = await store.create_list(TENANT, "order", [], 0, "")
    list_id = created.list_id
    await store.upsert_entries(
        TENANT, list_id, [EntryRow("phone", "+14155550161", [], None, False, UNDELETABLE)]
    )
    assert await _suppressed(store, list_id, "+14155550161")

    with pytest.raises(asyncpg.RaiseError):
        await store.delete_entries(TENANT, list_id, {"phone": ["+14155550161"]})
    assert [e.target for e in await store.list_entries(TENANT, list_id, (0, ""), 10, False)] == [
        "+14155550161"
    ]
    assert await _suppressed(store, list_id, "+14155550161")

    # The list itself: its deletion cascades to the entry, and its commit fails alike.
    with pytest.raises(asyncpg.RaiseError):
        await store.delete_list(TENANT, list_id)
    assert list_id in await store.mirror.lists(TENANT)
    assert await _suppressed(store, list_id, "+14155550161")


async def test_a_full_load_that_fails_to_commit_leaves_the_mirror_as_postgres_kept_it(
    store: SuppressionStore,
) -> None:
    list_id = (await store.create_list(TENANT, "registry", [], 0, "")).list_id
    await store.upsert_entries(
        TENANT, list_id, [EntryRow("phone", "+14155550162", [], None, False, "registry")]
    )

    async def new_file() -> AsyncIterator[list[str]]:
        yield ["+14155550163"]

    # The staged list is swapped in before the commit, which then fails.
    with pytest.raises(asyncpg.RaiseError):
        await store.replace_all(TENANT, list_id, "phone", new_file(), UNINSERTABLE)
    assert await _suppressed(store, list_id, "+14155550162")
    assert not await _suppressed(store, list_id, "+14155550163")


async def _registry_list(store: SuppressionStore, name: str, number: str) -> str:
    list_id = (await store.create_list(TENANT, name, [], 0, "")).list_id
    await store.upsert_entries(
        TENANT, list_id, [EntryRow("phone", number, [], None, False, "registry")]
    )
    return list_id


async def test_a_full_load_cancelled_between_its_swap_and_its_commit_is_undone_by_the_keeper(
    store: SuppressionStore,
) -> None:
    list_id = await _registry_list(store, "cancelled registry", "+14155550164")

    async def new_file() -> AsyncIterator[list[str]]:
        yield ["+14155550165"]

    load = asyncio.create_task(store.replace_all(TENANT, list_id, "phone", new_file(), SLOW))
    for _ in range(1000):  # until swapped in: the commit then waits
        if await _suppressed(store, list_id, "+14155550165"):
            break
        await asyncio.sleep(0.01)
    assert await _suppressed(store, list_id, "+14155550165")
    load.cancel()  # a client gone, a replica shutting down
    with pytest.raises(asyncio.CancelledError):
        await load
    # Postgres kept the old list; the mirror holds the new one until a keeper's check.
    assert [e.target for e in await store.list_entries(TENANT, list_id, (0, ""), 10, False)] == [
        "+14155550164"
    ]
    assert not await _suppressed(store, list_id, "+14155550164")

    assert await store.repair_abandoned() == 1
    assert await _suppressed(store, list_id, "+14155550164")
    assert not await _suppressed(store, list_id, "+14155550165")
    assert await store.repair_abandoned() == 0  # repaired once


async def test_a_rebuild_whose_process_died_is_redone_once_its_lease_lapses(
    store: SuppressionStore,
) -> None:
    list_id = await _registry_list(store, "half rebuilt", "+14155550166")
    redis = store.mirror._redis
    async with store.mirror.writing(TENANT):
        # A writer at work holds a renewed lease: nothing to repair.
        await asyncio.sleep(0.1)
        assert await store.repair_abandoned() == 0
    # What a rebuild whose process died leaves: readers told the tenant is unavailable, a
    # list half gone, and the writer's lapsed lease.
    await redis.set(rebuilding_key(TENANT), "1")
    await redis.delete(list_key(TENANT, list_id, "phone"))
    await redis.zadd(WRITERS_KEY, {f"{TENANT}|died": 1})

    assert await store.repair_abandoned() == 1
    assert await _suppressed(store, list_id, "+14155550166")
    assert not await redis.exists(rebuilding_key(TENANT))
    assert await redis.zcard(WRITERS_KEY) == 0
