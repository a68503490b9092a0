"""The four baselines every later figure is compared to, measured in every run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis

from bench.data import CONTACT_COLUMNS, contacts_csv
from bench.environment import Environment
from bench.harness import Figure, Run, percentile
from bench.load import LoadResult, h2load_grpc, wrk_post
from cxmesh.diagnostics.v1 import echo_service_pb2

GROUP = "baseline"
ECHO_PATH = "/cxmesh.diagnostics.v1.EchoService/Echo"
SECONDS = 10
Measured = TypeVar("Measured")


def measure(run: Run, env: Environment) -> None:
    grpc_echo(run, env)
    rest_echo(run, env)
    asyncio.run(raw_redis(run, env))
    asyncio.run(raw_postgres_copy(run, env))


def grpc_echo_load(env: Environment) -> LoadResult:
    return h2load_grpc(
        f"http://127.0.0.1:{env.bare_echo_port}{ECHO_PATH}",
        echo_service_pb2.EchoRequest(message="hello"),
        seconds=SECONDS,
    )


def rest_echo_load(env: Environment) -> LoadResult:
    return wrk_post(
        f"{env.mesh.edge_url}/v1/echo",
        '{"message":"hello"}',
        headers={"content-type": "application/json", "authorization": f"Bearer {env.token()}"},
        seconds=SECONDS,
    )


def bracketed(
    run: Run,
    group: str,
    name: str,
    echo: Callable[[], LoadResult],
    measure: Callable[[], Measured],
) -> Measured:
    """Runs `measure` between two runs of `echo`, and records their mean throughput as
    `group.name`, the baseline of the figure measured in between.

    The bench machine's speed drifts within a run (the bare echo measured 2,760-3,730
    req/s within one session), so a ratio to the baseline measured at the start of the run,
    minutes earlier, measures the drift as well. Both ratios are reported."""
    before = echo()
    result = measure()
    after = echo()
    run.record(
        Figure(
            group,
            name,
            (before.requests_per_second + after.requests_per_second) / 2,
            "req/s",
            note=f"the echo just before ({before.requests_per_second:,.0f} req/s) and just after "
            f"({after.requests_per_second:,.0f} req/s) the figure it is the baseline of",
        )
    )
    return result


def _record_echo(run: Run, name: str, result: LoadResult, how: str) -> None:
    run.record(Figure(GROUP, f"{name}_rps", result.requests_per_second, "req/s", note=how))
    run.record(Figure(GROUP, f"{name}_p50_ms", result.p50_ms, "ms", note=how))
    run.record(Figure(GROUP, f"{name}_p99_ms", result.p99_ms, "ms", note=how))


def grpc_echo(run: Run, env: Environment) -> None:
    how = "h2load -c4 -m16, bare grpc.aio echo (no interceptors)"
    _record_echo(run, "grpc_echo", grpc_echo_load(env), how)


def rest_echo(run: Run, env: Environment) -> None:
    how = "wrk -c16, POST /v1/echo through Envoy (JWT, transcoding) to the iam process"
    _record_echo(run, "rest_echo", rest_echo_load(env), how)


async def raw_redis(run: Run, env: Environment, operations: int = 500_000) -> None:
    client = aioredis.Redis.from_url(env.redis.url)
    try:
        started = time.perf_counter()
        for start in range(0, operations, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for n in range(start, start + 1000):
                    pipe.set(f"bench:{n}", "1")
                await pipe.execute()
        elapsed = time.perf_counter() - started
        how = f"redis-py asyncio, pipelines of 1000 SETs, {operations:,} keys"
        run.record(
            Figure(GROUP, "redis_pipelined_set_ops", operations / elapsed, "ops/s", note=how)
        )
        latencies = []
        for n in range(5000):
            t = time.perf_counter()
            await client.get(f"bench:{n}")
            latencies.append((time.perf_counter() - t) * 1000)
        how = "redis-py asyncio, 5,000 sequential GETs"
        run.record(Figure(GROUP, "redis_get_p50_ms", percentile(latencies, 0.5), "ms", note=how))
        run.record(Figure(GROUP, "redis_get_p99_ms", percentile(latencies, 0.99), "ms", note=how))
    finally:
        await client.aclose()


async def raw_postgres_copy(run: Run, env: Environment, rows: int = 1_000_000) -> None:
    path = contacts_csv(rows)
    connection = await asyncpg.connect(env.postgres.dsn)
    try:
        columns = ", ".join(f"{c} text" for c in CONTACT_COLUMNS)
        await connection.execute(
            f"DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy ({columns})"
        )
        started = time.perf_counter()
        await connection.copy_to_table("bench_copy", source=path, format="csv", header=True)
        elapsed = time.perf_counter() - started
        copied = await connection.fetchval("SELECT count(*) FROM bench_copy")
        assert copied == rows, copied
        how = f"asyncpg COPY of a {rows:,}-row, 10-column CSV ({path.stat().st_size / 1e6:.0f} MB)"
        run.record(Figure(GROUP, "postgres_copy_rows_per_s", rows / elapsed, "rows/s", note=how))
        run.record(Figure(GROUP, "postgres_copy_seconds", elapsed, "s", note=how))
        await connection.execute("DROP TABLE bench_copy")
    finally:
        await connection.close()
