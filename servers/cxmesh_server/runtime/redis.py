"""The Redis client and the key layout every service follows.

Keys are `cx:{<tenant>}:<service>:<what>`: the tenant in braces is a Redis Cluster hash tag,
so one tenant's keys live on one shard and multi-key commands work.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer


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


async def eviction_risk(redis: Redis) -> str:
    """Why Redis may drop keys on its own ("" when it may not). Under any policy but
    `noeviction` a full Redis evicts keys silently (volatile-* ones those with a TTL, such
    as attempt sets): a suppression entry or an attempt gone is a "dial" that should have
    been "do not"."""
    policy = str((await redis.info("memory")).get("maxmemory_policy", "noeviction"))
    if policy == "noeviction":
        return ""
    return f"Redis may evict keys (maxmemory-policy {policy}; it must be noeviction)"


def tenant_key(tenant: str, service: str, *parts: str) -> str:
    if not tenant or "}" in tenant:
        raise ValueError("a tenant key needs a tenant id")
    return ":".join(("cx", "{" + tenant + "}", service, *parts))
