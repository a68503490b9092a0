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
from cxmesh_server.runtime.server import Resources, ServiceProcess

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


async def rebuild_api_key_mirror(resources: Resources) -> None:
    count = await _store(resources).rebuild_mirror()
    log.info("api key mirror rebuilt", extra={"active_keys": count})


PROCESS = ServiceProcess(
    name="iam",
    build=build,
    migrations=[("iam", Path(__file__).parent / "migrations")],
    on_start=rebuild_api_key_mirror,
)
