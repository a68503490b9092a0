"""Group commit for reads: concurrent callers of one tenant share one Redis read.

While a read is in flight, the requests that arrive wait for it and then go together in
the next one (up to `max_batch`), so under load a round trip is paid once per batch
rather than once per call, and a lone caller waits for nothing: it reads in its own task.

A read in flight is not enough under gRPC: its requests reach the handler one by one
(each new call is a trip through grpc.aio's poller thread), so reads rarely overlap an
arrival and batches stay at one request (measured: 1.02 requests per read at 1,600
calls/s). So when the event loop is saturated (`LoopLoad`) and a key's callers arrive
more often than once per `max_linger`, a batch of fewer than `batch_target` requests
waits up to `max_linger` for the callers about to arrive (group commit).

Bigger batches cost the loop less per call than the read they share explains (in-process,
a read of 1 to 16 requests costs about the same: 55-105 µs on a noisy machine); our
reading is that their answers leave together, so grpc.aio wakes the loop and writes to
its connections once for many. Measured while profiling (h2load -c4 -m16 against one
process beside the others, 2 cores; not `make bench` figures), the loop thread per call
at saturation: 167-182 µs with a target of 4, 114-140 µs with 12, the bare echo's ~100
µs; throughput 0.59-0.70x the bare echo measured just before with 4 (seven runs),
0.69-0.89x with 16 (eight runs). Targets of 32 and 64 did no better (0.60-0.92x, seven
runs): with 64 callers in flight, the loop idled while a batch gathered. Behind Envoy
callers arrive slower (~1,500/s from 16 connections on a slow machine), and a batch
waits out the 2 ms.

Below saturation a 2 ms wait costs more latency than it saves CPU (profiling runs at half
that rate, evenly paced, linger forced on vs off: 0.71-0.77 vs 0.77-0.81 of the loop
thread, p50 2.0-2.6 vs 1.1-1.3 ms, p99 8-46 vs 3-7 ms). Reading every call alone is no
better there: at half the saturating rate an unbatched call costs the loop ~260 µs, so it
is ~0.85 busy, and any stutter leaves a backlog it cannot work off (profiling runs on 2
cores, 3,178 paced calls/s: p99 17-80 ms, backlogs of 20-85 ms lasting 0.1-0.5 s). So
while a key's callers arrive more often than once per `steady_linger` (0.5 ms: above
~2,000 calls/s), a batch waits that long for up to `steady_target` (4) requests: a few
calls share a read and the wakeups around it for at most half a millisecond more (same
load, interleaved: p99 2.7, 3.2, 3.9, 17.6 and 33.7 ms with the wait, 17.1-79.8 ms
without; the loop's median demand 0.67 against 0.77). The backlogs that remain near this
load are shorter, not gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cxmesh_server.runtime.loop_load import LoopLoad

Request = TypeVar("Request")
Result = TypeVar("Result")


class Load(Protocol):
    """Whether the loop is saturated (`LoopLoad`), told of every call it is about."""

    def count(self, calls: int = 1) -> None: ...

    def saturated(self) -> bool: ...


@dataclass
class _Batch(Generic[Request, Result]):
    requests: list[Request] = field(default_factory=list)
    # Set when the batch reaches `target` requests while the drain waits for it.
    filled: asyncio.Event | None = None
    target: int = 0
    # (future, how many of `requests` are its own), in arrival order
    callers: list[tuple[asyncio.Future[list[Result]], int]] = field(default_factory=list)


@dataclass
class _Arrivals:
    """When a key's callers last came, and the smoothed time between them."""

    last: float
    gap: float


# Weight of the newest gap in the smoothed gap: steady load is noticed within tens of
# calls, and an idle pause ends lingering at once.
_GAP_WEIGHT = 0.1


class Coalescer(Generic[Request, Result]):
    def __init__(
        self,
        run: Callable[[str, Sequence[Request]], Awaitable[list[Result]]],
        max_batch: int = 1000,
        max_linger: float = 0.002,
        batch_target: int = 16,
        load: Load | None = None,
        steady_linger: float = 0.0005,
        steady_target: int = 4,
    ) -> None:
        self._run = run
        self._load = load or LoopLoad()
        self._max_batch = max_batch
        self._max_linger = max_linger
        self._batch_target = batch_target
        self._steady_linger = steady_linger
        self._steady_target = steady_target
        self._waiting: dict[str, _Batch[Request, Result]] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        # keys whose read runs in a caller's own task (see `submit`)
        self._reading: set[str] = set()
        self._arrivals: dict[str, _Arrivals] = {}

    def wait(self, key: str) -> tuple[float, int]:
        """How long the next batch of `key` waits for more callers, and for how many
        requests: `max_linger` for `batch_target` while the loop is saturated, else
        `steady_linger` for `steady_target`, each only while callers come more often;
        (0, 0) for no wait."""
        arrivals = self._arrivals.get(key)
        gap = float("inf") if arrivals is None else arrivals.gap
        if gap < self._max_linger and self._load.saturated():
            return self._max_linger, self._batch_target
        if gap < self._steady_linger:
            return self._steady_linger, self._steady_target
        return 0.0, 0

    def _arrived(self, key: str) -> None:
        now = asyncio.get_running_loop().time()
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            self._arrivals[key] = _Arrivals(now, float("inf"))
            return
        gap = now - arrivals.last
        arrivals.gap = (
            gap
            if arrivals.gap == float("inf")
            else arrivals.gap + _GAP_WEIGHT * (gap - arrivals.gap)
        )
        arrivals.last = now

    async def submit(self, key: str, requests: Sequence[Request]) -> list[Result]:
        if len(requests) >= self._max_batch:
            return await self._run(key, requests)  # a full batch of its own
        self._arrived(key)
        self._load.count()
        idle = key not in self._draining and key not in self._reading
        if idle and not self.wait(key)[0]:
            return await self._read_alone(key, requests)
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(key, _Batch())
        waiting.requests.extend(requests)
        waiting.callers.append((future, len(requests)))
        if waiting.filled is not None and len(waiting.requests) >= waiting.target:
            waiting.filled.set()
        if idle:
            self._draining[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _read_alone(self, key: str, requests: Sequence[Request]) -> list[Result]:
        """A read in the caller's own task: below saturation most reads are of one caller,
        and a drain task and a future per read cost more than the read's own Python
        (a profiling script deciding one record at a time against real Redis, not `make
        bench`: 150-180 instead of 100-125 µs of CPU per decision). Callers arriving
        meanwhile are read together by a drain task afterwards."""
        self._reading.add(key)
        try:
            return await self._run(key, requests)
        finally:
            self._reading.discard(key)
            if key in self._waiting and key not in self._draining:
                self._draining[key] = asyncio.create_task(self._drain(key))

    async def _drain(self, key: str) -> None:
        try:
            while True:
                waiting = self._waiting.get(key)
                if waiting:
                    linger, target = self.wait(key)
                    if linger:
                        await self._gather(waiting, linger, target)
                if (batch := self._take(key)) is None:
                    break
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

    async def _gather(self, waiting: _Batch[Request, Result], linger: float, target: int) -> None:
        """Waits until the batch has `target` requests or has waited `linger`: callers that
        are already there (the loop was busy) wait for nobody."""
        if len(waiting.requests) >= target:
            return
        waiting.filled, waiting.target = asyncio.Event(), target
        try:
            async with asyncio.timeout(linger):
                await waiting.filled.wait()
        except TimeoutError:
            pass
        finally:
            waiting.filled = None

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
