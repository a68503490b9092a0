"""Load generators that are not the bottleneck: h2load for gRPC, wrk for HTTP/1.1 REST."""

from __future__ import annotations

import math
import re
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from bench.harness import percentile, require_tool


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    # Of paced runs: every measured call's duration, and the calls answered in all
    # (probe and warm-up included: what the server did while the run lasted).
    durations_ms: tuple[float, ...] = ()
    answered: int = 0


def merged(results: Sequence[LoadResult]) -> LoadResult:
    """Paced runs taken as one: their calls' percentiles, their mean rate."""
    durations = [d for result in results for d in result.durations_ms]
    seconds = sum(result.requests / result.requests_per_second for result in results)
    return LoadResult(
        requests_per_second=sum(result.requests for result in results) / seconds,
        p50_ms=percentile(durations, 0.50),
        p99_ms=percentile(durations, 0.99),
        requests=sum(result.requests for result in results),
        durations_ms=tuple(durations),
        answered=sum(result.answered for result in results),
    )


def grpc_frame(message: Message) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def _h2load_args(body: Path, log: Path, headers: dict[str, str] | None) -> list[str]:
    args = [
        require_tool("h2load"),
        "-d",
        str(body),
        "--log-file",
        str(log),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    return args


# Latency runs start their load generators at this niceness. On the bench machine the
# generators share two cores with the system under test, which in production has its
# cores to itself (the dialer runs elsewhere): a paced generator needs little CPU, and
# yielding it keeps the generator's own wakeups from queueing the service's threads.
# Measured on PreValidate at half load, 2 cores (interleaved profiling runs of this
# generator, not `make bench`): p99 2.8-6.2 ms (median 3.9) niced, 4.2-8.7 ms (median 6.8)
# not; the bare echo's 2-5 ms either way.
# Throughput runs are not niced: there the generator must keep up.
_LATENCY_NICENESS = 10


def _yielding(args: list[str]) -> list[str]:
    return [require_tool("nice"), "-n", str(_LATENCY_NICENESS), *args]


def _succeeded(output: str) -> int:
    """Requests that succeeded, from h2load's summary; raises if any failed."""
    succeeded = int(re.search(r"(\d+) succeeded", output).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"(\d+) failed", output).group(1))  # type: ignore[union-attr]
    if failed or not succeeded:
        raise RuntimeError(f"h2load saw failures: {output}")
    return succeeded


def _requests(log: Path) -> list[tuple[int, str, float]]:
    """(start µs since the epoch, HTTP status, duration ms) of each request in an h2load log."""
    requests = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            requests.append((int(fields[0]), fields[1], int(fields[2]) / 1000))
    if {status for _, status, _ in requests} - {"200"}:
        raise RuntimeError(f"h2load saw statuses other than 200 in {log}")
    return requests


def h2load_grpc(
    url: str,
    request: Message,
    *,
    headers: dict[str, str] | None = None,
    seconds: int = 10,
    connections: int = 4,
    streams: int = 16,
    warmup_seconds: int = 2,
) -> LoadResult:
    """Unary gRPC calls over HTTP/2 with h2load, as fast as they are answered."""
    with tempfile.TemporaryDirectory() as folder:
        body = Path(folder) / "body.bin"
        body.write_bytes(grpc_frame(request))
        log = Path(folder) / "requests.tsv"
        args = [
            *_h2load_args(body, log, headers),
            "-t1",
            f"-c{connections}",
            f"-m{streams}",
            f"-D{seconds}",
            f"--warm-up-time={warmup_seconds}",
        ]
        output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
        succeeded = _succeeded(output)
        durations_ms = [duration for _, _, duration in _requests(log)]
    return LoadResult(
        requests_per_second=succeeded / seconds,
        p50_ms=percentile(durations_ms, 0.50),
        p99_ms=percentile(durations_ms, 0.99),
        requests=succeeded,
    )


# Each paced h2load process sends one request every this many milliseconds. libev (under
# h2load) sleeps in whole milliseconds, so a process keeps a rate only at gaps of a few ms;
# higher rates come from more processes.
_PACED_GAP_MS = 3


def _paced_run(
    url: str, body: Path, folder: Path, headers: dict[str, str] | None, processes: int, count: int
) -> list[tuple[int, str, float]]:
    """`processes` h2load clients, each sending `count` requests `_PACED_GAP_MS` apart, their
    starts spread evenly over one gap; every request of every client."""
    script = folder / "timing.tsv"
    script.write_text("".join(f"{n * _PACED_GAP_MS}.000\t{url}\n" for n in range(count)))
    running = []
    for index in range(processes):
        log = folder / f"requests-{index}.tsv"
        # h2load appends to its log: a log left by an earlier run in the folder (the rate
        # probe's) would put that run's requests among this one's, and its first request
        # would start the warm-up that much too early.
        log.unlink(missing_ok=True)
        args = _h2load_args(body, log, headers)
        args += ["-c1", "-m64", f"-n{count}", f"--timing-script-file={script}"]
        running.append((subprocess.Popen(_yielding(args), stdout=subprocess.PIPE, text=True), log))
        time.sleep(_PACED_GAP_MS / 1000 / processes)
    requests = []
    for process, log in running:
        output, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"h2load failed: {output}")
        _succeeded(output)
        requests += _requests(log)
    return requests


def h2load_grpc_paced(
    url: str,
    request: Message,
    *,
    rate: float,
    headers: dict[str, str] | None = None,
    seconds: int = 10,
    warmup_seconds: int = 2,
) -> LoadResult:
    """Unary gRPC calls arriving at an even pace of about `rate` per second.

    Not h2load's --rps: it fires its pacing timer at most every 10 ms
    (`max(0.01, 1/rps)` in h2load.cc), so at a few hundred requests/s per connection it
    sends 3-4 at once, in step on every connection, and a "half load" run is a burst of ~14
    calls every 10 ms. Here each h2load process follows a timing script of evenly spaced
    requests on one connection, and the processes' starts are staggered. The rate a process
    keeps is measured first (libev oversleeps), and enough processes are started to reach
    `rate`; the result states the rate reached.
    """
    with tempfile.TemporaryDirectory() as folder:
        body = Path(folder) / "body.bin"
        body.write_bytes(grpc_frame(request))
        probe = _paced_run(url, body, Path(folder), headers, 1, 400)
        starts = sorted(start for start, _, _ in probe)
        per_process = (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e6)
        processes = max(1, round(rate / per_process))
        count = math.ceil((seconds + warmup_seconds) * per_process)
        requests = _paced_run(url, body, Path(folder), headers, processes, count)
    answered = len(probe) + len(requests)
    first = min(start for start, _, _ in requests)
    measured = [r for r in requests if r[0] >= first + warmup_seconds * 1e6]
    starts = [start for start, _, _ in measured]
    durations_ms = [duration for _, _, duration in measured]
    return LoadResult(
        requests_per_second=len(measured) / ((max(starts) - min(starts)) / 1e6),
        p50_ms=percentile(durations_ms, 0.50),
        p99_ms=percentile(durations_ms, 0.99),
        requests=len(measured),
        durations_ms=tuple(durations_ms),
        answered=answered,
    )


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
"""
# With `numbered`: each request's body is the template with %d replaced by a counter, so
# that no two requests carry the same phone number (or other key).
_WRK_NUMBERED = """
counter = math.random(0, 1000000)
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(wrk.body, counter % 10000))
end
"""
# With `delay_ms`: each connection waits this long before its next request, which paces
# the load (wrk has no rate option of its own).
_WRK_DELAY = """
delay = function()
  return {delay_ms}
end
"""

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def wrk_post(
    url: str,
    body: str,
    *,
    headers: dict[str, str],
    seconds: int = 10,
    connections: int = 16,
    numbered: bool = False,
    delay_ms: float | None = None,
) -> LoadResult:
    """POSTs with wrk (HTTP/1.1 keep-alive); fails on any non-2xx answer."""
    wrk = require_tool("wrk")
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(body=body, headers=header_lines))
        if numbered:
            script.write(_WRK_NUMBERED)
        if delay_ms is not None:
            script.write(_WRK_DELAY.format(delay_ms=delay_ms))
    # Warm up connections and caches, then measure.
    subprocess.run(
        [wrk, "-t1", f"-c{connections}", "-d2s", "-s", script.name, url],
        capture_output=True,
        check=True,
    )
    measure = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url]
    output = subprocess.run(
        _yielding(measure) if delay_ms is not None else measure,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script.name).unlink()
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw failures:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _latency_ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _latency_ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return LoadResult(requests_per_second=rps, p50_ms=p50, p99_ms=p99, requests=total)
