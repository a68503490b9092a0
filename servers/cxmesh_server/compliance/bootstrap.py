"""Composition root of the compliance process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from cxmesh.compliance.v1 import decision_service_pb2_grpc, rule_set_service_pb2_grpc
from cxmesh_server.compliance.attempts import AttemptStore
from cxmesh_server.compliance.engine import DecisionEngine, warm_up
from cxmesh_server.compliance.handlers import DecisionHandlers, RuleSetHandlers
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.compliance.store import RuleSetStore
from cxmesh_server.mirrors.suppression import SuppressionMirror
from cxmesh_server.runtime.accept_loops import Registration
from cxmesh_server.runtime.logging import repeating
from cxmesh_server.runtime.redis import data_risk
from cxmesh_server.runtime.server import (
    Resources,
    ServiceProcess,
    start_background,
    start_periodic,
)

log = logging.getLogger(__name__)
MIRROR_CHECK_SECONDS = 1.0
PRUNE_SECONDS = 3600.0


def _store(resources: Resources) -> RuleSetStore:
    mirror = RulesMirror(resources.require_redis())
    pool = resources.require_postgres()
    return RuleSetStore(pool, mirror, AttemptStore(pool, mirror))


async def build(resources: Resources) -> Sequence[Registration]:
    store = _store(resources)
    return [
        (
            rule_set_service_pb2_grpc.add_RuleSetServiceServicer_to_server,
            RuleSetHandlers(store),
        ),
        (
            decision_service_pb2_grpc.add_DecisionServiceServicer_to_server,
            DecisionHandlers(
                DecisionEngine(resources.require_redis(), resources.require_redis_wire()),
                store.attempts,
            ),
        ),
    ]


async def _watch_data(store: RuleSetStore, resources: Resources) -> None:
    """Health follows the data decisions need: NOT_SERVING until the mirrors are first
    loaded, and while Redis is unreachable, a mirror is missing or Redis may evict keys
    (decisions deny meanwhile). The rules are mirrored afresh at the start, and rebuilt
    with the attempts whenever Redis lost them."""
    serving: bool | None = None  # NOT_SERVING until the first check passes
    started = False
    while True:
        reason = ""
        try:
            loaded = started and await store.mirror.is_loaded()
            if not loaded:
                if started and serving:  # said once, not at every turn of a long replay
                    log.warning("rules mirror missing; rebuilding from Postgres")
                    serving = False  # for as long as the replay of attempts takes
                    await resources.report_health(False)
                await store.rebuild_mirror()
                started = True
                # Unmarked still while another replica holds the replay's lock.
                loaded = await store.mirror.is_loaded()
            redis = resources.require_redis()
            if not loaded:
                reason = "the rules and attempts are being rebuilt by another replica"
            elif not await SuppressionMirror(redis).is_loaded():
                reason = "the suppression mirror is not loaded"
            else:
                reason = await data_risk(redis)
        except Exception as error:
            log.warning("compliance data unavailable", exc_info=True, extra=repeating())
            reason = str(error) or type(error).__name__
        if (not reason) != serving:
            serving = not reason
            log.warning("compliance health changed", extra={"serving": serving, "reason": reason})
            await resources.report_health(serving)
        await asyncio.sleep(MIRROR_CHECK_SECONDS)


async def on_start(resources: Resources) -> None:
    warm_up()
    store = _store(resources)
    start_background(_watch_data(store, resources))
    start_periodic("attempts pruned", PRUNE_SECONDS, store.attempts.prune)
    start_periodic(
        "attempt mirror gaps repaired", MIRROR_CHECK_SECONDS, store.attempts.repair_mirror
    )
    start_periodic(
        "attempts counted while Postgres failed stored",
        MIRROR_CHECK_SECONDS,
        store.attempts.store_unstored,
    )


PROCESS = ServiceProcess(
    name="compliance",
    build=build,
    migrations=[("compliance", Path(__file__).parent / "migrations")],
    on_start=on_start,
    reports_readiness=True,
)
