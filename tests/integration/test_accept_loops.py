"""Several gRPC servers on one port: each takes calls on its own accept loop, all serve the
same handlers, and a single process still refuses a port someone else holds."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cxmesh_server.runtime.accept_loops import PortTaken, Registration, start_servers
from cxmesh_server.runtime.auth import Authenticator
from cxmesh_server.runtime.interceptor import Runtime
from cxmesh_server.stack.ports import free_port


def _counted_health(calls_per_server: list[int]) -> Registration:
    """A health service per server that counts the checks that server answered."""

    def add(_: Any, server: grpc.aio.Server) -> None:
        index = len(calls_per_server)
        calls_per_server.append(0)

        class Counted(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
            async def Check(self, request: Any, context: Any) -> Any:
                calls_per_server[index] += 1
                return await super().Check(request, context)

        health_pb2_grpc.add_HealthServicer_to_server(Counted(), server)

    return (add, None)


async def _start(
    port: int, count: int, registrations: Sequence[Registration], *, shared: bool = False
) -> tuple[list[grpc.aio.Server], int]:
    return await start_servers(
        host="127.0.0.1",
        port=port,
        count=count,
        shared_with_other_processes=shared,
        runtime=Runtime(Authenticator(None, None)),
        registrations=registrations,
        max_request_bytes=1024 * 1024,
    )


async def _check_on_own_connection(port: int) -> None:
    # A channel of its own subchannel pool opens its own connection.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def stopped_afterwards() -> AsyncIterator[list[grpc.aio.Server]]:
    servers: list[grpc.aio.Server] = []
    yield servers
    await asyncio.gather(*(server.stop(None) for server in servers))


async def test_connections_are_spread_over_every_accept_loop_and_all_are_answered(
    stopped_afterwards: list[grpc.aio.Server],
) -> None:
    calls_per_server: list[int] = []
    servers, port = await _start(free_port(), 4, [_counted_health(calls_per_server)])
    stopped_afterwards.extend(servers)

    await asyncio.gather(*(_check_on_own_connection(port) for _ in range(32)))

    assert len(servers) == 4 and len(calls_per_server) == 4
    assert sum(calls_per_server) == 32
    # The kernel hashes each connection to one listener: 32 all on one of 4 is ~1e-19.
    assert sum(1 for calls in calls_per_server if calls) >= 2


async def test_the_port_chosen_for_the_first_server_is_the_one_all_share(
    stopped_afterwards: list[grpc.aio.Server],
) -> None:
    calls_per_server: list[int] = []
    servers, port = await _start(0, 3, [_counted_health(calls_per_server)])
    stopped_afterwards.extend(servers)

    assert port > 0
    await asyncio.gather(*(_check_on_own_connection(port) for _ in range(24)))
    assert sum(calls_per_server) == 24


async def test_a_single_process_refuses_a_port_something_else_listens_on() -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        with pytest.raises(PortTaken, match=str(port)):
            await _start(port, 4, [])


async def test_a_single_process_refuses_a_port_another_one_shares_with_its_workers(
    stopped_afterwards: list[grpc.aio.Server],
) -> None:
    port = free_port()
    workers, _ = await _start(port, 2, [], shared=True)
    stopped_afterwards.extend(workers)

    with pytest.raises(PortTaken):
        await _start(port, 4, [])


async def test_worker_processes_join_the_port_their_siblings_listen_on(
    stopped_afterwards: list[grpc.aio.Server],
) -> None:
    calls_per_server: list[int] = []
    port = free_port()
    first, _ = await _start(port, 2, [_counted_health(calls_per_server)], shared=True)
    second, _ = await _start(port, 2, [_counted_health(calls_per_server)], shared=True)
    stopped_afterwards.extend([*first, *second])

    await asyncio.gather(*(_check_on_own_connection(port) for _ in range(32)))
    assert sum(calls_per_server) == 32
