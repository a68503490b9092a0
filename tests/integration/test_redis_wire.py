"""The pipelined hot-path Redis connection against a real Redis of its own (these tests
pause and kill clients): many callers share one connection and each gets its own answer;
failures are redis-py's exceptions; it recovers by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, OutOfMemoryError, ResponseError, TimeoutError

from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import Script, WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis
from cxmesh_server.stack.ports import free_port


@pytest.fixture
async def admin(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    redis = create_redis(own_redis.url)
    yield redis
    await redis.aclose()


async def test_concurrent_callers_each_get_their_own_reply(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    await admin.mset({f"wire:{n}": str(n) for n in range(2000)})
    wire = WireRedis(own_redis.url)
    replies = await asyncio.gather(*(wire.execute("GET", f"wire:{n}") for n in range(2000)))
    assert replies == [str(n) for n in range(2000)]
    await wire.close()


async def test_an_error_reply_fails_only_its_own_command(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    await admin.set("wire:text", "x")
    wire = WireRedis(own_redis.url)
    replies: list[object] = await asyncio.gather(
        wire.execute("GET", "wire:text"),
        wire.execute("HGET", "wire:text", "field"),
        wire.execute("STRLEN", "wire:text"),
        return_exceptions=True,
    )
    first, wrong, last = replies
    assert first == "x" and last == 1
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    await wire.close()


async def test_a_script_runs_by_its_digest_and_is_loaded_again_after_a_flush(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    script = Script("return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1]), false}")
    await admin.set("wire:k", "v")
    wire = WireRedis(own_redis.url)
    assert await wire.evalsha(script, ["wire:k"], [7]) == ["wire:k", "7", "v", None]
    await admin.script_flush()
    assert await wire.evalsha(script, ["wire:k"], [8]) == ["wire:k", "8", "v", None]
    await wire.close()


async def test_a_transaction_answers_in_one_reply_among_other_callers(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    await admin.mset({"wire:t1": "1", "wire:t2": "2"})
    wire = WireRedis(own_redis.url)
    before, replies, after = await asyncio.gather(
        wire.execute("GET", "wire:t1"),
        wire.transaction([("GET", "wire:t1"), ("INCR", "wire:t2"), ("HMGET", "wire:no", "f")]),
        wire.execute("GET", "wire:t2"),
    )
    assert (before, replies, after) == ("1", ["1", 3, [None]], "3")
    await wire.close()


async def test_a_refused_transaction_runs_nothing_and_the_connection_stays_in_step(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    await admin.set("wire:kept", "0")
    wire = WireRedis(own_redis.url)
    with pytest.raises(ResponseError, match="EXECABORT"):
        await wire.transaction([("INCR", "wire:kept"), ("GET",)])  # GET without its key
    assert await wire.execute("GET", "wire:kept") == "0"
    # A command that fails while running fails the call; the others ran.
    await admin.set("wire:text", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wire.transaction([("INCR", "wire:kept"), ("HGET", "wire:text", "f")])
    assert await wire.execute("GET", "wire:kept") == "1"
    await wire.close()


async def test_a_full_redis_refuses_writes_with_redis_pys_out_of_memory_error(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    """Callers tell a full Redis (an outage: try again later) from a wrong command."""
    await admin.set("wire:full", "0")
    wire = WireRedis(own_redis.url)
    await admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(OutOfMemoryError):
            await wire.execute("INCR", "wire:full")
        assert await wire.execute("GET", "wire:full") == "0"  # reads go on
    finally:
        await admin.config_set("maxmemory", 0)
    assert await wire.execute("INCR", "wire:full") == 1
    await wire.close()


async def test_a_lost_connection_fails_waiting_commands_and_the_next_one_reconnects(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    wire = WireRedis(own_redis.url, timeout=5)
    waiting = asyncio.ensure_future(wire.execute("BLPOP", "wire:empty", 0))  # never answered
    await asyncio.sleep(0.1)
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # type: ignore[no-untyped-call]
    with pytest.raises(ConnectionError):
        await waiting
    assert await wire.execute("PING") == "PONG"
    await wire.close()


async def test_an_unanswered_command_times_out_and_the_connection_recovers(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    wire = WireRedis(own_redis.url, timeout=0.2)
    assert await wire.execute("PING") == "PONG"
    await admin.execute_command("CLIENT", "PAUSE", 600, "ALL")  # type: ignore[no-untyped-call]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await wire.execute("PING")
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(0.6)
    assert await wire.execute("PING") == "PONG"
    await wire.close()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    wire = WireRedis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(ConnectionError):
        await wire.execute("PING")
    await wire.close()


async def test_the_url_chooses_the_user_password_and_database(
    own_redis: EmbeddedRedis, admin: Redis
) -> None:
    await admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "wire-user", "on", ">wire-secret", "~*", "+@all"
    )
    on_three = create_redis(f"redis://127.0.0.1:{own_redis.port}/3")
    await on_three.set("wire:db", "three")
    wire = WireRedis(f"redis://wire-user:wire-secret@127.0.0.1:{own_redis.port}/3")
    assert await wire.execute("ACL", "WHOAMI") == "wire-user"
    assert await wire.execute("GET", "wire:db") == "three"
    refused = WireRedis(f"redis://wire-user:wrong@127.0.0.1:{own_redis.port}/0")
    with pytest.raises(ResponseError):
        await refused.execute("PING")
    await on_three.aclose()
    await wire.close()
    await refused.close()
