"""After a Redis failover (a replica promoted, which may lack writes the old master had
acknowledged: a do-not-call entry, a rule change) or a restart, decisions do not trust
the mirrors until they are rebuilt into the new dataset: the loaded markers hold the id of
the dataset they were loaded into (real Redis, a real replica promoted)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxmesh.compliance.v1 import decision_pb2
from cxmesh_server.compliance import engine as engine_module
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis, start_redis
from tests.integration.compliance_mirrors import LoadedMirrors, loaded_mirrors, mark_loaded

TENANT = "failover"
CONTACT = decision_pb2.DecisionRequest(
    contact=decision_pb2.Contact(address="+14155550100", time_zone="America/Denver")
)


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    master = start_redis(tmp_path / "master", persist=False)
    replica = start_redis(tmp_path / "replica", persist=False)
    yield master, replica
    replica.stop()
    master.stop()


async def test_a_promoted_replica_is_not_trusted_until_the_mirrors_are_rebuilt_into_it(
    master_and_replica: tuple[EmbeddedRedis, EmbeddedRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "REDIS_CHECK_SECONDS", 0.0)
    master, replica = master_and_replica
    on_master = await loaded_mirrors(master.url, TENANT)  # marked with the master's id
    (before,) = await on_master.engine().decide(TENANT, [CONTACT])
    assert before.allowed
    replica_redis = create_redis(replica.url)
    await replica_redis.replicaof("127.0.0.1", master.port)
    for _ in range(200):  # until the replica has the master's data, markers included
        if await replica_redis.exists(suppression.LOADED_KEY):
            break
        await asyncio.sleep(0.05)
    await replica_redis.replicaof("NO", "ONE")  # the failover: clients now reach the replica
    on_replica = LoadedMirrors(replica_redis, WireRedis(replica.url), RulesMirror(replica_redis))
    engine = on_replica.engine()
    (after,) = await engine.decide(TENANT, [CONTACT])
    assert [d.code for d in after.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
    assert not await suppression.SuppressionMirror(replica_redis).is_loaded()
    assert not await on_replica.rules.is_loaded()  # so the keepers rebuild both

    await mark_loaded(on_replica.rules, suppression.SuppressionMirror(replica_redis))
    (rebuilt,) = await engine.decide(TENANT, [CONTACT])
    assert rebuilt.allowed
    await on_master.close()
    await on_replica.close()


async def test_a_restarted_redis_with_its_data_is_not_trusted_until_the_mirrors_are_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "REDIS_CHECK_SECONDS", 0.0)
    server = start_redis(tmp_path / "restarted", persist=True)
    mirrors = await loaded_mirrors(server.url, TENANT)
    (before,) = await mirrors.engine().decide(TENANT, [CONTACT])
    assert before.allowed
    await mirrors.redis.save()  # the snapshot a restart reloads, markers included
    await mirrors.close()
    port = server.port
    server.stop()
    server = start_redis(tmp_path / "restarted", port, persist=True)
    redis = create_redis(server.url)
    try:
        assert await redis.exists(suppression.LOADED_KEY)  # the data came back
        assert not await suppression.SuppressionMirror(redis).is_loaded()
    finally:
        await redis.aclose()
        server.stop()


async def test_a_rebuild_that_a_failover_interrupts_leaves_the_new_server_unmarked(
    master_and_replica: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    """Mirrors are marked with the dataset their rebuild began in: part of what it wrote
    went to the old master, so the promoted replica must not read as loaded."""
    master, replica = master_and_replica
    on_master = create_redis(master.url)
    on_replica = create_redis(replica.url)
    for mirror_of in (RulesMirror, suppression.SuppressionMirror):
        began = await mirror_of(on_master).begin_load()  # the rebuild starts on the master
        # ... a failover: the service address now reaches the replica, where it ends.
        await mirror_of(on_replica).mark_loaded(began)
        assert not await mirror_of(on_replica).is_loaded()
        await mark_loaded(mirror_of(on_replica))
        assert await mirror_of(on_replica).is_loaded()  # a rebuild begun there counts
    await on_master.aclose()
    await on_replica.aclose()
