"""When what Redis holds, or the time decisions are made for, cannot be trusted: decisions
deny and health says NOT_SERVING for as long as `data_risk` names a reason."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from cxmesh_server.runtime.redis import MAX_CLOCK_OFFSET_SECONDS, create_redis, data_risk
from cxmesh_server.stack.datastores import EmbeddedRedis


@pytest.fixture
async def redis(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(own_redis.url)
    yield client
    await client.config_set("maxmemory", 0)
    await client.config_set("maxmemory-policy", "noeviction")
    await client.aclose()


async def test_a_redis_that_keeps_every_write_and_agrees_on_the_time_is_trusted(
    redis: Redis,
) -> None:
    assert await data_risk(redis) == ""


async def test_a_redis_that_may_evict_keys_is_not_trusted(redis: Redis) -> None:
    await redis.config_set("maxmemory-policy", "volatile-lru")
    assert "maxmemory-policy volatile-lru" in await data_risk(redis)


async def test_a_full_redis_is_not_trusted_until_it_has_room(redis: Redis) -> None:
    await redis.config_set("maxmemory", 1)
    assert "Redis is full" in await data_risk(redis)
    await redis.config_set("maxmemory", 0)
    assert await data_risk(redis) == ""


async def test_a_clock_minutes_from_redis_is_not_trusted_whichever_is_wrong(
    redis: Redis,
) -> None:
    for offset in (120.0, -120.0, 3600.0):
        reason = await data_risk(redis, clock=_clock_off_by(offset))
        assert f"{offset:+.0f}" in reason and "clock" in reason, reason
    # Within the bound: hosts kept by NTP, or a clock a little off, still decide.
    assert await data_risk(redis, clock=_clock_off_by(MAX_CLOCK_OFFSET_SECONDS - 1)) == ""


def _clock_off_by(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds
