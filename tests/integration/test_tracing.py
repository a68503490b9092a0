"""Trace context crosses every gRPC hop and reaches the logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh_server.runtime.auth import Authenticator, JwtVerifier
from cxmesh_server.runtime.client import service_channel
from cxmesh_server.runtime.context import GrpcContext
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.runtime.interceptor import Runtime, runtime_server
from cxmesh_server.runtime.logging import configure_logging
from cxmesh_server.runtime.settings import AuthSettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Relay(echo_service_pb2_grpc.EchoServiceServicer):
    """Calls the next hop with the caller's credentials and logs on the way."""

    def __init__(self, next_hop: str | None) -> None:
        self.next_hop = next_hop
        self.seen_traceparent: str | None = None

    async def Echo(
        self, request: echo_service_pb2.EchoRequest, context: GrpcContext
    ) -> echo_service_pb2.EchoResponse:
        metadata = dict(context.invocation_metadata() or ())
        self.seen_traceparent = metadata.get("traceparent")
        logging.getLogger("relay").info("relaying")
        if self.next_hop is None:
            return echo_service_pb2.EchoResponse(message=request.message)
        async with service_channel(self.next_hop) as channel:
            return await echo_service_pb2_grpc.EchoServiceStub(channel).Echo(
                request, metadata=(("authorization", metadata["authorization"]),)
            )


@pytest.fixture
async def two_hops(
    signing_key: tuple[SigningKey, object],
) -> AsyncIterator[tuple[str, Relay, Relay]]:
    verifier = JwtVerifier(AuthSettings(jwks_file=signing_key[1]))
    servers, relays, target = [], [], None
    for _ in range(2):
        relay = Relay(target)
        server = grpc.aio.server()
        runtime = runtime_server(server, Runtime(Authenticator(verifier, None)))
        echo_service_pb2_grpc.add_EchoServiceServicer_to_server(relay, runtime)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        relays.append(relay)
        target = f"127.0.0.1:{port}"
    assert target is not None
    yield target, relays[1], relays[0]
    for server in servers:
        await server.stop(0)


async def test_trace_context_crosses_a_hop_and_reaches_the_logs(
    two_hops: tuple[str, Relay, Relay], key: SigningKey
) -> None:
    entry, first, second = two_hops
    stream = io.StringIO()
    configure_logging("test")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(entry) as channel:
        response = await echo_service_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_service_pb2.EchoRequest(message="traced"),
            metadata=(
                ("authorization", f"Bearer {key.mint(tenant='acme', roles=['viewer'])}"),
                ("traceparent", INCOMING),
            ),
        )
    assert response.message == "traced"
    assert first.seen_traceparent == INCOMING
    assert second.seen_traceparent is not None and TRACE_ID in second.seen_traceparent
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    relayed = [r for r in records if r["message"] == "relaying"]
    assert len(relayed) == 2
    assert all(r["trace_id"] == TRACE_ID for r in relayed)
