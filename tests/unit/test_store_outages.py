"""Which failures are a store's outage, answered UNAVAILABLE (try again later), and which
are faults that no retry gets past, answered INTERNAL or handled where they happen."""

from __future__ import annotations

import socket

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from cxmesh_server.runtime.interceptor import _outage


def test_the_runtime_answers_a_store_outage_unavailable_and_a_fault_internal() -> None:
    for outage in (
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        ReadOnlyError("You can't write against a read only replica."),
        RedisConnectionError("connection to Redis lost"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
        socket.gaierror(-2, "Name or service not known"),
    ):
        assert _outage(outage), outage
    for fault in (
        FileNotFoundError("exports/list.csv"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        # What asyncpg raises for fetch("SELECT $1::int", "x"), before sending anything.
        asyncpg.DataError("invalid input for query argument $1: 'x'"),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        KeyError("tenant"),
    ):
        assert not _outage(fault), fault
