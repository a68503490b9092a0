"""What the CPUs did while a figure was measured: the share the hypervisor stole (the bench
machine is a VM sharing its host), and the CPU time of the processes under test.

A latency figure on a shared VM depends on the host as much as on the code. On the bench
machine of 2026-12-02 the steal share was ~0.5 % while idle and 3-14 % in the half-load
windows of `make bench`; the bare echo's p99 at ~1,900 paced calls/s went from 2.8 to 217
ms between profiling runs minutes apart, and from 26 to 261 ms between `make bench` runs.
CPU time per call does not depend on queueing: PreValidate's was 1.23-1.31x the echo's in
the same three `make bench` runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_STAT = Path("/proc/stat")
# Fields of /proc/<pid>/stat after the command name: utime and stime, in clock ticks.
_UTIME, _STIME = 11, 12


def _steal_and_total() -> tuple[int, int]:
    """Clock ticks stolen, and all ticks, summed over every CPU since boot."""
    fields = [int(f) for f in _STAT.read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    return fields[7], sum(fields[:8])


def process_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[_UTIME]) + int(fields[_STIME])) / os.sysconf("SC_CLK_TCK")


def with_descendants(pid: int) -> list[int]:
    """A process and every process below it (a service's worker processes)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += with_descendants(int(child))
    return found


@dataclass
class CpuMeter:
    """Measures the block it guards: `with CpuMeter([pid]) as meter: …`, then read it."""

    pids: Sequence[int]
    steal_share: float = 0.0
    seconds: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._steal, self._total = _steal_and_total()
        self._seconds = sum(process_seconds(pid) for pid in self.pids)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        steal, total = _steal_and_total()
        self.steal_share = (steal - self._steal) / max(1, total - self._total)
        self.seconds = sum(process_seconds(pid) for pid in self.pids) - self._seconds
