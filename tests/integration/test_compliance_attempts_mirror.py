"""The attempts mirror in real Redis keeps nothing forever: each attempt's key expires with
the retention, and a device whose attempts have all aged out leaves the attempt index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.mirror import (
    ATTEMPT_RETENTION,
    LOADED_KEY,
    RulesMirror,
    attempt_index_key,
    attempt_key,
    attempts_key,
)
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis

TENANT = "attempts-mirror"


async def test_old_attempts_leave_the_index_and_every_attempt_key_expires(
    redis_server: EmbeddedRedis,
) -> None:
    redis = create_redis(redis_server.url)
    mirror = RulesMirror(redis)
    await redis.set(LOADED_KEY, "1")
    await redis.set(suppression.LOADED_KEY, "1")
    rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="r")
    rules.contact_windows.add().end_time.hours = 24  # any hour: only attempts decide
    rules.attempt_rules.add(max_attempts=1).window.FromTimedelta(timedelta(days=7))
    await mirror.put(TENANT, rules)
    now = datetime.now(UTC)
    for attempt_id, when in (("old", now - timedelta(days=40)), ("new", now)):
        await mirror.record_attempt(
            TENANT,
            attempt_id,
            ["+14155550171" if attempt_id == "old" else "+14155550172"],
            "",
            call_result_pb2.CALL_RESULT_BUSY,
            channel_pb2.CHANNEL_VOICE,
            when,
        )
    old_set = attempts_key(TENANT, "device", "+14155550171")
    assert await redis.hexists(attempt_index_key(TENANT), old_set)
    ttl = await redis.ttl(attempt_key(TENANT, "new"))
    assert 0 < ttl <= ATTEMPT_RETENTION.total_seconds()

    wire = WireRedis(redis_server.url)
    engine = DecisionEngine(redis, wire)
    decisions = await engine.decide(
        TENANT,
        [
            decision_pb2.DecisionRequest(
                contact=decision_pb2.Contact(address=address, time_zone="UTC")
            )
            for address in ("+14155550171", "+14155550172")
        ],
        now=now,
    )
    assert [d.allowed for d in decisions] == [True, False]  # the old one no longer counts
    assert not await redis.hexists(attempt_index_key(TENANT), old_set)
    await wire.close()
    await redis.aclose()
