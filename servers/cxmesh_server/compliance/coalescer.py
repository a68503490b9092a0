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
while a key's callers arrive more often than once per `steady_gap` (0.5 ms: above ~2,000
calls/s), a batch waits `steady_passes` (2) passes of the event loop before its read: the
calls gRPC has already handed the loop join it, and nobody waits on a timer.

That is what the 0.5 ms timer this replaced did in the services: uvloop's timers count
whole milliseconds and run a shorter one at once (measured: a 0.5 ms `asyncio.timeout`
ended after 0.01 ms on uvloop, 1.2 ms on the stdlib loop). Our reading of asyncio's code:
its timeout fired on the next pass, and the cancelled wait woke the batch on the one
after. Its measured effect (same load,
interleaved: p99 2.7, 3.2, 3.9, 17.6 and 33.7 ms with it, 17.1-79.8 ms without; the
loop's median demand 0.67 against 0.77) was of those two passes. Without the timer, the
event and the timeout, a call costs less (profiling runs, 3 windows each in turn, 2,100
paced calls/s: 383-402 µs of CPU per call against 425-441, p50 0.65 against 0.74 ms; at
3,200/s 291-338 against 338-344 µs). Redis's CPU per call was 49-51 against 47-49 µs at
2,100/s and 38-41 against 34-36 at 3,200/s, where the timer's reads had held 1.09 and
1.30 requests on average. Arrival gaps are timed with `time.monotonic`, not the loop's
clock, which on uvloop also counts whole milliseconds.
"""

from __future__ import annotations

import asyncio
import time
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


@dataclass(frozen=True)
class Wait:
    """How a batch waits for more callers before its read: up to `linger` seconds for
    `target` requests (a timer), or `passes` passes of the event loop (the callers whose
    calls the loop has already been handed join it), or not at all."""

    linger: float = 0.0
    target: int = 0
    passes: int = 0


NO_WAIT = Wait()


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
        steady_gap: float = 0.0005,
        steady_passes: int = 2,
    ) -> None:
        self._run = run
        self._load = load or LoopLoad()
        self._max_batch = max_batch
        self._saturated_wait = Wait(linger=max_linger, target=batch_target)
        self._steady_gap = steady_gap
        self._steady_wait = Wait(passes=steady_passes)
        self._waiting: dict[str, _Batch[Request, Result]] = {}
        self._draining: dict[str, asyncio.Task[None]] = {}
        # keys whose read runs in a caller's own task (see `submit`)
        self._reading: set[str] = set()
        self._arrivals: dict[str, _Arrivals] = {}

    def wait(self, key: str) -> Wait:
        """How the next batch of `key` waits for more callers: up to `max_linger` for
        `batch_target` requests while the loop is saturated and callers come more often
        than that; else `steady_passes` passes of the loop while they come more often than
        every `steady_gap`; else not at all."""
        arrivals = self._arrivals.get(key)
        gap = float("inf") if arrivals is None else arrivals.gap
        if gap < self._saturated_wait.linger and self._load.saturated():
            return self._saturated_wait
        if gap < self._steady_gap:
            return self._steady_wait
        return NO_WAIT

    def _arrived(self, key: str) -> None:
        # Not the loop's clock: uvloop's counts whole milliseconds, and these gaps are
        # fractions of one.
        now = time.monotonic()
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
        if idle and self.wait(key) == NO_WAIT:
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
                    await self._gather(waiting, self.wait(key))
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

    async def _gather(self, waiting: _Batch[Request, Result], wait: Wait) -> None:
        """Waits as `wait` says; for a linger, until the batch has its target of requests:
        callers that are already there (the loop was busy) wait for nobody."""
        for _ in range(wait.passes):
            await asyncio.sleep(0)
        if not wait.linger or len(waiting.requests) >= wait.target:
            return
        waiting.filled, waiting.target = asyncio.Event(), wait.target
        try:
            async with asyncio.timeout(wait.linger):
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
