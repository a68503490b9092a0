"""Whether the event loop's thread is saturated: its share of CPU over the last window.

Work that trades latency for throughput (the compliance coalescer's linger) should only
be done when the loop has more work than it can run; below that the wait is pure latency.
The loop thread's CPU time per wall-clock time is that signal, and it does not depend on
how fast the machine is (measured under h2load: 0.99 at the saturating load, 0.72-0.78 at
half that rate, 2 cores).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LoopLoad:
    """Call `saturated()` from the loop's own thread only: it reads that thread's CPU time.

    The verdict changes at most once per `window`. It turns on at `saturated_share` and off
    below `relieved_share`, so that the cheaper work it enables (which lowers the share) does
    not switch it straight off again.
    """

    def __init__(
        self,
        window: float = 0.2,
        saturated_share: float = 0.9,
        relieved_share: float = 0.8,
        cpu: Callable[[], float] = time.thread_time,
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

    def saturated(self) -> bool:
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self._window:
            cpu = self._cpu()
            share = (cpu - self._cpu_since) / elapsed
            self._saturated = share >= (self._off if self._saturated else self._on)
            self._since, self._cpu_since = now, cpu
        return self._saturated
