"""The bench's own measures: CPU time of processes under test, paced runs taken as one, and
paced runs that hold only their own requests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench.baselines import ECHO_PATH
from bench.compliance_new_records import day_and_night_zones
from bench.cpu import CpuMeter, process_seconds, with_descendants
from bench.load import LoadResult, _paced_run, grpc_frame, merged
from cxmesh.diagnostics.v1 import echo_service_pb2
from cxmesh_server.stack.ports import free_port, is_listening

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


@pytest.fixture
def bare_echo_url() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.bare_echo", str(port)])
    try:
        deadline = time.monotonic() + 30
        while not is_listening("127.0.0.1", port):
            assert server.poll() is None and time.monotonic() < deadline, "no bare echo"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{ECHO_PATH}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_a_paced_run_holds_only_its_own_requests_after_another_in_the_same_folder(
    bare_echo_url: str, tmp_path: Path
) -> None:
    # The rate probe and the measured run share a folder; h2load appends to its logs, so
    # the probe's requests used to open the measured run and shorten its warm-up.
    body = tmp_path / "body.bin"
    body.write_bytes(grpc_frame(echo_service_pb2.EchoRequest(message="hi")))
    probe = _paced_run(bare_echo_url, body, tmp_path, None, processes=1, count=20)
    started = time.time() * 1e6
    measured = _paced_run(bare_echo_url, body, tmp_path, None, processes=2, count=10)
    assert len(probe) == 20
    assert len(measured) == 20
    assert min(start for start, _, _ in measured) >= started


def test_the_night_figure_finds_a_zone_in_its_day_and_one_in_its_night_at_every_hour() -> None:
    for first in (datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC)):
        for quarter in range(96):
            now = first + timedelta(minutes=15 * quarter)
            day, night = day_and_night_zones(now)
            assert 10 <= now.astimezone(ZoneInfo(day)).hour < 19
            night_hour = now.astimezone(ZoneInfo(night)).hour
            assert night_hour >= 23 or night_hour < 6
