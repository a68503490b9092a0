"""Load generators that are not the bottleneck: h2load for gRPC, wrk for HTTP/1.1 REST."""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
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


def grpc_frame(message: Message) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def h2load_grpc(
    url: str,
    request: Message,
    *,
    headers: dict[str, str] | None = None,
    seconds: int = 10,
    connections: int = 4,
    streams: int = 16,
    warmup_seconds: int = 2,
    rate_per_connection: int | None = None,
) -> LoadResult:
    """Unary gRPC calls over HTTP/2 with h2load; latencies from its per-request log."""
    h2load = require_tool("h2load")
    with tempfile.TemporaryDirectory() as folder:
        body = Path(folder) / "body.bin"
        body.write_bytes(grpc_frame(request))
        log = Path(folder) / "requests.tsv"
        args = [
            h2load,
            "-t",
            "1",
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-D",
            str(seconds),
            "--warm-up-time",
            str(warmup_seconds),
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
        if rate_per_connection is not None:
            args += ["--rps", str(rate_per_connection)]
        output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
        durations_ms = []
        statuses = set()
        for line in log.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 3:
                statuses.add(fields[1])
                durations_ms.append(int(fields[2]) / 1000)
    succeeded = int(re.search(r"(\d+) succeeded", output).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"(\d+) failed", output).group(1))  # type: ignore[union-attr]
    if failed or not succeeded or statuses - {"200"}:
        raise RuntimeError(f"h2load saw failures: {statuses} {output}")
    return LoadResult(
        requests_per_second=succeeded / seconds,
        p50_ms=percentile(durations_ms, 0.50),
        p99_ms=percentile(durations_ms, 0.99),
        requests=succeeded,
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
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
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
