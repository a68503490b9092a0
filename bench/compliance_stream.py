"""PreValidateStream: answers per second on streams a dialer keeps open, against unary
PreValidate in the same run. The client is Python (h2load cannot stream): it sends
prepared bytes and decodes nothing, but shares the machine with the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from bench.grpc_codes import only_ok
from bench.harness import Figure, Run
from cxmesh.compliance.v1 import decision_pb2, decision_service_pb2

STREAMS = 4
SECONDS = 10
# Questions a client lets run ahead of its answers (the server decides up to 64 of a
# stream at once).
AHEAD = 64
METHOD = "PreValidateStream"


def _question(request: decision_pb2.DecisionRequest, n: int) -> bytes:
    return decision_service_pb2.PreValidateStreamRequest(
        correlation_id=str(n), decision_request=request
    ).SerializeToString()


async def _stream(
    channel: grpc.aio.Channel,
    auth: dict[str, str],
    questions: list[bytes],
    deadline: float,
) -> int:
    """Answers read on one stream that asks until `deadline` with up to AHEAD questions
    unanswered, then closes its side and reads the rest (the stream ends OK)."""
    room = asyncio.Semaphore(AHEAD)
    call = channel.stream_stream(
        f"/cxmesh.compliance.v1.DecisionService/{METHOD}",
        request_serializer=None,
        response_deserializer=None,
    )

    async def asking() -> AsyncIterator[bytes]:
        n = 0
        while time.perf_counter() < deadline:
            await room.acquire()
            yield questions[n % len(questions)]
            n += 1

    answered = 0
    async for _ in call(asking(), metadata=tuple(auth.items())):
        answered += 1
        room.release()
    return answered


async def _run(target: str, auth: dict[str, str], questions: list[bytes]) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(_stream(channel, auth, questions, started + SECONDS) for _ in range(STREAMS))
        )
        return sum(counts), time.perf_counter() - started


def measure(
    run: Run,
    group: str,
    port: int,
    metrics_port: int,
    auth: dict[str, str],
    request: decision_pb2.DecisionRequest,
) -> None:
    """`request` is the unary figure's: the same contact, so the two compare."""
    questions = [_question(request, n) for n in range(1000)]
    with only_ok([metrics_port], METHOD):
        answered, seconds = asyncio.run(_run(f"127.0.0.1:{port}", auth, questions))
    run.record(
        Figure(
            group,
            "prevalidate_stream_answers_per_s",
            answered / seconds,
            "answers/s",
            f"{group}.prevalidate_rps",
            note=f"{STREAMS} PreValidateStream streams on one connection from a grpc.aio "
            f"client, up to {AHEAD} questions ahead on each, the unary figure's contact, "
            f"{answered:,} answers in {seconds:.1f} s",
        )
    )
