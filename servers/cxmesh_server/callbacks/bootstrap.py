"""Composition root of the callbacks process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import httpx

from cxmesh.callbacks.v1 import callback_service_pb2_grpc, engagement_service_pb2_grpc
from cxmesh_server.callbacks.captcha import CaptchaVerifier
from cxmesh_server.callbacks.engagement import EngagementHandlers
from cxmesh_server.callbacks.handlers import (
    CallbackConfigHandlers,
    CallbackHandlers,
    RoutingHandlers,
)
from cxmesh_server.callbacks.metrics import QUEUED
from cxmesh_server.callbacks.push import PushNotifier
from cxmesh_server.callbacks.settings import CallbackSettings
from cxmesh_server.callbacks.store import CallbackStore, queue_lengths, run_due_transitions
from cxmesh_server.callbacks.usecases import Callbacks
from cxmesh_server.mirrors.tenant_regions import TenantRegions
from cxmesh_server.runtime.accept_loops import Registration
from cxmesh_server.runtime.logging import repeating
from cxmesh_server.runtime.server import Resources, ServiceProcess, start_background

log = logging.getLogger(__name__)
# How often due callbacks are queued, expired leases returned and TTLs enforced: a callback
# is queued at most this long after its time.
DISPATCH_SECONDS = 1.0
# The queue-length metric is refreshed every this many turns.
QUEUE_METRIC_TURNS = 5


async def build(resources: Resources) -> Sequence[Registration]:
    """The handlers and the background tasks (dispatch, push) share one Callbacks."""
    settings = CallbackSettings()
    client = httpx.AsyncClient(timeout=settings.http_timeout_seconds)
    callbacks = Callbacks(
        CallbackStore(resources.require_postgres()),
        captcha=CaptchaVerifier(settings, client),
        push=PushNotifier(settings, client),
        regions=TenantRegions(resources.require_redis()),
    )
    start_background(_dispatch(resources, callbacks))
    if callbacks.push is not None and callbacks.push.enabled:
        start_background(callbacks.push.run())
    return [
        (
            callback_service_pb2_grpc.add_CallbackServiceServicer_to_server,
            CallbackHandlers(callbacks),
        ),
        (
            callback_service_pb2_grpc.add_CallbackConfigServiceServicer_to_server,
            CallbackConfigHandlers(callbacks),
        ),
        (
            callback_service_pb2_grpc.add_RoutingServiceServicer_to_server,
            RoutingHandlers(callbacks),
        ),
        (
            engagement_service_pb2_grpc.add_EngagementServiceServicer_to_server,
            EngagementHandlers(callbacks),
        ),
    ]


async def _dispatch(resources: Resources, callbacks: Callbacks) -> None:
    """Every replica runs this; each callback moves once (see the migration's functions)."""
    pool = resources.require_postgres()
    turns = 0
    while True:
        try:
            moved = await run_due_transitions(pool)
            if any(moved.values()):
                log.info("callbacks moved", extra={k: len(v) for k, v in moved.items()})
                await callbacks.announce_moved([row for rows in moved.values() for row in rows])
            if turns % QUEUE_METRIC_TURNS == 0:
                for row in await queue_lengths(pool):
                    QUEUED.labels(row["tenant_id"], row["queue_id"]).set(row["queued"])
        except Exception:
            log.warning("callback dispatch failed; retrying", exc_info=True, extra=repeating())
        turns += 1
        await asyncio.sleep(DISPATCH_SECONDS)


PROCESS = ServiceProcess(
    name="callbacks",
    build=build,
    migrations=[("callbacks", Path(__file__).parent / "migrations")],
)
