"""The echo RPC: the cost of the mesh itself, and a probe for tests."""

from __future__ import annotations

import asyncio

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh_server.runtime.context import GrpcContext, current_tenant
from cxmesh_server.runtime.errors import Validator

MAX_DELAY_SECONDS = 30.0


class EchoHandlers(echo_service_pb2_grpc.EchoServiceServicer):
    async def Echo(
        self, request: echo_service_pb2.EchoRequest, context: GrpcContext
    ) -> echo_service_pb2.EchoResponse:
        delay = request.delay.ToTimedelta().total_seconds()
        check = Validator()
        check.require(0 < len(request.message) <= 4096, "message", "must be 1-4096 characters")
        check.require(0 <= delay <= MAX_DELAY_SECONDS, "delay", "must be between 0 and 30 s")
        check.check()
        if delay:
            await asyncio.sleep(delay)
        return echo_service_pb2.EchoResponse(message=request.message, tenant=current_tenant())
