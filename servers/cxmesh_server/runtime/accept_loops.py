"""Several grpc.aio servers on one port and one event loop, each with its own accept loop.

A grpc.aio server takes its calls one at a time: its main loop keeps one request for a
new call outstanding per method, and each call it takes is a trip through grpc's poller
thread and a few turns of the event loop before the next can be taken. While calls come
evenly that trip is idle time; after any stall (the host, a collection, a burst) the calls
that came meanwhile queue in gRPC core, before any handler, and leave no faster than that
trip allows. Profiling the compliance process at 3,000 paced calls/s on 2 cores: after an
80 ms stop, 336 calls waited on the client's side while 2-4 were in handlers, and the
backlog took 120-290 ms to clear.

Servers sharing the port (SO_REUSEPORT: the kernel spreads connections among them) take
calls side by side, on the same loop, with the same handlers. Interleaved profiling runs
(not `make bench`), one server against four: after 80 ms stops at 2,500 paced calls/s the
backlogs cleared in 120-290 ms (once 7) against 27-105 ms; the saturating rate was
3,191-5,038 against 4,520-7,280 calls/s (higher with four in 7 of 8 pairs, equal in one);
at 2,400 paced calls/s the p99 was 13.7-355 against 5.8-8.7 ms. `make bench` takes the
half-load p99 of both in the same turns; on 2026-12-03, one server against four: 79.03,
456.72, 339.78, 337.47 and 16.77 against 32.48, 300.47, 314.00, 76.32 and 21.24 ms (the
last on a quiet host, the others on one stealing up to 6 %); then 114.10, 34.20, 490.60 and
511.56 against 10.96, 7.10, 474.00 and 404.21 ms (the last three with gRPC core's legacy
I/O manager, `grpc_core.py`; 7.10 on a quiet host). Four did better in 8 of 9 runs. A connection belongs to one
server, so a client with one connection gains nothing; dialers and an edge with several
connections do.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from cxmesh_server.runtime.interceptor import Runtime, runtime_server

# Adds a servicer to a server: (add_XServicer_to_server, servicer instance).
Registration = tuple[Callable[[Any, grpc.aio.Server], None], Any]


class PortTaken(RuntimeError):
    pass


def ensure_port_free(host: str, port: int) -> None:
    """Raises PortTaken if something listens on host:port. Servers that share a port
    through SO_REUSEPORT would otherwise also share it with a stranger that set it."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Connections of an earlier process in TIME_WAIT do not make the port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortTaken(f"{host}:{port} is already in use") from error
            raise


async def start_servers(
    *,
    host: str,
    port: int,
    count: int,
    shared_with_other_processes: bool,
    runtime: Runtime,
    registrations: Sequence[Registration],
    max_request_bytes: int,
) -> tuple[list[grpc.aio.Server], int]:
    """`count` started servers listening on host:port, each serving every registration
    wrapped by `runtime`; and the port (the one chosen when `port` is 0)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not shared_with_other_processes:
        ensure_port_free(host, port)
    reuse = shared_with_other_processes or count > 1
    servers: list[grpc.aio.Server] = []
    try:
        for _ in range(count):
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 1 if reuse else 0),
                    ("grpc.max_receive_message_length", max_request_bytes),
                ],
            )
            wrapped = runtime_server(server, runtime)
            for add, servicer in registrations:
                add(servicer, wrapped)
            bound = server.add_insecure_port(f"{host}:{port}")
            if bound == 0:
                raise PortTaken(f"cannot listen on {host}:{port}")
            port = bound  # the others join the port the first one was given
            servers.append(server)
            await server.start()
    except BaseException:
        for server in servers:
            await server.stop(None)
        raise
    return servers, port
