"""Group commit for reads: concurrent callers of one tenant share one Redis read.

While a read is in flight, the requests that arrive wait for it and then go together in
the next one (up to `max_batch`), so under load a round trip is paid once per batch
rather than once per call, and a lone caller waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass
class _Batch(Generic[Request, Result]):
    requests: list[Request] = field(default_factory=list)
    # (future, how many of `requests` are its own), in arrival order
    callers: list[tuple[asyncio.Future[list[Result]], int]] = field(default_factory=list)


class Coalescer(Generic[Request, Result]):
    def __init__(
        self,
        run: Callable[[str, Sequence[Request]], Awaitable[list[Result]]],
        max_batch: int = 1000,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._waiting: dict[str, _Batch[Request, Result]] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}

    async def submit(self, key: str, requests: Sequence[Request]) -> list[Result]:
        if len(requests) >= self._max_batch:
            return await self._run(key, requests)  # a full batch of its own
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(key, _Batch())
        waiting.requests.extend(requests)
        waiting.callers.append((future, len(requests)))
        if key not in self._draining:
            self._draining[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: str) -> None:
        try:
            while (batch := self._take(key)) is not None:
                try:
                    results = await self._run(key, batch.requests)
                except asyncio.CancelledError:
                    for future, _ in batch.callers:
                        future.cancel()
                    raise
                except Exception as error:
                    for future, _ in batch.callers:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for future, count in batch.callers:
                    if not future.done():  # a cancelled caller's answers are dropped
                        future.set_result(results[start : start + count])
                    start += count
        finally:
            del self._draining[key]
            # Only reached with callers still waiting if this task itself was cancelled.
            for future, _ in self._waiting.pop(key, _Batch()).callers:
                if not future.done():
                    future.cancel()

    def _take(self, key: str) -> _Batch[Request, Result] | None:
        """The next batch: whole callers, up to max_batch requests, at least one caller."""
        waiting = self._waiting.get(key)
        if waiting is None or not waiting.callers:
            self._waiting.pop(key, None)
            return None
        batch: _Batch[Request, Result] = _Batch()
        taken = 0
        while waiting.callers:
            future, count = waiting.callers[0]
            if batch.callers and taken + count > self._max_batch:
                break
            waiting.callers.pop(0)
            batch.callers.append((future, count))
            taken += count
        batch.requests = waiting.requests[:taken]
        del waiting.requests[:taken]
        return batch
