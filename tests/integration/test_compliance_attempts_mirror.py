"""The attempts mirror in real Redis keeps nothing forever: each attempt's key expires with
the retention, and a device whose attempts have all aged out leaves the attempt index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.engine import TRANSACTION_MAX_ATTEMPT_SETS, DecisionEngine
from cxmesh_server.compliance.mirror import (
    ATTEMPT_RETENTION,
    RecordedAttempt,
    RulesMirror,
    attempt_index_key,
    attempt_key,
    attempts_key,
)
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis
from tests.integration.compliance_mirrors import mark_loaded


def _limit(
    max_attempts: int,
    window: timedelta,
    scope: rule_set_pb2.AttemptScope.ValueType = rule_set_pb2.ATTEMPT_SCOPE_DEVICE,
) -> rule_set_pb2.AttemptRule:
    limit = rule_set_pb2.AttemptRule(max_attempts=max_attempts, scope=scope)
    limit.window.FromTimedelta(window)
    return limit


async def _mirror(
    redis_server: EmbeddedRedis, tenant: str, limit: rule_set_pb2.AttemptRule
) -> tuple[Redis, RulesMirror]:
    """Loaded mirrors whose one rule set allows any hour: only `limit` decides."""
    redis = create_redis(redis_server.url)
    mirror = RulesMirror(redis)
    await mark_loaded(mirror, suppression.SuppressionMirror(redis))
    rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="r", attempt_rules=[limit])
    rules.contact_windows.add().end_time.hours = 24
    await mirror.put(tenant, rules)
    return redis, mirror


def _report(
    attempt_id: str,
    device: str,
    when: datetime,
    client_id: str = "",
    revision: int = 1,
    call_result: call_result_pb2.CallResult.ValueType = call_result_pb2.CALL_RESULT_BUSY,
) -> RecordedAttempt:
    return RecordedAttempt(
        attempt_id=attempt_id,
        devices=(device,),
        client_ids=(client_id,) if client_id else (),
        call_result=call_result,
        channel=channel_pb2.CHANNEL_VOICE,
        attempt_time=when,
        revision=revision,
    )


def _request(address: str, client_id: str = "") -> decision_pb2.DecisionRequest:
    return decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address=address, client_id=client_id, time_zone="UTC")
    )


def _codes(decisions: list[decision_pb2.Decision]) -> list[list[int]]:
    return [[d.code for d in decision.denials] for decision in decisions]


# Decided alone, the two records are read in one MULTI/EXEC; among 40 others, by the script.
@pytest.mark.parametrize("others", [0, 40])
async def test_old_attempts_leave_the_index_and_every_attempt_key_expires(
    redis_server: EmbeddedRedis, others: int
) -> None:
    assert (others + 2 > TRANSACTION_MAX_ATTEMPT_SETS) == bool(others)
    tenant = f"attempts-mirror-{others}"
    redis, mirror = await _mirror(redis_server, tenant, _limit(1, timedelta(days=7)))
    now = datetime.now(UTC)
    await mirror.record_attempts(
        tenant,
        [
            _report("old", "+14155550171", now - timedelta(days=40)),
            _report("new", "+14155550172", now),
        ],
    )
    old_set = attempts_key(tenant, "device", "+14155550171")
    assert await redis.hexists(attempt_index_key(tenant), old_set)
    ttl = await redis.ttl(attempt_key(tenant, "new"))
    assert 0 < ttl <= ATTEMPT_RETENTION.total_seconds()

    wire = WireRedis(redis_server.url)
    engine = DecisionEngine(redis, wire)
    others_numbers = (f"+1415555{n:04d}" for n in range(1000, 1000 + others))
    decisions = await engine.decide(
        tenant,
        [_request(a) for a in ("+14155550171", "+14155550172", *others_numbers)],
        now=now,
    )
    # The old one no longer counts; the others have no attempts.
    assert [d.allowed for d in decisions] == [True, False, *[True] * others]
    assert not await redis.hexists(attempt_index_key(tenant), old_set)
    await wire.close()
    await redis.aclose()


async def test_two_attempts_in_one_millisecond_count_twice_and_one_on_device_and_client_once(
    redis_server: EmbeddedRedis,
) -> None:
    tenant = "attempts-same-instant"
    limit = _limit(2, timedelta(days=1), rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT)
    redis, mirror = await _mirror(redis_server, tenant, limit)
    now = datetime.now(UTC)
    # A batch from a dialer: every report stamped with the same instant.
    await mirror.record_attempts(
        tenant,
        [
            _report("first", "+14155550181", now),
            _report("second", "+14155550181", now),
            _report("only", "+14155550182", now, client_id="client-182"),
        ],
    )
    wire = WireRedis(redis_server.url)
    decisions = await DecisionEngine(redis, wire).decide(
        tenant,
        [_request("+14155550181"), _request("+14155550182", client_id="client-182")],
        now=now,
    )
    assert _codes(decisions) == [
        [decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT],  # two attempts, though at one instant
        [],  # one attempt, though in the device's history and the client's
    ]
    await wire.close()
    await redis.aclose()


async def test_a_live_decision_counts_an_attempt_stamped_ahead_of_its_clock(
    redis_server: EmbeddedRedis,
) -> None:
    tenant = "attempts-ahead"
    redis, mirror = await _mirror(redis_server, tenant, _limit(1, timedelta(hours=1)))
    # Recorded by a replica whose clock is 30 s ahead of this one's.
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    await mirror.record_attempts(tenant, [_report("ahead", "+14155550191", ahead)])
    wire = WireRedis(redis_server.url)
    engine = DecisionEngine(redis, wire)
    request = _request("+14155550191")
    live = await engine.decide(tenant, [request])
    assert _codes(live) == [[decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT]]
    assert live[0].next_allowed_time.ToDatetime(tzinfo=UTC) <= ahead + timedelta(hours=1)
    # As of an instant before the stamp (an explanation), the attempt is yet to come.
    (before,) = await engine.decide(tenant, [request], now=ahead - timedelta(seconds=1))
    assert before.allowed
    await wire.close()
    await redis.aclose()


async def test_an_older_revision_of_an_attempt_replaces_nothing(
    redis_server: EmbeddedRedis,
) -> None:
    """A rebuild replays a row it read before a later report reached Redis: the later
    report stays."""
    tenant = "attempts-revisions"
    redis, mirror = await _mirror(redis_server, tenant, _limit(1, timedelta(days=1)))
    now = datetime.now(UTC)
    answered = call_result_pb2.CALL_RESULT_ANSWER
    await mirror.record_attempts(
        tenant, [_report("a", "+14155550195", now, revision=7, call_result=answered)]
    )
    await mirror.record_attempts(tenant, [_report("a", "+14155550195", now, revision=6)])
    history = await redis.zrange(attempts_key(tenant, "device", "+14155550195"), 0, -1)
    assert history == [f"a|{answered}|{channel_pb2.CHANNEL_VOICE}"]
    await mirror.record_attempts(tenant, [_report("a", "+14155550195", now, revision=8)])
    history = await redis.zrange(attempts_key(tenant, "device", "+14155550195"), 0, -1)
    assert history == [f"a|{call_result_pb2.CALL_RESULT_BUSY}|{channel_pb2.CHANNEL_VOICE}"]
    await redis.aclose()


async def test_a_thousand_attempts_written_at_once_each_land_in_every_set_they_name(
    redis_server: EmbeddedRedis,
) -> None:
    """A dialer's batch (and a rebuild's chunk) goes in several script runs, with
    attempts naming one set or two."""
    tenant = "attempts-thousand"
    redis, mirror = await _mirror(redis_server, tenant, _limit(1, timedelta(days=1)))
    now = datetime.now(UTC)
    attempts = [
        _report(f"t{n}", f"+1415556{n:04d}", now, client_id=f"c{n}" if n % 3 == 0 else "")
        for n in range(1000)
    ]
    await mirror.record_attempts(tenant, attempts)
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.zcard(attempts_key(tenant, "device", f"+1415556{n:04d}"))
            pipe.zcard(attempts_key(tenant, "client", f"c{n}"))
        cards = await pipe.execute()
    assert cards[0::2] == [1] * 1000
    assert cards[1::2] == [1 if n % 3 == 0 else 0 for n in range(1000)]
    assert await redis.hlen(attempt_index_key(tenant)) == 1000 + 334
    await redis.aclose()
