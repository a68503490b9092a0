"""Redis's CPU per decision read, by the form of the read: plain commands in MULTI/EXEC or
the Lua script, against a PING at the same pace (raw Redis, the baseline).

The engine picks MULTI/EXEC for small reads (`TRANSACTION_MAX_ATTEMPT_SETS`); this is the
measurement behind that choice: one record, and a batch at the limit. Reads are paced
(one every ~0.5 ms, each its own wakeup in Redis), as calls come at half load, and the
three forms are taken in turn so that all see the machine as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial

from bench.cpu import CpuMeter
from bench.environment import Environment
from bench.harness import Figure, Run
from cxmesh.compliance.v1 import decision_pb2
from cxmesh_server.compliance.engine import TRANSACTION_MAX_ATTEMPT_SETS, DecisionEngine
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis

READS = 2000
ROUNDS = 3
PACE_SECONDS = 0.0005


async def _redis_cpu_per_read(
    redis_pid: int,
    read: Callable[[], Awaitable[None]],
    rounds: dict[str, list[float]],
    name: str,
) -> None:
    await read()  # warm: views, prepared subjects, the script loaded
    with CpuMeter([redis_pid]) as meter:
        for _ in range(READS):
            await read()
            await asyncio.sleep(PACE_SECONDS)
    rounds[name].append(meter.seconds / READS * 1e6)


async def _measure(
    env: Environment, tenant: str, batches: Mapping[str, Sequence[decision_pb2.DecisionRequest]]
) -> dict[str, float]:
    redis = create_redis(env.redis.url)
    wire = WireRedis(env.redis.url)
    engines = {
        "transaction": DecisionEngine(redis, wire),
        "script": DecisionEngine(redis, wire, transactions=False),
    }
    pid = env.redis.process.pid
    rounds: dict[str, list[float]] = {"ping": []}

    async def decide(engine: DecisionEngine, batch: Sequence[decision_pb2.DecisionRequest]) -> None:
        decisions = await engine.decide(tenant, batch, now=datetime.now(UTC))
        unavailable = decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE
        assert not any(d.code == unavailable for x in decisions for d in x.denials), decisions

    async def ping() -> None:
        await wire.execute("PING")

    try:
        for _ in range(ROUNDS):
            await _redis_cpu_per_read(pid, ping, rounds, "ping")
            for size, batch in batches.items():
                for form, engine in engines.items():
                    name = f"{form}_{size}"
                    rounds.setdefault(name, [])
                    await _redis_cpu_per_read(pid, partial(decide, engine, batch), rounds, name)
    finally:
        await wire.close()
        await redis.aclose()
    return {name: sum(values) / len(values) for name, values in rounds.items()}


def measure(
    run: Run,
    env: Environment,
    group: str,
    tenant: str,
    contact: Callable[[int], decision_pb2.DecisionRequest],
) -> None:
    # Each record has a device and a client attempt set: half the limit in records is a
    # read at the limit, the largest that goes as MULTI/EXEC.
    at_limit = TRANSACTION_MAX_ATTEMPT_SETS // 2
    batches = {
        "one_record": [contact(7)],
        f"{at_limit}_records": [contact(n) for n in range(at_limit)],
    }
    costs = asyncio.run(_measure(env, tenant, batches))
    ping = run.record(
        Figure(
            group,
            "redis_cpu_us_per_ping",
            costs["ping"],
            "µs",
            note=f"raw Redis: CPU time of the Redis server per PING, one every "
            f"{PACE_SECONDS * 1e3:.1f} ms, {ROUNDS} rounds of {READS:,} taken in turn with "
            "the decision reads below",
        )
    )
    for size, batch in batches.items():
        for form, how in (
            ("transaction", "plain commands in MULTI/EXEC (the engine's form for this size)"),
            ("script", "the Lua script (the engine's form above the limit)"),
        ):
            run.record(
                Figure(
                    group,
                    f"redis_cpu_us_per_read_{form}_{size}",
                    costs[f"{form}_{size}"],
                    "µs",
                    ping.key,
                    note=f"CPU time of the Redis server per decision read of {len(batch)} "
                    f"record(s) as {how}, paced as the PINGs, in the same turns",
                )
            )
