"""A pipelined Redis connection for the hot paths, packed and parsed by hiredis.

redis-py spends ~0.15 ms of Python per command (pool, retries, timeouts, parser layers;
py-spy), which was most of a pre-dial decision's cost. Here every caller writes its command at once
on one shared connection and waits for its reply; Redis answers a connection's commands in
order, so replies are matched to callers first in, first out.

Failures are redis-py's exceptions, so callers handle them as before: a lost connection
fails every waiting command with ConnectionError and the next command reconnects; a
command unanswered after `timeout` seconds fails with TimeoutError and drops the
connection (the replies after it could no longer be matched).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from typing import Any, cast
from urllib.parse import urlparse

import hiredis
from redis.connection import parse_url
from redis.exceptions import (
    ConnectionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        # (reply future, deadline) of every command written and not yet answered; no
        # future for a reply nobody reads (MULTI's OK, each QUEUED: EXEC reports for them)
        self._waiting: deque[tuple[asyncio.Future[Any] | None, float]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, args: tuple[Any, ...], deadline: float) -> asyncio.Future[Any]:
        return self._write(hiredis.pack_command(args), 0, deadline)

    def send_transaction(
        self, commands: list[tuple[Any, ...]], deadline: float
    ) -> asyncio.Future[Any]:
        """MULTI, the commands, EXEC in one write; the future gets EXEC's reply."""
        packed = b"".join([_MULTI, *(hiredis.pack_command(c) for c in commands), _EXEC])
        return self._write(packed, 1 + len(commands), deadline)

    def _write(self, packed: bytes, unread: int, deadline: float) -> asyncio.Future[Any]:
        """Writes commands whose replies are `unread` ones and then the future's."""
        assert self._transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.extend((None, deadline) for _ in range(unread))
        self._waiting.append((future, deadline))
        self._transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as error:
                self.abort(ConnectionError(f"Redis protocol error: {error}"))
                return
            if reply is False:
                return
            future, _ = self._waiting.popleft()
            if future is None or future.done():  # unread, or its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_specific(reply))
            else:
                future.set_result(reply)

    def overdue(self, now: float) -> bool:
        return bool(self._waiting) and self._waiting[0][1] < now

    def abort(self, error: Exception) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to Redis lost: {exc}" if exc else "closed"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self._waiting:
            future, _ = self._waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(error)


_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))


# The errors redis-py raises as classes of their own that callers here tell apart: a
# script to load again, and a Redis that refuses writes (full, or a replica).
_SPECIFIC_ERRORS: dict[str, type[ResponseError]] = {
    "NOSCRIPT": NoScriptError,
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
}


def _specific(error: ResponseError) -> ResponseError:
    specific = _SPECIFIC_ERRORS.get(str(error).split(" ", 1)[0])
    return error if specific is None else specific(str(error))


class WireRedis:
    """One pipelined connection to the Redis at `url` (redis://, rediss://, unix://)."""

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        self._url = url
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._tls = urlparse(url).scheme == "rediss"
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *args: Any) -> Any:
        protocol = await self._connected()
        return await protocol.send(args, time.monotonic() + self._timeout)

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands' replies, run atomically (MULTI/EXEC) in one round trip. A command
        Redis refuses fails the whole transaction, one that fails running fails the call
        (the others ran)."""
        protocol = await self._connected()
        replies: list[Any] = await protocol.send_transaction(
            commands, time.monotonic() + self._timeout
        )
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise _specific(reply)
        return replies

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or flushed its scripts: load it again, once.
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._protocol is not None:
            self._protocol.abort(ConnectionError("closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return protocol

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol  # another caller connected meanwhile
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    if "path" in self._options:
                        _, protocol = await loop.create_unix_connection(
                            _Protocol, self._options["path"]
                        )
                    else:
                        _, protocol = await loop.create_connection(
                            _Protocol,
                            self._options.get("host", "localhost"),
                            self._options.get("port", 6379),
                            ssl=ssl.create_default_context() if self._tls else None,
                        )
            except OSError as error:  # the builtin TimeoutError included
                raise ConnectionError(f"cannot connect to Redis: {error}") from error
            deadline = time.monotonic() + self._timeout
            try:
                # Not yet watched by the watchdog: these two carry their own timeout.
                async with asyncio.timeout(self._timeout):
                    if self._options.get("password"):
                        credentials = [self._options.get("username"), self._options["password"]]
                        await protocol.send(("AUTH", *[c for c in credentials if c]), deadline)
                    if self._options.get("db"):
                        await protocol.send(("SELECT", self._options["db"]), deadline)
            except Exception as error:
                protocol.abort(ConnectionError(f"Redis refused the connection: {error}"))
                raise
            self._protocol = protocol
            if self._watchdog is None:
                self._watch()
            return protocol

    def _watch(self) -> None:
        """Every tenth of a second: a command past its deadline drops the connection."""
        protocol = self._protocol
        if protocol is not None and not protocol.closed and protocol.overdue(time.monotonic()):
            protocol.abort(TimeoutError(f"Redis did not answer within {self._timeout} s"))
        self._watchdog = asyncio.get_running_loop().call_later(0.1, self._watch)


class Script:
    """A Lua script run by its SHA-1 (loaded again when Redis has lost it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
