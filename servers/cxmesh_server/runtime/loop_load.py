"""Whether the event loop's thread is saturated: its demand for a CPU over the last window.

Work that trades latency for throughput (the compliance coalescer's linger) should only
be done when the loop has more work than it can run; below that the wait is pure latency.
The signal is the loop thread's demand: the time it ran plus the time it was ready to run
but waited for a core (Linux's /proc/thread-self/schedstat), per wall-clock time. CPU time
alone misses saturation when other processes share the cores.

Measured per 0.2 s on 2 cores (profiling runs, compliance process): 0.91-1.01 under
h2load directly, 0.78-1.00 with Envoy in front, both at the saturating rate; 0.64-0.88 at
half that rate, with single windows up to 0.99 whenever the machine stuttered. Averaged
over 1 s: 0.96-0.99, 0.89-0.97 and at most 0.86. Hence 1 s windows, on at 0.92: with 0.2 s
windows the stutters switched the linger on at half load (in 3-10 % of the windows), and
that load's p99 was 7-30 ms (once 327) against 3-7 ms with no linger.

Once on, demand is no guide to turning off: the batching the verdict switches on is what
lowers it. With batches of up to 16, the loop idled while a batch gathered, its demand
fell below 0.88, where it used to turn off, and the next second ran unbatched and
saturated again (profiling runs: up to half of the seconds unbatched, at saturation and
at 4,000 paced calls/s alike). So it turns off when the calls arriving would need less
than `relieved_share` (0.88) of the loop at the cost per call measured while it was off:
that is, once the loop could serve them unbatched. That cost is the least of the last
few windows': a stutter of the machine inflates one window's demand, and the verdict it
turned on must not stay on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def thread_demand() -> float:
    """Seconds the calling thread has run or waited to run; its CPU time where the kernel
    does not say."""
    try:
        running, waiting, _ = _SCHEDSTAT.read_text().split()
    except (OSError, ValueError):
        return time.thread_time()
    return (int(running) + int(waiting)) / 1e9


class LoopLoad:
    """Call `saturated()` from the loop's own thread only: it reads that thread's demand.
    Callers `count()` the calls whose cost the verdict is about.

    The verdict changes at most once per `window`. It turns on when the loop's demand
    reaches `saturated_share`, and off when the calls of a window, at the least cost per
    call of the last `COSTS_KEPT` windows while off, need less than `relieved_share`.
    """

    COSTS_KEPT = 5

    def __init__(
        self,
        window: float = 1.0,
        saturated_share: float = 0.92,
        relieved_share: float = 0.88,
        cpu: Callable[[], float] = thread_demand,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < relieved_share <= saturated_share:
            raise ValueError("relieved_share must be in (0, saturated_share]")
        self._window = window
        self._on = saturated_share
        self._off = relieved_share
        self._cpu = cpu
        self._clock = clock
        self._since = clock()
        self._cpu_since = cpu()
        self._saturated = False
        self._calls = 0
        # seconds of loop per call in the last windows with calls while off: unbatched costs
        self._costs: deque[float] = deque(maxlen=self.COSTS_KEPT)

    def count(self, calls: int = 1) -> None:
        self._calls += calls

    def saturated(self) -> bool:
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self._window:
            cpu = self._cpu()
            demand = cpu - self._cpu_since
            if self._saturated:
                needed = self._calls * min(self._costs, default=0.0) / elapsed
                self._saturated = needed >= self._off
            else:
                if self._calls:
                    self._costs.append(demand / self._calls)
                self._saturated = demand / elapsed >= self._on
            self._since, self._cpu_since, self._calls = now, cpu, 0
        return self._saturated
