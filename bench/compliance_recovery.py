"""How long decisions deny after compliance's Redis loses everything (a restart without
persistence, or a failover to a replica without the data): every mirror is rebuilt from
Postgres by the services' own keepers, the suppression entries and a week of attempts
included. Destructive: run it last."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import grpc
import redis
from redis.asyncio import Redis

from bench.baselines import GROUP as BASELINE
from bench.environment import Environment
from bench.harness import Figure, Run
from cxmesh.compliance.v1 import decision_pb2, decision_service_pb2, decision_service_pb2_grpc
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.mirror import LOADED_KEY as RULES_LOADED
from cxmesh_server.iam.store import LOADED_KEY as IAM_LOADED
from cxmesh_server.mirrors.suppression import LOADED_KEY as SUPPRESSION_LOADED

# Each mirror's loaded marker, by what the figure's note calls it.
MARKERS = {
    "API keys and tenant settings": IAM_LOADED,
    "suppression": SUPPRESSION_LOADED,
    "rules and attempts": RULES_LOADED,
}

ATTEMPTS = 200_000
# Devices the attempts spread over, two or three attempts each.
DEVICES = 80_000
RECOVERY_TIMEOUT_SECONDS = 600
# The contact that reached its limit: 7 attempts in the last day (the bench's 7-in-7 rule).
LIMITED = 9001
LIMIT = 7


async def _attempts_of_a_week(env: Environment, tenant: str, limited_address: str) -> None:
    """What a dialer's week of reports leaves in Postgres (written straight into the table:
    the setup, not the figure)."""
    connection = await asyncpg.connect(env.postgres.dsn)
    try:
        await connection.execute(
            """
            INSERT INTO compliance.attempts
                (tenant_id, attempt_id, devices, client_ids, call_result, channel, attempt_time,
                 revision)
            SELECT $1, 'recovery-' || n, ARRAY['+1646' || (5550000 + n % $3)::text], '{}',
                $4, $5, now() - (n % 604000) * interval '1 second',
                nextval('compliance.attempt_revisions')
            FROM generate_series(0, $2 - 1) AS n
            """,
            tenant,
            ATTEMPTS - LIMIT,
            DEVICES,
            call_result_pb2.CALL_RESULT_NO_ANSWER,
            channel_pb2.CHANNEL_VOICE,
        )
        await connection.execute(
            """
            INSERT INTO compliance.attempts
                (tenant_id, attempt_id, devices, client_ids, call_result, channel, attempt_time,
                 revision)
            SELECT $1, 'recovery-limited-' || n, ARRAY[$2], '{}', $3, $4,
                now() - n * interval '1 hour', nextval('compliance.attempt_revisions')
            FROM generate_series(1, $5) AS n
            """,
            tenant,
            limited_address,
            call_result_pb2.CALL_RESULT_NO_ANSWER,
            channel_pb2.CHANNEL_VOICE,
            LIMIT,
        )
    finally:
        await connection.close()


async def _lose_redis(env: Environment) -> None:
    redis = Redis.from_url(env.redis.url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()


def _decision(
    decisions: decision_service_pb2_grpc.DecisionServiceStub,
    request: decision_pb2.DecisionRequest,
    admin: tuple[tuple[str, str], ...],
) -> decision_pb2.Decision | None:
    """The decision, or None while the edge or the service cannot answer."""
    try:
        return decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=request),
            metadata=admin,
            timeout=5,
        ).decision
    except grpc.RpcError:
        return None


def measure(
    run: Run,
    env: Environment,
    group: str,
    tenant: str,
    admin: tuple[tuple[str, str], ...],
    contact: Callable[[int], decision_pb2.DecisionRequest],
) -> None:
    limited = contact(LIMITED)
    asyncio.run(_attempts_of_a_week(env, tenant, limited.contact.address))
    allowed = contact(LIMITED + 1)
    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
        before = _decision(decisions, allowed, admin)
        assert before is not None and before.allowed, before
        lost = time.perf_counter()
        asyncio.run(_lose_redis(env))
        denied = _decision(decisions, allowed, admin)
        assert denied is None or not denied.allowed, denied  # fail closed at once
        markers = redis.Redis(port=env.redis.port)
        loaded: dict[str, float] = {}  # mirror → seconds after the loss
        while True:
            for mirror, key in MARKERS.items():  # before the decision, which may end it
                if mirror not in loaded and markers.exists(key):
                    loaded[mirror] = time.perf_counter() - lost
            decision = _decision(decisions, allowed, admin)
            if decision is not None and decision.allowed:
                break
            if time.perf_counter() - lost > RECOVERY_TIMEOUT_SECONDS:
                raise RuntimeError(f"decisions still denied: {decision}")
            time.sleep(0.05)
        recovered = time.perf_counter() - lost
        markers.close()
        rebuilt = ", ".join(f"{mirror} {seconds:.2f} s" for mirror, seconds in loaded.items())
        counted = _decision(decisions, limited, admin)
    assert counted is not None and [d.code for d in counted.denials] == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ], counted  # the attempts came back from Postgres
    run.record(
        Figure(
            group,
            "recovery_after_redis_lost_seconds",
            recovered,
            "s",
            f"{BASELINE}.postgres_copy_seconds",
            note=f"FLUSHALL of Redis → first decision allowed again, every mirror rebuilt from "
            f"Postgres by the services' keepers: 1,000,000 suppression entries and "
            f"{ATTEMPTS:,} attempts of the last 7 days (decisions denied meanwhile; a contact "
            f"with {LIMIT} attempts in Postgres only is denied its attempt limit after); "
            f"marked loaded after: {rebuilt}",
        )
    )
