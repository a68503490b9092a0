"""Contact attempts in Postgres, mirrored to the Redis counters decisions read.

Postgres is written first and Redis after the commit, so an attempt a dialer was told is
recorded survives a lost or failed-over Redis: the rebuild replays every attempt within the
retention (`restore_mirror`). If the Redis write fails after the commit, the attempts are
noted as a gap in Postgres and written by the next `repair_mirror` of any replica. If
Postgres fails, the attempts are counted in Redis all the same and kept there until a
replica's `store_unstored` stores them. Each write carries the row's revision, so a replay
never undoes a report written after the replay read the row.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter

import asyncpg

from cxmesh_server.compliance.metrics import count_deferred
from cxmesh_server.compliance.mirror import ATTEMPT_RETENTION, RecordedAttempt, RulesMirror
from cxmesh_server.runtime.errors import Unavailable
from cxmesh_server.runtime.logging import repeating
from cxmesh_server.runtime.postgres import POSTGRES_OUTAGES, tenant_transaction
from cxmesh_server.runtime.redis import REDIS_OUTAGES
from cxmesh_server.runtime.server import run_to_completion

log = logging.getLogger(__name__)

# Rows written to Redis per pipeline while restoring.
RESTORE_CHUNK = 1000
# Rows deleted per statement while pruning, so a prune never holds many locks for long.
PRUNE_CHUNK = 10_000
# Gaps repaired per pass.
REPAIR_CHUNK = 100
# Unstored reports of a tenant stored per pass.
UNSTORED_CHUNK = 100


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """One report of a contact attempt: the first, or one that replaces it (same id)."""

    attempt_id: str
    device: str
    client_id: str
    call_result: int
    channel: int
    attempt_time: datetime
    # When the report reached cxmesh: of two reports of an attempt, the later one's result
    # stands, whatever order they are stored in (one kept while Postgres failed).
    reported_at: datetime


# Later reports of an attempt keep its first time and take the last result and channel;
# devices and client ids accumulate, so no device loses an attempt a report gave it. A
# report in progress (result 0) after the attempt's result is a late start report (OCS
# sequence 0 after 1): it changes nothing, or a result that does not count would count.
# Nor does a result that reached us before the result the row holds (kept while Postgres
# failed, stored after a newer one); a result always replaces "in progress", whatever the
# replicas' clocks say of their order.
_RECORD = """
INSERT INTO compliance.attempts AS a
    (tenant_id, attempt_id, devices, client_ids, call_result, channel, attempt_time, revision,
     reported_at)
SELECT current_setting('cxmesh.tenant'), r.attempt_id, ARRAY[r.device],
       CASE WHEN r.client_id = '' THEN '{}'::text[] ELSE ARRAY[r.client_id] END,
       r.call_result, r.channel, r.attempt_time, nextval('compliance.attempt_revisions'),
       r.reported_at
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[],
    $7::timestamptz[]
) AS r(attempt_id, device, client_id, call_result, channel, attempt_time, reported_at)
ON CONFLICT (tenant_id, attempt_id) DO UPDATE SET
    devices = ARRAY(SELECT DISTINCT d FROM unnest(a.devices || excluded.devices) AS d ORDER BY d),
    client_ids = ARRAY(
        SELECT DISTINCT c FROM unnest(a.client_ids || excluded.client_ids) AS c ORDER BY c
    ),
    call_result = excluded.call_result,
    channel = excluded.channel,
    revision = excluded.revision,
    reported_at = excluded.reported_at
WHERE a.call_result = 0
    OR (excluded.call_result <> 0 AND (a.reported_at IS NULL OR excluded.reported_at >= a.reported_at))
RETURNING attempt_id, devices, client_ids, call_result, channel, attempt_time, revision,
    xmax = 0 AS inserted
"""

_COLUMNS = "attempt_id, devices, client_ids, call_result, channel, attempt_time, revision"


def _recorded(row: asyncpg.Record) -> RecordedAttempt:
    return RecordedAttempt(
        attempt_id=row["attempt_id"],
        devices=tuple(row["devices"]),
        client_ids=tuple(row["client_ids"]),
        call_result=row["call_result"],
        channel=row["channel"],
        attempt_time=row["attempt_time"],
        revision=row["revision"],
    )


def _as_reported(report: AttemptReport) -> RecordedAttempt:
    return RecordedAttempt(
        attempt_id=report.attempt_id,
        devices=(report.device,),
        client_ids=(report.client_id,) if report.client_id else (),
        call_result=report.call_result,
        channel=report.channel,
        attempt_time=report.attempt_time,
        revision=0,
    )


def _kept(report: AttemptReport) -> str:
    return json.dumps(
        [
            report.attempt_id,
            report.device,
            report.client_id,
            report.call_result,
            report.channel,
            report.attempt_time.isoformat(),
            report.reported_at.isoformat(),
        ]
    )


def _unkept(value: str) -> AttemptReport:
    attempt_id, device, client_id, call_result, channel, attempt_time, *reported = json.loads(value)
    return AttemptReport(
        attempt_id=attempt_id,
        device=device,
        client_id=client_id,
        call_result=call_result,
        channel=channel,
        attempt_time=datetime.fromisoformat(attempt_time),
        # Kept before reports carried it: the attempt's time is when it was reported.
        reported_at=datetime.fromisoformat(reported[0] if reported else attempt_time),
    )


def _readable(tenant: str, kept: Sequence[str]) -> list[AttemptReport]:
    reports = []
    for value in kept:
        try:
            reports.append(_unkept(value))
        except (ValueError, TypeError):
            log.error("an unreadable kept attempt report dropped", extra={"tenant": tenant})
    return reports


def _unavailable(error: Exception) -> Unavailable:
    return Unavailable(
        f"attempts could not be recorded ({type(error).__name__}); report them again"
    )


def _rounds(reports: Sequence[AttemptReport]) -> list[list[AttemptReport]]:
    """The reports in rounds that name an attempt once each (one statement cannot update a
    row twice), in report order; each round sorted by attempt id, so that two batches lock
    their rows in one order and cannot deadlock (a later round relocks only its own rows)."""
    rounds: list[list[AttemptReport]] = []
    seen: dict[str, int] = {}
    for report in reports:
        position = seen.get(report.attempt_id, 0)
        seen[report.attempt_id] = position + 1
        if position == len(rounds):
            rounds.append([])
        rounds[position].append(report)
    return [sorted(r, key=attrgetter("attempt_id")) for r in rounds]


class AttemptStore:
    def __init__(self, pool: asyncpg.Pool, mirror: RulesMirror) -> None:
        self.pool = pool
        self.mirror = mirror

    async def record(self, tenant: str, reports: Sequence[AttemptReport]) -> int:
        """Records the reports, in order; returns how many attempts were new. Raises
        Unavailable when Postgres or Redis fails to take them: reporting again is safe.

        A caller that stops waiting (its deadline passed) does not stop the recording: a
        dialer may never report the attempts again, and half a recording (stored, not
        counted) would allow them until Redis is rebuilt."""
        return await run_to_completion(self._record(tenant, reports))

    async def _record(self, tenant: str, reports: Sequence[AttemptReport]) -> int:
        try:
            latest, new = await self._commit(tenant, reports)
        except Exception as error:
            # Counted all the same, as reported (revision 0: the first write Postgres takes
            # replaces it), or every attempt made while Postgres fails would be allowed;
            # and kept until Postgres takes them, as a dialer may never report them again.
            log.warning(
                "attempts not stored: Postgres failed; counting them in Redis until it is back",
                extra=repeating(tenant=tenant, count=len(reports), error=type(error).__name__),
            )
            with suppress(*REDIS_OUTAGES):
                await self.mirror.keep_unstored(tenant, [_kept(r) for r in reports])
                count_deferred(tenant, "postgres", "deferred", len(reports))
                await self.mirror.record_attempts(tenant, [_as_reported(r) for r in reports])
            if isinstance(error, POSTGRES_OUTAGES):
                raise _unavailable(error) from error
            raise
        try:
            await self.mirror.record_attempts(tenant, latest)
        except REDIS_OUTAGES as error:
            log.warning(
                "attempts stored but not counted yet: Redis failed; noting a gap",
                extra=repeating(tenant=tenant, count=len(latest), error=type(error).__name__),
            )
            # If Postgres is gone too, only the dialer's next report can count them.
            with suppress(*POSTGRES_OUTAGES):
                await self._note_gap(tenant, [a.attempt_id for a in latest])
                count_deferred(tenant, "redis", "deferred", len(latest))
            raise _unavailable(error) from error
        return new

    async def _commit(
        self, tenant: str, reports: Sequence[AttemptReport]
    ) -> tuple[list[RecordedAttempt], int]:
        """The attempts as Postgres holds them after the reports, and how many are new."""
        latest: dict[str, RecordedAttempt] = {}
        new = 0
        async with tenant_transaction(self.pool, tenant) as db:
            for batch in _rounds(reports):
                rows = await db.fetch(
                    _RECORD,
                    [r.attempt_id for r in batch],
                    [r.device for r in batch],
                    [r.client_id for r in batch],
                    [r.call_result for r in batch],
                    [r.channel for r in batch],
                    [r.attempt_time for r in batch],
                    [r.reported_at for r in batch],
                )
                for row in rows:
                    new += row["inserted"]
                    latest[row["attempt_id"]] = _recorded(row)
        return list(latest.values()), new

    async def _note_gap(self, tenant: str, attempt_ids: list[str]) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            await db.execute(
                "INSERT INTO compliance.attempt_mirror_gaps (tenant_id, attempt_ids)"
                " VALUES (current_setting('cxmesh.tenant'), $1)",
                attempt_ids,
            )

    async def repair_mirror(self) -> int:
        """Writes the attempts of the oldest gaps into Redis, as Postgres now holds them,
        and deletes those gaps; returns how many gaps. Replicas repairing one gap at once
        write the same rows twice, which is harmless."""
        async with self.pool.acquire() as db:
            gaps = await db.fetch("SELECT * FROM compliance.attempt_mirror_gaps($1)", REPAIR_CHUNK)
        for gap in gaps:
            async with tenant_transaction(self.pool, gap["tenant_id"]) as db:
                rows = await db.fetch(
                    f"SELECT {_COLUMNS} FROM compliance.attempts WHERE attempt_id = ANY($1)",
                    gap["attempt_ids"],
                )
                await self.mirror.record_attempts(gap["tenant_id"], [_recorded(r) for r in rows])
                deleted = await db.execute(
                    "DELETE FROM compliance.attempt_mirror_gaps WHERE gap_id = $1", gap["gap_id"]
                )
            if deleted == "DELETE 1":  # not a replica that repaired it at the same time
                count_deferred(gap["tenant_id"], "redis", "caught_up", len(gap["attempt_ids"]))
        return len(gaps)

    async def store_unstored(self) -> int:
        """Stores the oldest reports counted in Redis alone while Postgres failed, and
        writes their attempts as Postgres then holds them; returns how many reports.
        Replicas storing one report at once store it twice, which changes nothing."""
        handled = 0
        for tenant, kept in await self.mirror.unstored(UNSTORED_CHUNK):
            since = datetime.now(UTC) - ATTEMPT_RETENTION
            # Older ones count against no limit and would be pruned.
            reports = [r for r in _readable(tenant, kept) if r.attempt_time >= since]
            try:
                await self._store(tenant, reports)
                stored = len(reports)
            except POSTGRES_OUTAGES:
                raise  # Postgres still failing: the next turn tries again
            except Exception:
                # One report Postgres refuses for good must not hold up the others.
                stored = 0
                for report in reports:
                    stored += await self._store_or_drop(tenant, report)
            # Counted by the replica that removed them, or replicas storing at once would
            # count them twice.
            removed = await self.mirror.forget_unstored(tenant, kept)
            count_deferred(tenant, "postgres", "caught_up", min(stored, removed))
            count_deferred(tenant, "postgres", "dropped", removed - min(stored, removed))
            handled += len(kept)
        return handled

    async def _store(self, tenant: str, reports: Sequence[AttemptReport]) -> None:
        if reports:
            latest, _ = await self._commit(tenant, reports)
            await self.mirror.record_attempts(tenant, latest)

    async def _store_or_drop(self, tenant: str, report: AttemptReport) -> bool:
        """Whether the report was stored; one Postgres refuses is logged and dropped."""
        try:
            await self._store(tenant, [report])
        except POSTGRES_OUTAGES:
            raise
        except Exception:
            log.error(
                "a kept attempt report Postgres refuses; it stays counted in Redis only",
                extra={"tenant": tenant, "attempt_id": report.attempt_id[:64]},
                exc_info=True,
            )
            return False
        return True

    async def restore_mirror(self) -> int:
        """Writes every attempt within the retention into Redis; returns how many."""
        since = datetime.now(UTC) - ATTEMPT_RETENTION
        async with self.pool.acquire() as db:
            tenants = [
                r["tenant_id"]
                for r in await db.fetch("SELECT tenant_id FROM compliance.attempt_tenants()")
            ]
        restored = 0
        for tenant in tenants:
            async with tenant_transaction(self.pool, tenant) as db:
                query = f"SELECT {_COLUMNS} FROM compliance.attempts WHERE attempt_time >= $1"
                rows = await db.cursor(query, since)
                # Each chunk is written while the next is read.
                writing: asyncio.Task[None] | None = None
                while chunk := [_recorded(r) for r in await rows.fetch(RESTORE_CHUNK)]:
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self.mirror.record_attempts(tenant, chunk))
                    restored += len(chunk)
                if writing is not None:
                    await writing
        return restored

    async def prune(self) -> int:
        """Deletes the attempts older than the retention, of every tenant; returns how
        many."""
        before = datetime.now(UTC) - ATTEMPT_RETENTION
        pruned = 0
        async with self.pool.acquire() as db:
            while True:
                count: int = await db.fetchval(
                    "SELECT compliance.prune_attempts($1, $2)", before, PRUNE_CHUNK
                )
                pruned += count
                if count < PRUNE_CHUNK:
                    return pruned
