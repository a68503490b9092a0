"""The Redis client and the key layout every service follows.

Keys are `cx:{<tenant>}:<service>:<what>`: the tenant in braces is a Redis Cluster hash tag,
so one tenant's keys live on one shard and multi-key commands work.
"""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True, health_check_interval=10)


def tenant_key(tenant: str, service: str, *parts: str) -> str:
    if not tenant or "}" in tenant:
        raise ValueError("a tenant key needs a tenant id")
    return ":".join(("cx", "{" + tenant + "}", service, *parts))
