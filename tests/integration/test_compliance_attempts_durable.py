"""Attempts are recorded in Postgres before Redis counts them, so a Redis that lost them
(restarted empty, or a promoted replica without the last writes) gets every attempt back
when the mirrors are rebuilt, and attempt limits hold across it (real Postgres, real
Redis)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.compliance.attempts import (
    RESTORE_CHUNK,
    UNSTORED_CHUNK,
    AttemptReport,
    AttemptStore,
    _kept,
)
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.mirror import (
    ATTEMPT_RETENTION,
    SCRIPT_ATTEMPTS,
    RulesMirror,
    attempts_key,
    rules_key,
    version_key,
)
from cxmesh_server.compliance.store import RESTORE_LOCK, RuleSetStore
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.errors import Unavailable
from cxmesh_server.runtime.logging import configure_logging
from cxmesh_server.runtime.postgres import APP_ROLE, tenant_transaction
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedPostgres, EmbeddedRedis, start_redis
from tests.integration.compliance_mirrors import (
    compliance_pool,
    mark_loaded,
    record_without_postgres,
)

BUSY = call_result_pb2.CALL_RESULT_BUSY
IN_PROGRESS = call_result_pb2.CALL_RESULT_UNSPECIFIED
ANSWER = call_result_pb2.CALL_RESULT_ANSWER


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The process's logs as a service writes them (JSON, repeats limited)."""
    root = logging.getLogger()
    kept, level = root.handlers[:], root.level
    configure_logging("compliance")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:] = kept
    root.setLevel(level)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own, free to be emptied."""
    server = start_redis(tmp_path / "redis", persist=False)
    yield server
    server.stop()


@dataclass
class Compliance:
    """Compliance's stores on real Postgres and Redis, the suppression mirror marked loaded
    as the lists service leaves it."""

    pool: asyncpg.Pool
    rules: RuleSetStore
    wire: WireRedis

    @property
    def attempts(self) -> AttemptStore:
        return self.rules.attempts

    async def decide(self, tenant: str, address: str) -> decision_pb2.Decision:
        contact = decision_pb2.Contact(address=address, time_zone="America/Denver")
        engine = DecisionEngine(self.rules.mirror.redis, self.wire)
        (decision,) = await engine.decide(tenant, [decision_pb2.DecisionRequest(contact=contact)])
        return decision

    async def lose_redis(self) -> None:
        """What a restart without persistence leaves: nothing."""
        redis = self.rules.mirror.redis
        await redis.flushall()
        await mark_loaded(suppression.SuppressionMirror(redis))  # the lists service's part


@pytest.fixture
async def compliance(
    postgres: EmbeddedPostgres, own_redis: EmbeddedRedis
) -> AsyncIterator[Compliance]:
    pool = await compliance_pool(postgres.dsn)
    redis = create_redis(own_redis.url)
    mirror = RulesMirror(redis)
    await mark_loaded(suppression.SuppressionMirror(redis))
    wire = WireRedis(own_redis.url)
    yield Compliance(pool, RuleSetStore(pool, mirror, AttemptStore(pool, mirror)), wire)
    await wire.close()
    await redis.aclose()
    await pool.close()


async def _one_attempt_a_day(compliance: Compliance, tenant: str) -> None:
    rules = rule_set_pb2.RuleSet(display_name="one a day")
    rules.contact_windows.add().end_time.hours = 24
    limit = rules.attempt_rules.add(max_attempts=1, scope=rule_set_pb2.ATTEMPT_SCOPE_DEVICE)
    limit.window.FromTimedelta(timedelta(days=1))
    await compliance.rules.create(tenant, "test", rules, "")
    await compliance.rules.rebuild_mirror()


def _report(
    attempt_id: str,
    device: str,
    call_result: int = BUSY,
    when: datetime | None = None,
    client_id: str = "",
) -> AttemptReport:
    return AttemptReport(
        attempt_id=attempt_id,
        device=device,
        client_id=client_id,
        call_result=call_result,
        channel=channel_pb2.CHANNEL_VOICE,
        attempt_time=when or datetime.now(UTC),
        reported_at=when or datetime.now(UTC),
    )


async def _device_history(compliance: Compliance, tenant: str, device: str) -> list[str]:
    """The attempts Redis counts for the device, as `attempt id|result|channel`."""
    history = await compliance.rules.mirror.redis.zrange(
        attempts_key(tenant, "device", device), 0, -1
    )
    return [str(member) for member in history]


def _deferred(tenant: str, store: str, event: str) -> float:
    """What the process's /metrics says (each test has its own tenant)."""
    sample = REGISTRY.get_sample_value(
        "cxmesh_compliance_deferred_attempts_total",
        {"tenant": tenant, "store": store, "event": event},
    )
    return sample or 0.0


def _codes(decision: decision_pb2.Decision) -> list[int]:
    return [d.code for d in decision.denials]


async def test_attempts_a_lost_redis_had_count_again_once_the_mirrors_are_rebuilt(
    compliance: Compliance,
) -> None:
    tenant = "durable-lost"
    await _one_attempt_a_day(compliance, tenant)
    assert await compliance.attempts.record(tenant, [_report("a1", "+14155550201")]) == 1
    assert _codes(await compliance.decide(tenant, "+14155550201")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]

    await compliance.lose_redis()
    assert _codes(await compliance.decide(tenant, "+14155550201")) == [
        decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE
    ]
    await compliance.rules.rebuild_mirror()
    assert _codes(await compliance.decide(tenant, "+14155550201")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
    assert (await compliance.decide(tenant, "+14155550202")).allowed  # no attempt of its own


async def test_a_rebuild_of_a_redis_that_kept_its_data_replays_nothing(
    compliance: Compliance,
) -> None:
    tenant = "durable-kept"
    await _one_attempt_a_day(compliance, tenant)
    await compliance.attempts.record(tenant, [_report("k1", "+14155550211")])
    # Gone from Redis alone (as no writer would do): a rebuild of loaded mirrors keeps
    # to the rules, so a replica's start does not replay a month of attempts.
    redis = compliance.rules.mirror.redis
    await redis.delete(attempts_key(tenant, "device", "+14155550211"))
    await compliance.rules.rebuild_mirror()
    assert (await compliance.decide(tenant, "+14155550211")).allowed


async def test_every_report_of_an_attempt_is_one_attempt_with_its_first_time_and_last_result(
    compliance: Compliance,
) -> None:
    tenant = "durable-reports"
    first = datetime.now(UTC) - timedelta(minutes=5)
    reports = [
        _report("r1", "+14155550221", IN_PROGRESS, first),
        _report("r1", "+14155550221", BUSY, first + timedelta(minutes=1), client_id="c-221"),
        # The start report again, arriving late: it changes nothing.
        _report("r1", "+14155550221", IN_PROGRESS, first + timedelta(minutes=2)),
    ]
    assert await compliance.attempts.record(tenant, reports) == 1
    assert await compliance.attempts.record(tenant, reports[1:]) == 0
    async with tenant_transaction(compliance.pool, tenant) as db:
        rows = await db.fetch("SELECT * FROM compliance.attempts")
    assert [
        (r["attempt_id"], r["devices"], r["client_ids"], r["call_result"], r["attempt_time"])
        for r in rows
    ] == [("r1", ["+14155550221"], ["c-221"], BUSY, first)]
    redis = compliance.rules.mirror.redis
    for key in (
        attempts_key(tenant, "device", "+14155550221"),
        attempts_key(tenant, "client", "c-221"),
    ):
        assert await redis.zrange(key, 0, -1, withscores=True) == [
            (f"r1|{BUSY}|{channel_pb2.CHANNEL_VOICE}", int(first.timestamp() * 1000))
        ]


async def test_attempts_older_than_the_retention_are_pruned_and_not_replayed(
    compliance: Compliance,
) -> None:
    tenant = "durable-prune"
    now = datetime.now(UTC)
    old = now - ATTEMPT_RETENTION - timedelta(hours=1)
    await compliance.attempts.record(
        tenant, [_report("old", "+14155550231", when=old), _report("new", "+14155550232")]
    )
    await compliance.lose_redis()
    assert await compliance.attempts.restore_mirror() >= 1
    redis = compliance.rules.mirror.redis
    assert not await redis.exists(attempts_key(tenant, "device", "+14155550231"))
    assert await redis.exists(attempts_key(tenant, "device", "+14155550232"))

    assert await compliance.attempts.prune() >= 1
    async with tenant_transaction(compliance.pool, tenant) as db:
        kept = await db.fetch("SELECT attempt_id FROM compliance.attempts")
    assert [r["attempt_id"] for r in kept] == ["new"]


async def test_attempts_committed_while_redis_was_unreachable_are_written_by_the_repair(
    compliance: Compliance, tmp_path: Path
) -> None:
    tenant = "durable-gap"
    await _one_attempt_a_day(compliance, tenant)
    stopped = start_redis(tmp_path / "stopped", persist=False)
    stopped.stop()  # what a replica cut off from Redis reaches: nothing
    cut_off = create_redis(stopped.url)
    on_cut_off_replica = AttemptStore(compliance.pool, RulesMirror(cut_off))
    with pytest.raises(Unavailable):
        await on_cut_off_replica.record(tenant, [_report("g1", "+14155550241")])
    await cut_off.aclose()
    # Committed, not counted yet (a dialer that does not report again is common).
    assert (await compliance.decide(tenant, "+14155550241")).allowed

    assert _deferred(tenant, "redis", "deferred") == 1
    assert await compliance.attempts.repair_mirror() >= 1
    assert _codes(await compliance.decide(tenant, "+14155550241")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
    assert await compliance.attempts.repair_mirror() == 0  # the gap is closed
    assert _deferred(tenant, "redis", "caught_up") == 1


async def test_attempts_reported_while_postgres_is_unreachable_count_at_once(
    compliance: Compliance,
) -> None:
    tenant = "durable-no-postgres"
    await _one_attempt_a_day(compliance, tenant)
    await record_without_postgres(compliance.rules.mirror, tenant, [_report("p1", "+14155550251")])
    assert _codes(await compliance.decide(tenant, "+14155550251")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
    # Reported again once Postgres is back: stored, and still one attempt.
    assert await compliance.attempts.record(tenant, [_report("p1", "+14155550251")]) == 1
    assert await _device_history(compliance, tenant, "+14155550251") == [
        f"p1|{BUSY}|{channel_pb2.CHANNEL_VOICE}"
    ]


async def test_a_postgres_outage_under_a_busy_dialer_is_one_warning_a_period_not_one_a_report(
    compliance: Compliance, json_logs: io.StringIO
) -> None:
    tenant = "durable-outage-logs"
    for n in range(50):
        await record_without_postgres(
            compliance.rules.mirror, tenant, [_report(f"o{n}", "+14155550261")]
        )
    warnings = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert [w["message"] for w in warnings] == [
        "attempts not stored: Postgres failed; counting them in Redis until it is back"
    ]
    assert "4155550261" not in json_logs.getvalue()
    assert _deferred(tenant, "postgres", "deferred") == 50  # every one counted all the same


async def test_attempts_reported_while_postgres_is_unreachable_are_stored_once_it_is_back(
    compliance: Compliance,
) -> None:
    """OCS does not report an attempt again, so the attempts counted in Redis alone are
    kept there until Postgres takes them: a later loss of Redis still has them."""
    tenant = "durable-stored-later"
    await _one_attempt_a_day(compliance, tenant)
    await record_without_postgres(
        compliance.rules.mirror, tenant, [_report("s1", "+14155550261", client_id="c-261")]
    )

    assert _deferred(tenant, "postgres", "deferred") == 1
    assert await compliance.attempts.store_unstored() == 1
    assert await compliance.attempts.store_unstored() == 0  # stored once
    assert _deferred(tenant, "postgres", "caught_up") == 1
    async with tenant_transaction(compliance.pool, tenant) as db:
        rows = await db.fetch("SELECT devices, client_ids FROM compliance.attempts")
    assert [(r["devices"], r["client_ids"]) for r in rows] == [(["+14155550261"], ["c-261"])]
    await compliance.lose_redis()
    await compliance.rules.rebuild_mirror()
    assert _codes(await compliance.decide(tenant, "+14155550261")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]


async def test_a_kept_report_stored_after_a_newer_report_of_its_attempt_leaves_its_result(
    compliance: Compliance,
) -> None:
    """Reported while Postgres failed, then the attempt's result reported again once it
    was back: the older report, stored last, must not undo the newer result."""
    tenant = "durable-kept-older"
    await _one_attempt_a_day(compliance, tenant)
    reported = datetime.now(UTC) - timedelta(seconds=30)
    older = _report("o1", "+14155550271", ANSWER, reported)
    await record_without_postgres(compliance.rules.mirror, tenant, [older])
    newer = _report("o1", "+14155550271", BUSY, reported + timedelta(seconds=10))
    await compliance.attempts.record(tenant, [newer])

    assert await compliance.attempts.store_unstored() == 1
    async with tenant_transaction(compliance.pool, tenant) as db:
        rows = await db.fetch("SELECT call_result FROM compliance.attempts")
    assert [r["call_result"] for r in rows] == [BUSY]
    assert await _device_history(compliance, tenant, "+14155550271") == [
        f"o1|{BUSY}|{channel_pb2.CHANNEL_VOICE}"
    ]


async def test_a_result_replaces_in_progress_whatever_the_replicas_clocks_say(
    compliance: Compliance,
) -> None:
    """The start report reached one replica, the result another whose clock is behind."""
    tenant = "durable-skewed"
    started = datetime.now(UTC)
    await compliance.attempts.record(tenant, [_report("k1", "+14155550273", IN_PROGRESS, started)])
    ended = _report("k1", "+14155550273", BUSY, started - timedelta(milliseconds=200))
    await compliance.attempts.record(tenant, [ended])
    async with tenant_transaction(compliance.pool, tenant) as db:
        assert await db.fetchval("SELECT call_result FROM compliance.attempts") == BUSY


async def test_a_report_kept_by_the_previous_version_is_stored_as_reported_at_its_time(
    compliance: Compliance,
) -> None:
    """Kept before reports carried when they reached us (a rolling upgrade during a
    Postgres outage): six fields, stored all the same."""
    tenant = "durable-kept-before"
    made = datetime.now(UTC) - timedelta(minutes=1)
    kept = json.dumps(["v1", "+14155550272", "", BUSY, channel_pb2.CHANNEL_VOICE, made.isoformat()])
    await compliance.rules.mirror.keep_unstored(tenant, [kept])

    assert await compliance.attempts.store_unstored() == 1
    async with tenant_transaction(compliance.pool, tenant) as db:
        rows = await db.fetch(
            "SELECT attempt_id, call_result, reported_at FROM compliance.attempts"
        )
    assert [tuple(r) for r in rows] == [("v1", BUSY, made)]


async def test_replicas_storing_the_same_unstored_attempts_at_once_lose_none(
    compliance: Compliance,
) -> None:
    tenant = "durable-stored-racing"
    await _one_attempt_a_day(compliance, tenant)
    # More than one replica's turn takes.
    reports = [_report(f"r{n}", f"+1415556{n:04d}") for n in range(3 * UNSTORED_CHUNK // 2)]
    await record_without_postgres(compliance.rules.mirror, tenant, reports)

    other_replica = AttemptStore(compliance.pool, compliance.rules.mirror)
    while sum(
        await asyncio.gather(compliance.attempts.store_unstored(), other_replica.store_unstored())
    ):
        pass
    async with tenant_transaction(compliance.pool, tenant) as db:
        stored = await db.fetchval("SELECT count(*) FROM compliance.attempts")
    assert stored == 3 * UNSTORED_CHUNK // 2
    assert _deferred(tenant, "postgres", "caught_up") == stored  # once each, not per replica


async def test_a_kept_report_postgres_refuses_for_good_holds_up_no_other(
    compliance: Compliance,
) -> None:
    tenant = "durable-refused"
    await _one_attempt_a_day(compliance, tenant)
    mirror = compliance.rules.mirror
    await record_without_postgres(mirror, tenant, [_report("good-1", "+14155550291")])
    # What no call can leave (they refuse NUL), and what another version might.
    await mirror.keep_unstored(tenant, [_kept(_report("nul\x00", "+14155550292")), "[1, 2]"])
    await record_without_postgres(mirror, tenant, [_report("good-2", "+14155550293")])

    assert await compliance.attempts.store_unstored() == 4
    assert await compliance.attempts.store_unstored() == 0
    assert _deferred(tenant, "postgres", "caught_up") == 2
    assert _deferred(tenant, "postgres", "dropped") == 2
    async with tenant_transaction(compliance.pool, tenant) as db:
        stored = await db.fetch("SELECT attempt_id FROM compliance.attempts ORDER BY 1")
    assert [r["attempt_id"] for r in stored] == ["good-1", "good-2"]


async def test_a_postgres_that_refuses_writes_counts_the_attempts_as_one_unreachable(
    compliance: Compliance, postgres: EmbeddedPostgres
) -> None:
    """What a pool left on a demoted primary (a hot standby after a failover) meets: the
    attempts count at once, and the dialer is told to report them again."""
    tenant = "durable-read-only"
    await _one_attempt_a_day(compliance, tenant)
    read_only = await asyncpg.create_pool(
        postgres.dsn,
        min_size=0,
        server_settings={"role": APP_ROLE, "default_transaction_read_only": "on"},
    )
    on_standby = AttemptStore(read_only, compliance.rules.mirror)
    with pytest.raises(Unavailable):
        await on_standby.record(tenant, [_report("ro1", "+14155550271")])
    await read_only.close()
    assert _codes(await compliance.decide(tenant, "+14155550271")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
    assert await compliance.attempts.store_unstored() == 1


async def test_attempts_are_recorded_even_if_the_caller_stops_waiting(
    compliance: Compliance,
) -> None:
    """A dialer whose deadline passes (an OCS history POST timing out at Envoy) gets an
    error, and may never report again: what arrived is recorded all the same."""
    tenant = "durable-abandoned"
    await _one_attempt_a_day(compliance, tenant)
    caller = asyncio.create_task(
        compliance.attempts.record(tenant, [_report("x1", "+14155550281")])
    )
    await asyncio.sleep(0)  # the call has begun
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(100):
        if not (await compliance.decide(tenant, "+14155550281")).allowed:
            break
        await asyncio.sleep(0.02)
    assert _codes(await compliance.decide(tenant, "+14155550281")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
    async with tenant_transaction(compliance.pool, tenant) as db:
        assert await db.fetchval("SELECT count(*) FROM compliance.attempts") == 1


async def test_a_replica_that_finds_another_replaying_leaves_the_whole_rebuild_to_it(
    compliance: Compliance,
) -> None:
    """Every waiting replica retries each second for as long as the replay takes (minutes
    for a large tenant): it must not reread every tenant's rules from Postgres each time,
    nor bump their versions (every replica's rules would be recompiled)."""
    tenant = "durable-waiting"
    await _one_attempt_a_day(compliance, tenant)
    await compliance.lose_redis()
    redis = compliance.rules.mirror.redis
    await redis.set(RESTORE_LOCK, "another replica", px=60_000)
    await compliance.rules.rebuild_mirror()
    assert await redis.get(version_key(tenant)) is None
    assert not await redis.exists(rules_key(tenant))
    assert not await compliance.rules.mirror.is_loaded()

    await redis.delete(RESTORE_LOCK)  # its lease lapsed: the next turn takes the rebuild
    await compliance.rules.rebuild_mirror()
    assert await compliance.rules.mirror.is_loaded()
    assert await redis.exists(rules_key(tenant))


async def test_batches_reporting_the_same_attempts_in_any_order_at_once_all_land(
    compliance: Compliance,
) -> None:
    """Each batch locks its attempts' rows in one order, so batches racing over the same
    attempts wait for each other instead of deadlocking (a 500, the attempts uncounted)."""
    tenant = "durable-racing"
    ids = [f"race-{n:03d}" for n in range(200)]

    async def batch(seed: int) -> int:
        order = random.Random(seed).sample(ids, len(ids))
        return await compliance.attempts.record(
            tenant, [_report(i, f"+1415557{int(i[-3:]):04d}") for i in order]
        )

    new = await asyncio.gather(*(batch(seed) for seed in range(8)))
    assert sum(new) == len(ids)  # each attempt new once, whichever batch got it first
    async with tenant_transaction(compliance.pool, tenant) as db:
        assert await db.fetchval("SELECT count(*) FROM compliance.attempts") == len(ids)


async def test_replicas_rebuilding_a_lost_redis_at_once_replay_the_attempts_once(
    compliance: Compliance, own_redis: EmbeddedRedis, postgres: EmbeddedPostgres
) -> None:
    tenant = "durable-one-replay"
    await _one_attempt_a_day(compliance, tenant)
    await compliance.attempts.record(
        tenant, [_report(f"once-{n}", f"+1415558{n:04d}") for n in range(1000)]
    )
    await compliance.lose_redis()
    # What one replay writes: every tenant's attempts of the shared database, 1,000 to a
    # pipeline and SCRIPT_ATTEMPTS to a script run.
    everyone = await asyncpg.connect(postgres.dsn)  # a superuser sees every tenant's rows
    counts = await everyone.fetch(
        "SELECT count(*) AS n FROM compliance.attempts WHERE attempt_time >= $1 GROUP BY tenant_id",
        datetime.now(UTC) - ATTEMPT_RETENTION + timedelta(minutes=1),
    )
    await everyone.close()
    one_replay = sum(
        n // RESTORE_CHUNK * -(-RESTORE_CHUNK // SCRIPT_ATTEMPTS)
        + -(-(n % RESTORE_CHUNK) // SCRIPT_ATTEMPTS)
        for n in (r["n"] for r in counts)
    )
    redis = compliance.rules.mirror.redis
    another = create_redis(own_redis.url)  # another replica's connections
    mirror = RulesMirror(another)
    other_replica = RuleSetStore(compliance.pool, mirror, AttemptStore(compliance.pool, mirror))
    before = (await redis.info("commandstats")).get("cmdstat_evalsha", {"calls": 0})["calls"]
    await asyncio.gather(compliance.rules.rebuild_mirror(), other_replica.rebuild_mirror())
    scripts = (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] - before
    await another.aclose()
    assert one_replay <= scripts < 2 * one_replay  # the attempts went in once
    assert await compliance.rules.mirror.is_loaded()
    assert _codes(await compliance.decide(tenant, "+14155580999")) == [
        decision_pb2.DENIAL_CODE_ATTEMPT_LIMIT
    ]
