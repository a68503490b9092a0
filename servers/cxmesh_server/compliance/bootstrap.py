"""Composition root of the compliance process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from cxmesh.compliance.v1 import decision_service_pb2_grpc, rule_set_service_pb2_grpc
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.handlers import DecisionHandlers, RuleSetHandlers
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.compliance.store import RuleSetStore
from cxmesh_server.runtime.server import Registration, Resources, ServiceProcess

log = logging.getLogger(__name__)
MIRROR_CHECK_SECONDS = 1.0
_background: set[asyncio.Task[None]] = set()


def _store(resources: Resources) -> RuleSetStore:
    return RuleSetStore(resources.require_postgres(), RulesMirror(resources.require_redis()))


async def build(resources: Resources) -> Sequence[Registration]:
    mirror = RulesMirror(resources.require_redis())
    return [
        (
            rule_set_service_pb2_grpc.add_RuleSetServiceServicer_to_server,
            RuleSetHandlers(_store(resources)),
        ),
        (
            decision_service_pb2_grpc.add_DecisionServiceServicer_to_server,
            DecisionHandlers(DecisionEngine(resources.require_redis(), mirror), mirror),
        ),
    ]


async def _keep_rules_loaded(store: RuleSetStore) -> None:
    """Rebuilds the rules mirror whenever Redis has lost it (decisions deny meanwhile)."""
    while True:
        await asyncio.sleep(MIRROR_CHECK_SECONDS)
        try:
            if not await store.mirror.is_loaded():
                log.warning("rules mirror missing; rebuilding from Postgres")
                await store.rebuild_mirror()
        except Exception:
            log.exception("rules mirror check failed; retrying")


async def on_start(resources: Resources) -> None:
    store = _store(resources)
    await store.rebuild_mirror()
    task = asyncio.create_task(_keep_rules_loaded(store))
    _background.add(task)
    task.add_done_callback(_background.discard)


PROCESS = ServiceProcess(
    name="compliance",
    build=build,
    migrations=[("compliance", Path(__file__).parent / "migrations")],
    on_start=on_start,
)
