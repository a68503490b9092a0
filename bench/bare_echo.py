"""The bare gRPC echo baseline: grpc.aio with no interceptors, no auth, nothing else."""

from __future__ import annotations

import asyncio
import sys

import grpc

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc


class BareEcho(echo_service_pb2_grpc.EchoServiceServicer):
    async def Echo(
        self, request: echo_service_pb2.EchoRequest, context: object
    ) -> echo_service_pb2.EchoResponse:
        return echo_service_pb2.EchoResponse(message=request.message)


async def main(port: int) -> None:
    server = grpc.aio.server()
    echo_service_pb2_grpc.add_EchoServiceServicer_to_server(BareEcho(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
