"""The bench's own measures: CPU time of processes under test, and paced runs taken as one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.cpu import CpuMeter, process_seconds, with_descendants
from bench.load import LoadResult, merged

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A parent that starts a child spinning on a core for `seconds`, then waits for it.
_SPINNING_CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nend = time.process_time() + {seconds}\\nwhile time.process_time() < end: pass"])
print(child.pid, flush=True)
child.wait()
"""


def test_the_cpu_meter_counts_what_the_measured_processes_and_their_workers_spent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPINNING_CHILD.format(seconds=0.4)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert with_descendants(parent.pid) == [parent.pid, child]
    with CpuMeter(with_descendants(parent.pid)) as meter:
        # The child's spin ends by its own CPU clock; stop measuring before it exits.
        while process_seconds(child) < 0.35:
            time.sleep(0.01)
    parent.wait(timeout=10)
    assert 0.25 <= meter.seconds <= 0.6
    assert 0.0 <= meter.steal_share < 1.0


def test_the_cpu_meter_leaves_out_processes_it_was_not_given() -> None:
    with CpuMeter([os.getpid()]) as meter:
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
    assert meter.seconds < 0.1


def _paced(seconds: float, durations_ms: list[float]) -> LoadResult:
    return LoadResult(
        requests_per_second=len(durations_ms) / seconds,
        p50_ms=0.0,
        p99_ms=0.0,
        requests=len(durations_ms),
        durations_ms=tuple(durations_ms),
        answered=len(durations_ms) + 10,
    )


def test_paced_windows_merge_into_one_run_of_all_their_calls() -> None:
    quiet = _paced(10, [1.0] * 990)
    stalled = _paced(10, [1.0] * 970 + [200.0] * 30)
    both = merged([quiet, stalled])
    assert merged([quiet]).p99_ms == 1.0
    assert both.requests == 1990
    assert both.requests_per_second == pytest.approx(99.5)
    assert both.p50_ms == 1.0
    # 30 slow calls of 1,990 are 1.5 %: the p99 of the whole lands on them, where the
    # quiet window alone would put it at 1 ms.
    assert both.p99_ms == 200.0
    assert both.answered == 2010
