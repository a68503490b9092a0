"""Which I/O engine gRPC core runs on, chosen before grpc is imported.

grpc 1.85 does its socket I/O on its EventEngine thread pool by default; its legacy I/O
manager (epoll1) polls sockets in the threads that wait on the completion queue. Our
reading is that a call then passes through fewer threads before it reaches the event
loop. What we measured on the 2-vCPU bench machine (profiling runs of 2026-12-03, paced
calls taken in turn with and without, not `make bench` figures):
- the bare echo at 3,000 calls/s: 242-278 µs of CPU per call against 280-313 (six rounds
  each);
- the compliance process at 2,700 PreValidate calls/s: 0.73-0.82 of a core against
  0.82-0.94 (2-21 % less in each pair of windows), p99 over four windows 4.38 ms against
  8.23; at 4,300/s 225-257 µs per call against 241-251 (from 3 % more to 10 % less).
`make bench` (the bare echo on gRPC's defaults): PreValidate's CPU per call at half load
was 1.00-1.03x the echo's in the three runs since, 1.07-1.23x in the eight runs before
it that day.

gRPC core reads GRPC_EXPERIMENTS once, when grpc is imported: set afterwards it does
nothing. An operator's own GRPC_EXPERIMENTS is kept (an empty one gives gRPC's defaults).
"""

from __future__ import annotations

from collections.abc import MutableMapping

LEGACY_IO_EXPERIMENTS = (
    "-event_engine_listener",
    "-event_engine_client",
    "-event_engine_for_all_other_endpoints",
    "-event_engine_callback_cq",
    "-pollset_alternative",
)


def prefer_legacy_io(environ: MutableMapping[str, str]) -> None:
    """Turns gRPC core's EventEngine I/O off in `environ` unless GRPC_EXPERIMENTS is set."""
    environ.setdefault("GRPC_EXPERIMENTS", ",".join(LEGACY_IO_EXPERIMENTS))
