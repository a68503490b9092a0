"""Keeps what a process caches out of the cyclic collector's full walks.

CPython's full collection walks every tracked object the process holds. The start's
`gc.freeze()` takes what is loaded then out of its sight, but caches fill later: after a
list of 300,000 numbers never seen before was validated, each full collection of the
compliance process walked its prepared records for ~300 ms (an OCS caller's slowest
answer took 320-344 ms in every other 8-s window; 10-19 ms with this). So caches say how
many entries they added, and once enough have been, the next young collection's end
freezes what survived it.

A young collection has just freed the young garbage, so what is frozen is alive: cache
entries (freed as usual, by reference counting, when evicted) and the calls in flight.
A cycle among frozen objects that becomes garbage later is never collected: each freeze
can keep the cycles of the calls then in flight. Measured: after 448 freezes (2.4 million
never-seen records validated in batches), unfreezing and a full collection found 19
unreachable objects in all.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter, Histogram

# Entries added before the next freeze: what a full collection still walks meanwhile
# (a few tracked objects an entry, ~0.2 µs each: about a millisecond).
FREEZE_AFTER_ENTRIES = 2_000

GC_PAUSE_SECONDS = Histogram(
    "cxmesh_gc_pause_seconds",
    "Time the process stood still in a collection of the cyclic garbage collector.",
    ("generation",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
# Bound once: the callback runs at every collection, hundreds a second under load.
_PAUSES_BY_GENERATION = tuple(GC_PAUSE_SECONDS.labels(str(g)) for g in range(3))
GC_FREEZES = Counter(
    "cxmesh_gc_freezes_total",
    "Times the cache entries added since the last were taken out of the collector's walks.",
)


class LongLived:
    """Counts cache entries added, freezes at the end of the young collection after
    `freeze_after` of them, and times each collection."""

    def __init__(self, freeze_after: int = FREEZE_AFTER_ENTRIES) -> None:
        self._freeze_after = freeze_after
        self._added = 0
        self._started = 0.0

    def added(self, entries: int = 1) -> None:
        self._added += entries

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        _PAUSES_BY_GENERATION[generation].observe(time.perf_counter() - self._started)
        # Not after a collection of generation 0 alone: its survivors, still young, are
        # more often garbage-to-be than after a collection of generation 1.
        if generation >= 1 and self._added >= self._freeze_after:
            gc.freeze()
            self._added = 0
            GC_FREEZES.inc()


# One per process: the collector is.
long_lived = LongLived()
