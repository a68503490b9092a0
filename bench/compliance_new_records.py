"""PreValidateBatch of records the process has never seen: what validating a fresh list
costs, where every number is parsed, typed and placed for the first time.

The batch figure h2load gives sends the same 1,000 records every call (h2load cannot vary
a body), so its numbers come from the process's caches, as when a dialer re-validates its
records. A list validated once before it is dialled is all new numbers.

A second figure sends half its records where it is night, to a campaign with the TCPA
window: records outside their window are denied, and a denial, unlike "allowed", tells
when the record may be called.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import grpc

from bench.grpc_codes import only_ok
from bench.harness import Figure, Run
from cxmesh.compliance.v1 import decision_pb2, decision_service_pb2
from cxmesh_server.contacts.places import states_for_e164

BATCH = 1000
SECONDS = 10
IN_FLIGHT = 2  # as the cached figure's h2load -c2 -m2
# As the cached figure: the median of three windows, each of new numbers (a single window
# moved by a tenth with the host's speed within the hour).
WINDOWS = 3
BATCHES_PER_WINDOW = 1200
# Area codes no other compliance figure dials (212 and 415 are the cached records').
_SKIPPED_AREA_CODES = frozenset({"212", "415"})
CAMPAIGN = "campaigns/bench"  # the bench's rules: open all day
TCPA_CAMPAIGN = "campaigns/bench-tcpa"  # the same rules with the TCPA window
# Zones around the world: at any hour, one is well inside 08:00-21:00 and one well outside.
_ZONES = (
    "Pacific/Honolulu",
    "America/Los_Angeles",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def _numbers(exchange: str) -> Iterator[str]:
    """Distinct North American numbers: every area code the place tables know, the
    exchange (555, 556: valid in all but a few), each line number."""
    area_codes = [
        area
        for area in (f"{n:03d}" for n in range(200, 1000))
        if states_for_e164(f"+1{area}5550100") and area not in _SKIPPED_AREA_CODES
    ]
    for line in range(10_000):
        for area in area_codes:
            yield f"+1{area}{exchange}{line:04d}"


def day_and_night_zones(now: datetime) -> tuple[str, str]:
    """A zone where it is between 10:00 and 19:00 at `now`, and one between 23:00 and 06:00
    (an hour or more from either end of the window, for the figure's minute)."""
    hours = {zone: now.astimezone(ZoneInfo(zone)).hour for zone in _ZONES}
    day = next(zone for zone, hour in hours.items() if 10 <= hour < 19)
    night = next(zone for zone, hour in hours.items() if hour >= 23 or hour < 6)
    return day, night


def _batches(count: int, campaign: str, exchange: str, zones: tuple[str, ...]) -> list[bytes]:
    """`zones`: the records' time zones, in turn; none: each placed by its number."""
    numbers = _numbers(exchange)
    batches = []
    for b in range(count):
        request = decision_service_pb2.PreValidateBatchRequest(
            decision_requests=[
                decision_pb2.DecisionRequest(
                    contact=decision_pb2.Contact(
                        address=next(numbers),
                        client_id=f"new-{b * BATCH + n}",
                        time_zone=zones[n % len(zones)] if zones else "",
                    ),
                    campaign=campaign,
                )
                for n in range(BATCH)
            ]
        )
        batches.append(request.SerializeToString())
    return batches


async def _send(
    target: str, auth: dict[str, str], batches: list[bytes]
) -> tuple[int, float, bytes]:
    """(batches answered, seconds, the last answer) calling with IN_FLIGHT calls at a time
    until SECONDS pass or the batches run out. Bytes both ways: the client decodes nothing
    (it shares the machine with the server)."""
    pending = iter(batches)
    answered = 0
    last = b""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/cxmesh.compliance.v1.DecisionService/PreValidateBatch",
            request_serializer=None,
            response_deserializer=None,
        )
        started = time.perf_counter()
        deadline = started + SECONDS

        async def worker() -> None:
            nonlocal answered, last
            for body in pending:
                if time.perf_counter() >= deadline:
                    return
                last = await call(body, metadata=tuple(auth.items()), timeout=60)
                answered += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return answered, time.perf_counter() - started, last


def measure(run: Run, group: str, port: int, metrics_port: int, auth: dict[str, str]) -> None:
    figure = _measure(
        port, metrics_port, auth, _batches(WINDOWS * BATCHES_PER_WINDOW, CAMPAIGN, "555", ())
    )
    run.record(
        Figure(
            group,
            "prevalidate_batch_new_records_per_s",
            figure.rate,
            "records/s",
            f"{group}.prevalidate_batch_records_per_s",
            note=f"PreValidateBatch of 1,000 records never seen before (distinct numbers of "
            f"every area code, each its own client id), {figure.note}",
        )
    )
    day, night = day_and_night_zones(datetime.now(UTC))
    batches = _batches(WINDOWS * BATCHES_PER_WINDOW, TCPA_CAMPAIGN, "556", (day, night))
    figure = _measure(port, metrics_port, auth, batches)
    run.record(
        Figure(
            group,
            "prevalidate_batch_new_records_half_at_night_per_s",
            figure.rate,
            "records/s",
            f"{group}.prevalidate_batch_new_records_per_s",
            note=f"the same with the TCPA window, every other record's time zone {day} "
            f"(day) or {night} (night), {figure.note}",
        )
    )


@dataclass(frozen=True)
class _Windows:
    rate: float  # records/s: the windows' median
    note: str


def _measure(port: int, metrics_port: int, auth: dict[str, str], batches: list[bytes]) -> _Windows:
    # Enough for 10 s at 120,000 records/s a window (if the process is faster, a window's
    # figure is taken over the time its batches lasted); built before the clock starts,
    # every window's numbers new. 600 batches (10 s at 60,000) had come to last 6 s.
    windows: list[tuple[float, int, float]] = []  # (records/s, batches, seconds)
    with only_ok([metrics_port], "PreValidateBatch") as ok:
        for window in range(WINDOWS):
            start = window * BATCHES_PER_WINDOW
            answered, seconds, last = asyncio.run(
                _send(f"127.0.0.1:{port}", auth, batches[start : start + BATCHES_PER_WINDOW])
            )
            windows.append((answered * BATCH / seconds, answered, seconds))
    ok.covers(sum(answered for _, answered, _ in windows))
    sample = decision_service_pb2.PreValidateBatchResponse.FromString(last)
    outcomes = Counter(
        "allowed"
        if d.allowed
        else "+".join(decision_pb2.DenialCode.Name(x.code) for x in d.denials)
        for d in sample.decisions
    )
    return _Windows(
        statistics.median(rate for rate, _, _ in windows),
        f"{IN_FLIGHT} calls in flight from a grpc.aio client; the median of {WINDOWS} "
        "windows, in turn: "
        + ", ".join(
            f"{rate:,.0f} ({answered} batches in {seconds:.1f} s)"
            for rate, answered, seconds in windows
        )
        + "; the last batch's answers: "
        + ", ".join(f"{n} {what}" for what, n in outcomes.most_common()),
    )
