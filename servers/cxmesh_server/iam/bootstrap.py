"""Composition root of the IAM process (which also serves diagnostics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cxmesh.diagnostics.v1 import echo_service_pb2_grpc
from cxmesh.iam.v1 import api_key_service_pb2_grpc, tenant_service_pb2_grpc
from cxmesh_server.diagnostics.handlers import EchoHandlers
from cxmesh_server.iam.handlers import ApiKeyHandlers, TenantHandlers
from cxmesh_server.iam.store import IamStore
from cxmesh_server.runtime.accept_loops import Registration
from cxmesh_server.runtime.mirror_keeper import keep_loaded
from cxmesh_server.runtime.server import Resources, ServiceProcess, start_background

log = logging.getLogger(__name__)


def _store(resources: Resources) -> IamStore:
    return IamStore(resources.require_postgres(), resources.require_redis())


async def build(resources: Resources) -> Sequence[Registration]:
    store = _store(resources)
    return [
        (tenant_service_pb2_grpc.add_TenantServiceServicer_to_server, TenantHandlers(store)),
        (api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server, ApiKeyHandlers(store)),
        (echo_service_pb2_grpc.add_EchoServiceServicer_to_server, EchoHandlers()),
    ]


# How often IAM checks that Redis still holds the API key mirror.
MIRROR_CHECK_SECONDS = 2.0


async def _rebuild(store: IamStore) -> None:
    count = await store.rebuild_mirror()
    log.info("api key mirror rebuilt", extra={"active_keys": count})


async def rebuild_api_key_mirror(resources: Resources) -> None:
    store = _store(resources)
    await _rebuild(store)
    # Without the mirror every API key is refused: a dialer's validations would answer 401.
    start_background(
        keep_loaded("api keys", store.mirror_loaded, lambda: _rebuild(store), MIRROR_CHECK_SECONDS)
    )


PROCESS = ServiceProcess(
    name="iam",
    build=build,
    migrations=[("iam", Path(__file__).parent / "migrations")],
    on_start=rebuild_api_key_mirror,
)
