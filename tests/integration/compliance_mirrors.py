"""Compliance's Redis mirrors as the lists service and compliance's own store leave them,
for tests that decide against real Redis without the services."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import pytest
from redis.asyncio import Redis

from cxmesh.compliance.v1 import rule_set_pb2
from cxmesh_server.compliance.attempts import AttemptReport, AttemptStore
from cxmesh_server.compliance.bootstrap import PROCESS as COMPLIANCE
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.errors import Unavailable
from cxmesh_server.runtime.migrations import migrate
from cxmesh_server.runtime.postgres import create_pool
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.ports import free_port


@dataclass
class LoadedMirrors:
    redis: Redis
    wire: WireRedis
    rules: RulesMirror

    def engine(self) -> DecisionEngine:
        return DecisionEngine(self.redis, self.wire)

    async def close(self) -> None:
        await self.wire.close()
        await self.redis.aclose()


class _Loadable(Protocol):
    async def begin_load(self) -> str: ...
    async def mark_loaded(self, dataset: str) -> None: ...


async def mark_loaded(*mirrors: _Loadable) -> None:
    """What a finished rebuild leaves: each mirror marked loaded into the current dataset."""
    for mirror in mirrors:
        await mirror.mark_loaded(await mirror.begin_load())


async def loaded_mirrors(url: str, tenant: str, *limits: rule_set_pb2.AttemptRule) -> LoadedMirrors:
    """Both mirrors marked loaded, and one rule set of the tenant that allows any hour,
    limited by `limits`."""
    redis = create_redis(url)
    mirror = RulesMirror(redis)
    await mark_loaded(mirror, suppression.SuppressionMirror(redis))
    rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="r", attempt_rules=limits)
    rules.contact_windows.add().end_time.hours = 24
    await mirror.put(tenant, rules)
    return LoadedMirrors(redis, WireRedis(url), mirror)


async def record_without_postgres(
    mirror: RulesMirror, tenant: str, reports: Sequence[AttemptReport]
) -> None:
    """Records the reports as a replica cut off from Postgres does: UNAVAILABLE."""
    # Nothing listens there: every connection is refused.
    unreachable = await asyncpg.create_pool(
        f"postgresql://cxmesh@127.0.0.1:{free_port()}/x", min_size=0
    )
    try:
        with pytest.raises(Unavailable):
            await AttemptStore(unreachable, mirror).record(tenant, reports)
    finally:
        await unreachable.close()


async def compliance_pool(dsn: str) -> asyncpg.Pool:
    """A pool on a database with compliance's tables."""
    for schema, folder in COMPLIANCE.migrations:
        await migrate(dsn, schema, folder)
    return await create_pool(dsn)
