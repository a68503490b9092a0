"""The Redis client and the key layout every service follows.

Keys are `cx:{<tenant>}:<service>:<what>`: the tenant in braces is a Redis Cluster hash tag,
so one tenant's keys live on one shard and multi-key commands work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Redis failures that trying again, later, gets past: the call's answer is UNAVAILABLE.
# A full Redis refuses writes (OutOfMemoryError) until memory is freed or added; a replica
# promoted by mistake, or not yet, refuses them too (ReadOnlyError).
REDIS_OUTAGES = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError, OSError)


class _HiredisPackingConnection(Connection):
    """Commands packed by hiredis in C. redis-py's asyncio connection packs them in Python,
    which dominated the cost of large pipelines (a 1,000-record decision batch sends
    thousands of arguments); its sync connection already uses hiredis."""

    _serializer = HiredisRespSerializer()  # type: ignore[no-untyped-call,unused-ignore]

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


def create_redis(url: str) -> Redis:
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 10}
    if url.startswith("redis://"):  # TLS and Unix sockets keep their own connection classes
        options["connection_class"] = _HiredisPackingConnection
    return Redis.from_url(url, **options)


# How far a replica's clock may be from Redis's before decisions stop trusting either: the
# calling window is decided in minutes, and NTP keeps hosts within milliseconds; beyond
# this a clock has gone wrong, and a contact would be called an hour early or late.
MAX_CLOCK_OFFSET_SECONDS = 5.0


async def data_risk(redis: Redis, clock: Callable[[], float] = time.time) -> str:
    """Why what Redis holds, or the time decisions are made for, may not be right ("" when
    both are safe to trust). Under any policy but `noeviction` a full Redis evicts keys
    silently (volatile-* ones those with a TTL, such as attempt sets); under `noeviction`
    it refuses every write instead. Either way an attempt or a suppression entry goes
    missing: a "dial" that should be "do not". `clock`: this process's wall clock."""
    return (await dataset_and_data_risk(redis, clock))[1]


async def dataset_and_data_risk(
    redis: Redis, clock: Callable[[], float] = time.time
) -> tuple[str, str]:
    """`dataset_id` and `data_risk` in one round trip."""
    sent = clock()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.info("server")
        pipe.info("memory")
        pipe.time()
        server, memory, (seconds, microseconds) = await pipe.execute()
    clock_risk = _clock_risk(sent, clock(), seconds + microseconds / 1e6)
    return _dataset_of(server), _risk_of(memory) or clock_risk


def _clock_risk(sent: float, answered: float, redis_time: float) -> str:
    # Redis read its clock between `sent` and `answered`: the offset is known within half
    # the round trip, which a stalled event loop can make long; only beyond that is it one.
    offset = (sent + answered) / 2 - redis_time
    if abs(offset) - (answered - sent) / 2 <= MAX_CLOCK_OFFSET_SECONDS:
        return ""
    return (
        f"this process's clock is {offset:+.1f} s from Redis's (at most "
        f"{MAX_CLOCK_OFFSET_SECONDS:g} s): the local time of a contact cannot be trusted"
    )


def _risk_of(memory: dict[str, Any]) -> str:
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        return f"Redis may evict keys (maxmemory-policy {policy}; it must be noeviction)"
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    # Redis refuses writes once it holds more than maxmemory (less a few buffers it does
    # not count): taken as full a little early, never late.
    if 0 < limit <= used:
        return (
            f"Redis is full ({used:,} bytes used, maxmemory {limit:,}): it refuses writes, "
            "so attempts and suppression entries cannot be recorded"
        )
    return ""


def _dataset_of(server: dict[str, Any]) -> str:
    return str(server.get("run_id", ""))


async def dataset_id(redis: Redis) -> str:
    """Which Redis server is serving the data: its run id, which changes when the server
    restarts and is another server's after a failover, the two ways a Redis comes back
    without writes it had acknowledged (its replication id would also change when a first
    replica attaches). "" where INFO does not say (some proxies)."""
    return _dataset_of(await redis.info("server"))


class LoadedMarker:
    """A mirror's "loaded" key. It holds the id of the dataset the mirror was loaded into:
    after a failover or a restart, the mirror reads as not loaded (decisions deny) until
    it is rebuilt from Postgres, instead of being trusted without the writes lost."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self.key = key

    async def begin(self) -> str:
        """The dataset a load beginning now goes into: pass it to `mark` once loaded."""
        return await dataset_id(self._redis)

    async def mark(self, dataset: str) -> None:
        """Marks the mirror loaded into `dataset`, as `begin` read it before the load: a
        load that a failover interrupted then marks the old dataset, not the new one, which
        it partly missed. No default: the current dataset is the one a load must not take."""
        await self._redis.set(self.key, dataset)

    async def is_set(self) -> bool:
        value = await self._redis.get(self.key)
        return value is not None and value == await dataset_id(self._redis)


def tenant_key(tenant: str, service: str, *parts: str) -> str:
    if not tenant or "}" in tenant:
        raise ValueError("a tenant key needs a tenant id")
    return ":".join(("cx", "{" + tenant + "}", service, *parts))
