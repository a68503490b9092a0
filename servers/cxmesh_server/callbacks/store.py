"""Callbacks in Postgres: services, virtual queues, callbacks, capacity, call-in requests.

Every check that must hold under concurrent creates is made inside the transaction that
writes: duplicates and the per-number throttle under a lock on (service, number), capacity
by a conditional increment of the bucket's count, so it is never oversold.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.domain.capacity import Slot
from cxmesh_server.callbacks.domain.services import ServiceRules, with_defaults
from cxmesh_server.callbacks.domain.states import transition_problem
from cxmesh_server.callbacks.domain.wait import Handled
from cxmesh_server.callbacks.metrics import COMPLETED
from cxmesh_server.runtime.errors import AlreadyExists, FailedPrecondition, NotFound
from cxmesh_server.runtime.postgres import Db, tenant_transaction

S = callback_pb2


class CapacityFull(Exception):
    """The bucket of the desired time has no place left."""


class StaleService(Exception):
    """The service's settings changed since they were read."""


class Refused(Exception):
    """A create refused by a service rule; `kind` says which (duplicate, throttled)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class NewCallback:
    rules: ServiceRules
    phone_number: str
    # The desired time (scheduled) or now (immediate): never earlier than this.
    desired_floor: datetime
    immediate: bool
    priority: int
    user_data: dict[str, object] | None
    push_targets: list[dict[str, str]]
    request_id: str
    # The capacity buckets to book, tried in order.
    buckets: list[datetime]
    # What the per-day throttle counts by: the number unless the service names a header.
    throttle_key: str = ""


@dataclass(frozen=True, slots=True)
class CallbackFilter:
    service_id: str = ""
    states: list[int] = field(default_factory=list)
    phone_number: str = ""  # E.164
    desired_after: datetime | None = None
    desired_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What a wait estimate needs of a queue."""

    queued: int
    agents_logged_in: int
    agents_ready: int
    handled: list[Handled]


def _callback(row: asyncpg.Record, position: int = 0) -> callback_pb2.Callback:
    message = S.Callback(
        name=f"callbacks/{row['callback_id']}",
        callback_service=f"callbackServices/{row['service_id']}",
        phone_number=row["phone_number"],
        state=row["state"],
        reason=row["reason"],
        priority=row["priority"],
        attempt_count=row["attempt_count"],
    )
    message.desired_time.FromDatetime(row["desired_time"])
    message.create_time.FromDatetime(row["create_time"])
    message.update_time.FromDatetime(row["update_time"])
    if row["user_data"]:
        message.user_data.update(json.loads(row["user_data"]))
    for target in json.loads(row["push_targets"] or "[]"):
        message.push_targets.add(channel=target["channel"], target=target["target"])
    if position:
        message.position_in_queue = position
    return message


def _service(row: asyncpg.Record) -> callback_pb2.CallbackServiceConfig:
    message = S.CallbackServiceConfig.FromString(row["body"])
    message.name = f"callbackServices/{row['service_id']}"
    message.create_time.FromDatetime(row["create_time"])
    return message


def _stored_settings(config: callback_pb2.CallbackServiceConfig) -> tuple[str, bytes]:
    """(queue id, body) of settings as stored: defaults written out, output fields dropped."""
    stored = with_defaults(config)
    stored.ClearField("name")
    stored.ClearField("create_time")
    return stored.virtual_queue.removeprefix("virtualQueues/"), stored.SerializeToString()


class CallbackStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # --- callback services -------------------------------------------------------------

    async def create_service(
        self, tenant: str, service_id: str, config: callback_pb2.CallbackServiceConfig
    ) -> callback_pb2.CallbackServiceConfig:
        queue_id, body = _stored_settings(config)
        async with tenant_transaction(self.pool, tenant) as db:
            await self._require_queue(db, queue_id)
            row = await db.fetchrow(
                """
                INSERT INTO callbacks.callback_services (tenant_id, service_id, queue_id, body)
                VALUES (current_setting('cxmesh.tenant'), $1, $2, $3)
                ON CONFLICT DO NOTHING RETURNING *
                """,
                service_id,
                queue_id,
                body,
            )
            if row is None:
                raise AlreadyExists(f"callbackServices/{service_id} already exists")
            return _service(row)

    async def replace_service(
        self, tenant: str, service_id: str, config: callback_pb2.CallbackServiceConfig
    ) -> callback_pb2.CallbackServiceConfig:
        queue_id, body = _stored_settings(config)
        async with tenant_transaction(self.pool, tenant) as db:
            await self._require_queue(db, queue_id)
            row = await db.fetchrow(
                """
                UPDATE callbacks.callback_services SET queue_id = $2, body = $3,
                    version = version + 1, update_time = now()
                WHERE service_id = $1 RETURNING *
                """,
                service_id,
                queue_id,
                body,
            )
            if row is None:
                raise NotFound(f"callbackServices/{service_id} not found")
            return _service(row)

    async def publish_services(
        self, tenant: str, table: list[tuple[str, callback_pb2.CallbackServiceConfig]]
    ) -> tuple[int, list[callback_pb2.CallbackServiceConfig]]:
        """Replaces the tenant's whole table of services in one transaction."""
        names = [service_id for service_id, _ in table]
        async with tenant_transaction(self.pool, tenant) as db:
            version = await db.fetchval(
                """
                INSERT INTO callbacks.service_tables AS t (tenant_id, version)
                VALUES (current_setting('cxmesh.tenant'), 1)
                ON CONFLICT (tenant_id) DO UPDATE SET version = t.version + 1, publish_time = now()
                RETURNING version
                """
            )
            busy = await db.fetch(
                """
                SELECT service_id, count(*) AS active FROM callbacks.callbacks
                WHERE state <> 5 AND NOT (service_id = ANY($1::text[]))
                GROUP BY service_id ORDER BY service_id
                """,
                names,
            )
            if busy:
                raise FailedPrecondition(
                    "these services have active callbacks and cannot be left out: "
                    + ", ".join(f"{r['service_id']} ({r['active']})" for r in busy)
                )
            await db.execute(
                "DELETE FROM callbacks.callback_services WHERE NOT (service_id = ANY($1::text[]))",
                names,
            )
            stored = []
            for service_id, config in table:
                queue_id, body = _stored_settings(config)
                await self._require_queue(db, queue_id)
                row = await db.fetchrow(
                    """
                    INSERT INTO callbacks.callback_services AS s (tenant_id, service_id, queue_id, body)
                    VALUES (current_setting('cxmesh.tenant'), $1, $2, $3)
                    ON CONFLICT (tenant_id, service_id) DO UPDATE SET queue_id = $2, body = $3,
                        version = s.version + 1, update_time = now()
                    RETURNING *
                    """,
                    service_id,
                    queue_id,
                    body,
                )
                assert row is not None
                stored.append(_service(row))
        return int(version), stored

    async def get_service(self, tenant: str, service_id: str) -> callback_pb2.CallbackServiceConfig:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM callbacks.callback_services WHERE service_id = $1", service_id
            )
        if row is None:
            raise NotFound(f"callbackServices/{service_id} not found")
        return _service(row)

    async def service_rules(self, tenant: str, service_id: str) -> ServiceRules:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM callbacks.callback_services WHERE service_id = $1", service_id
            )
        if row is None:
            raise NotFound(f"callbackServices/{service_id} not found")
        return ServiceRules.compile(service_id, _service(row), row["version"])

    async def services_of_queue(self, tenant: str, queue_id: str) -> list[ServiceRules]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                "SELECT * FROM callbacks.callback_services WHERE queue_id = $1 ORDER BY service_id",
                queue_id,
            )
        return [ServiceRules.compile(r["service_id"], _service(r), r["version"]) for r in rows]

    async def list_services(
        self, tenant: str, offset: int, limit: int
    ) -> list[callback_pb2.CallbackServiceConfig]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                "SELECT * FROM callbacks.callback_services ORDER BY service_id OFFSET $1 LIMIT $2",
                offset,
                limit,
            )
        return [_service(r) for r in rows]

    async def delete_service(self, tenant: str, service_id: str) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            active = await db.fetchval(
                "SELECT count(*) FROM callbacks.callbacks WHERE service_id = $1 AND state <> 5",
                service_id,
            )
            if active:
                raise FailedPrecondition(
                    f"callbackServices/{service_id} has {active} active callbacks"
                )
            deleted = await db.execute(
                "DELETE FROM callbacks.callback_services WHERE service_id = $1", service_id
            )
        if deleted.endswith(" 0"):
            raise NotFound(f"callbackServices/{service_id} not found")

    # --- virtual queues and call-in groups ---------------------------------------------

    async def _require_queue(self, db: Db, queue_id: str) -> None:
        found = await db.fetchval(
            "SELECT 1 FROM callbacks.virtual_queues WHERE queue_id = $1", queue_id
        )
        if not found:
            raise FailedPrecondition(f"virtualQueues/{queue_id} does not exist")

    async def create_queue(self, tenant: str, queue_id: str) -> callback_pb2.VirtualQueue:
        async with tenant_transaction(self.pool, tenant) as db:
            created = await db.fetchval(
                """
                INSERT INTO callbacks.virtual_queues (tenant_id, queue_id)
                VALUES (current_setting('cxmesh.tenant'), $1) ON CONFLICT DO NOTHING RETURNING 1
                """,
                queue_id,
            )
        if not created:
            raise AlreadyExists(f"virtualQueues/{queue_id} already exists")
        return S.VirtualQueue(name=f"virtualQueues/{queue_id}")

    async def list_queues(
        self, tenant: str, offset: int, limit: int
    ) -> list[callback_pb2.VirtualQueue]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                """
                SELECT q.*, (SELECT count(*) FROM callbacks.callbacks c
                             WHERE c.queue_id = q.queue_id AND c.state = 2) AS queued
                FROM callbacks.virtual_queues q ORDER BY queue_id OFFSET $1 LIMIT $2
                """,
                offset,
                limit,
            )
        return [
            S.VirtualQueue(
                name=f"virtualQueues/{r['queue_id']}",
                queued_count=r["queued"],
                agents_logged_in=r["agents_logged_in"],
                agents_ready=r["agents_ready"],
            )
            for r in rows
        ]

    async def queue_facts(self, tenant: str, queue_id: str) -> QueueFacts:
        async with tenant_transaction(self.pool, tenant) as db:
            queue = await db.fetchrow(
                """
                SELECT q.*, (SELECT count(*) FROM callbacks.callbacks c
                             WHERE c.queue_id = q.queue_id AND c.state = 2) AS queued
                FROM callbacks.virtual_queues q WHERE queue_id = $1
                """,
                queue_id,
            )
            if queue is None:
                raise NotFound(f"virtualQueues/{queue_id} not found")
            handled = await db.fetch(
                """
                SELECT finished, handle_seconds FROM callbacks.handled_interactions
                WHERE queue_id = $1 ORDER BY finished DESC LIMIT 32
                """,
                queue_id,
            )
        return QueueFacts(
            queued=queue["queued"],
            agents_logged_in=queue["agents_logged_in"],
            agents_ready=queue["agents_ready"],
            handled=[Handled(r["finished"], r["handle_seconds"]) for r in handled],
        )

    async def report_queue(
        self,
        tenant: str,
        queue_id: str,
        logged_in: int,
        ready: int,
        handled: list[tuple[float, float]],
    ) -> None:
        async with tenant_transaction(self.pool, tenant) as db:
            updated = await db.execute(
                """
                UPDATE callbacks.virtual_queues SET agents_logged_in = $2, agents_ready = $3
                WHERE queue_id = $1
                """,
                queue_id,
                logged_in,
                ready,
            )
            if updated.endswith(" 0"):
                raise NotFound(f"virtualQueues/{queue_id} not found")
            if handled:
                await db.executemany(
                    """
                    INSERT INTO callbacks.handled_interactions
                        (tenant_id, queue_id, wait_seconds, handle_seconds)
                    VALUES (current_setting('cxmesh.tenant'), $1, $2, $3)
                    """,
                    [(queue_id, wait, handle) for wait, handle in handled],
                )
                # Only the newest 32 are ever read.
                await db.execute(
                    """
                    DELETE FROM callbacks.handled_interactions WHERE queue_id = $1
                    AND interaction_id < (SELECT min(interaction_id) FROM (
                        SELECT interaction_id FROM callbacks.handled_interactions
                        WHERE queue_id = $1 ORDER BY interaction_id DESC LIMIT 32) AS newest)
                    """,
                    queue_id,
                )

    async def create_call_in_group(
        self, tenant: str, group_id: str, group: callback_pb2.CallInGroup
    ) -> callback_pb2.CallInGroup:
        stored = S.CallInGroup()
        stored.CopyFrom(group)
        stored.ClearField("name")
        async with tenant_transaction(self.pool, tenant) as db:
            created = await db.fetchval(
                """
                INSERT INTO callbacks.call_in_groups (tenant_id, group_id, body)
                VALUES (current_setting('cxmesh.tenant'), $1, $2) ON CONFLICT DO NOTHING RETURNING 1
                """,
                group_id,
                stored.SerializeToString(),
            )
        if not created:
            raise AlreadyExists(f"callInGroups/{group_id} already exists")
        stored.name = f"callInGroups/{group_id}"
        return stored

    async def get_call_in_group(self, tenant: str, group_id: str) -> callback_pb2.CallInGroup:
        async with tenant_transaction(self.pool, tenant) as db:
            body = await db.fetchval(
                "SELECT body FROM callbacks.call_in_groups WHERE group_id = $1", group_id
            )
        if body is None:
            raise NotFound(f"callInGroups/{group_id} not found")
        group = S.CallInGroup.FromString(body)
        group.name = f"callInGroups/{group_id}"
        return group

    async def list_call_in_groups(
        self, tenant: str, offset: int, limit: int
    ) -> list[callback_pb2.CallInGroup]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                "SELECT * FROM callbacks.call_in_groups ORDER BY group_id OFFSET $1 LIMIT $2",
                offset,
                limit,
            )
        groups = []
        for row in rows:
            group = S.CallInGroup.FromString(row["body"])
            group.name = f"callInGroups/{row['group_id']}"
            groups.append(group)
        return groups

    async def create_call_in_request(
        self,
        tenant: str,
        group: callback_pb2.CallInGroup,
        from_number: str,
        callback_id: str,
        expires: datetime,
    ) -> asyncpg.Record:
        """Picks a number of the pool and a code not in use on it (retrying on a clash)."""
        length = group.code_length or 6
        for _ in range(10):
            code = str(secrets.randbelow(9 * 10 ** (length - 1)) + 10 ** (length - 1))
            number = secrets.choice(list(group.phone_numbers))
            try:
                async with tenant_transaction(self.pool, tenant) as db:
                    row = await db.fetchrow(
                        """
                        INSERT INTO callbacks.call_in_requests (tenant_id, request_id, group_id,
                            to_number, access_code, from_number, callback_id, expires)
                        VALUES (current_setting('cxmesh.tenant'), $1, $2, $3, $4, $5, $6, $7)
                        RETURNING *
                        """,
                        uuid.uuid4().hex,
                        group.name.removeprefix("callInGroups/"),
                        number,
                        code,
                        from_number,
                        callback_id,
                        expires,
                    )
                    assert row is not None
                    return row
            except asyncpg.UniqueViolationError:
                continue
        raise FailedPrecondition("no free access code; enlarge the pool or the code length")

    async def match_call_in(
        self, tenant: str, to_number: str, access_code: str
    ) -> asyncpg.Record | None:
        """The request the code was issued for, once, while it is valid."""
        async with tenant_transaction(self.pool, tenant) as db:
            row: asyncpg.Record | None = await db.fetchrow(
                """
                UPDATE callbacks.call_in_requests SET matched = true
                WHERE to_number = $1 AND access_code = $2 AND NOT matched AND expires > now()
                RETURNING *
                """,
                to_number,
                access_code,
            )
        return row

    # --- callbacks ---------------------------------------------------------------------

    async def create(self, tenant: str, new: NewCallback) -> callback_pb2.Callback:
        """One round trip (callbacks.create_callback): raises StaleService when the
        service's settings changed since `new.rules` were read, Refused or CapacityFull."""
        rules = new.rules
        try:
            row = await self.pool.fetchrow(
                """
                SELECT * FROM callbacks.create_callback($1, $2, $3, $4, $5, $6, $7, $8, $9,
                    $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
                """,
                tenant,
                rules.service_id,
                rules.version,
                rules.queue_id,
                uuid.uuid4().hex,
                new.phone_number,
                new.throttle_key or new.phone_number,
                new.immediate,
                new.desired_floor,
                new.priority,
                json.dumps(new.user_data) if new.user_data else None,
                json.dumps(new.push_targets),
                new.request_id,
                rules.ttl,
                rules.duplicate_limit,
                rules.throttle_per_day,
                rules.max_queued,
                new.buckets,
                [rules.capacity.size_at(b) for b in new.buckets],
            )
        except asyncpg.RaiseError as error:
            kind, _, detail = str(error).removeprefix("cxmesh:").partition(":")
            if kind == "stale_service":
                raise StaleService() from error
            if kind == "capacity":
                raise CapacityFull() from error
            if kind == "duplicate":
                raise Refused(
                    kind, f"the number already has {detail} active callbacks for this service"
                ) from error
            if kind == "service_full":
                raise Refused(
                    kind, f"the service holds its maximum of {detail} callbacks"
                ) from error
            if kind == "throttled":
                raise Refused(
                    kind,
                    f"at most {rules.throttle_per_day} immediate callbacks per number in 24 hours",
                ) from error
            raise
        assert row is not None
        return _callback(row)

    async def booked(self, tenant: str, rules: ServiceRules, starts: list[datetime]) -> list[Slot]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                """
                SELECT bucket_start, booked FROM callbacks.capacity_bookings
                WHERE service_id = $1 AND bucket_start = ANY($2::timestamptz[])
                """,
                rules.service_id,
                starts,
            )
        taken = {r["bucket_start"]: r["booked"] for r in rows}
        return [Slot(s, rules.capacity.size_at(s), taken.get(s, 0)) for s in starts]

    async def get(self, tenant: str, callback_id: str) -> callback_pb2.Callback:
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                """
                SELECT c.*, CASE WHEN c.state = 2 THEN (
                    SELECT count(*) FROM callbacks.callbacks o
                    WHERE o.queue_id = c.queue_id AND o.state = 2
                      AND (o.priority > c.priority OR (o.priority = c.priority
                           AND (o.queued_time, o.callback_id) <= (c.queued_time, c.callback_id))))
                    ELSE 0 END AS position
                FROM callbacks.callbacks c WHERE c.callback_id = $1
                """,
                callback_id,
            )
        if row is None:
            raise NotFound(f"callbacks/{callback_id} not found")
        return _callback(row, row["position"])

    async def queue_of(self, tenant: str, callback_id: str) -> str:
        async with tenant_transaction(self.pool, tenant) as db:
            queue_id: str | None = await db.fetchval(
                "SELECT queue_id FROM callbacks.callbacks WHERE callback_id = $1", callback_id
            )
        if queue_id is None:
            raise NotFound(f"callbacks/{callback_id} not found")
        return queue_id

    async def list_callbacks(
        self, tenant: str, where: CallbackFilter, offset: int, limit: int
    ) -> list[callback_pb2.Callback]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows = await db.fetch(
                """
                SELECT * FROM callbacks.callbacks
                WHERE ($1 = '' OR service_id = $1)
                  AND (cardinality($2::smallint[]) = 0 OR state = ANY($2))
                  AND ($3 = '' OR phone_number = $3)
                  AND ($4::timestamptz IS NULL OR desired_time >= $4)
                  AND ($5::timestamptz IS NULL OR desired_time < $5)
                ORDER BY create_time DESC, callback_id OFFSET $6 LIMIT $7
                """,
                where.service_id,
                where.states,
                where.phone_number,
                where.desired_after,
                where.desired_before,
                offset,
                limit,
            )
        return [_callback(r) for r in rows]

    async def reschedule(
        self, tenant: str, callback_id: str, rules: ServiceRules, desired: datetime
    ) -> callback_pb2.Callback:
        """Moves a SCHEDULED callback and its place in capacity to `desired`."""
        bucket = rules.capacity.bucket_start(desired)
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM callbacks.callbacks WHERE callback_id = $1 FOR UPDATE", callback_id
            )
            if row is None or row["service_id"] != rules.service_id:
                raise NotFound(f"callbacks/{callback_id} not found")
            if row["state"] != S.CALLBACK_STATE_SCHEDULED:
                raise FailedPrecondition("only a SCHEDULED callback can be rescheduled")
            if row["bucket_start"] != bucket:
                booked = await db.fetchval(
                    """
                    INSERT INTO callbacks.capacity_bookings AS b (tenant_id, service_id, bucket_start, booked)
                    SELECT current_setting('cxmesh.tenant'), $1, $2, 1 WHERE $3 > 0
                    ON CONFLICT (tenant_id, service_id, bucket_start)
                    DO UPDATE SET booked = b.booked + 1 WHERE b.booked < $3
                    RETURNING booked
                    """,
                    rules.service_id,
                    bucket,
                    rules.capacity.size_at(bucket),
                )
                if booked is None:
                    raise CapacityFull()
                await self._release(db, rules.service_id, row["bucket_start"])
            moved = await db.fetchrow(
                """
                UPDATE callbacks.callbacks SET desired_time = $2::timestamptz, bucket_start = $3,
                    expires = $2::timestamptz + $4::interval, update_time = now()
                WHERE callback_id = $1 RETURNING *
                """,
                callback_id,
                desired,
                bucket,
                rules.ttl,
            )
            assert moved is not None
            return _callback(moved)

    async def _release(self, db: Db, service_id: str, bucket: datetime | None) -> None:
        """Gives a place back to a bucket that has not started yet."""
        if bucket is not None:
            await db.execute(
                """
                UPDATE callbacks.capacity_bookings SET booked = booked - 1
                WHERE service_id = $1 AND bucket_start = $2 AND bucket_start > now() AND booked > 0
                """,
                service_id,
                bucket,
            )

    async def transition(
        self,
        tenant: str,
        callback_id: str,
        target: int,
        reason: int = S.CALLBACK_REASON_UNSPECIFIED,
        *,
        lease: timedelta | None = None,
        retry_at: datetime | None = None,
    ) -> callback_pb2.Callback:
        """Moves a callback along the state machine; an illegal move is refused. A move back
        to SCHEDULED (a retry) gives its new desired time in `retry_at`."""
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                "SELECT * FROM callbacks.callbacks WHERE callback_id = $1 FOR UPDATE", callback_id
            )
            if row is None:
                raise NotFound(f"callbacks/{callback_id} not found")
            problem = transition_problem(row["state"], target, reason)
            if problem:
                raise FailedPrecondition(problem, reason="ILLEGAL_TRANSITION")
            moved = await db.fetchrow(
                """
                UPDATE callbacks.callbacks SET state = $2::smallint, reason = $3::smallint,
                    update_time = now(),
                    lease_expires = CASE WHEN $2::smallint = 3 THEN now() + $4::interval END,
                    queued_time = CASE WHEN $2::smallint = 2 AND state <> 3 THEN now()
                                       ELSE queued_time END,
                    attempt_count = attempt_count + CASE WHEN $2::smallint = 4 THEN 1 ELSE 0 END,
                    desired_time = coalesce($5::timestamptz, desired_time)
                WHERE callback_id = $1 RETURNING *
                """,
                callback_id,
                target,
                reason,
                lease or timedelta(seconds=60),
                retry_at if target == S.CALLBACK_STATE_SCHEDULED else None,
            )
            assert moved is not None
            if target == S.CALLBACK_STATE_COMPLETED:
                # A callback that ends before its time gives its place back.
                await self._release(db, moved["service_id"], moved["bucket_start"])
            return _callback(moved)

    async def claim(
        self, tenant: str, queue_id: str, lease: timedelta
    ) -> callback_pb2.Callback | None:
        """The first queued callback of the queue (priority, then queue time), leased."""
        async with tenant_transaction(self.pool, tenant) as db:
            row = await db.fetchrow(
                """
                UPDATE callbacks.callbacks AS c SET state = 3, lease_expires = now() + $2::interval,
                    update_time = now()
                FROM (SELECT callback_id FROM callbacks.callbacks
                      WHERE queue_id = $1 AND state = 2
                      ORDER BY priority DESC, queued_time, callback_id
                      LIMIT 1 FOR UPDATE SKIP LOCKED) AS first
                WHERE c.callback_id = first.callback_id RETURNING c.*
                """,
                queue_id,
                lease,
            )
        return _callback(row) if row is not None else None

    async def statistics(self, tenant: str) -> list[asyncpg.Record]:
        async with tenant_transaction(self.pool, tenant) as db:
            rows: list[asyncpg.Record] = await db.fetch(
                """
                SELECT service_id, state, reason, count(*) AS callbacks
                FROM callbacks.callbacks GROUP BY service_id, state, reason
                ORDER BY service_id, state, reason
                """
            )
        return rows


async def run_due_transitions(
    pool: asyncpg.Pool, max_rows: int = 10_000
) -> dict[str, list[tuple[str, str]]]:
    """Moves every tenant's due callbacks (dispatch, expired leases, TTL); any replica may
    call it at any time: a callback moves once. Returns (tenant, callback id) moved, by kind."""
    moved = {}
    async with pool.acquire() as connection:
        for function in ("dispatch_due", "release_expired_leases", "expire_callbacks"):
            rows = await connection.fetch(
                f"SELECT * FROM callbacks.{function}($1)",
                max_rows,
            )
            moved[function] = [(r["tenant_id"], r["callback_id"]) for r in rows]
            if function == "expire_callbacks":
                for row in rows:
                    COMPLETED.labels(row["tenant_id"], row["service_id"], "FAIL_TIMEOUT_TTL").inc()
    return moved


async def queue_lengths(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """(tenant_id, queue_id, queued) of every virtual queue of every tenant."""
    async with pool.acquire() as connection:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT * FROM callbacks.queue_lengths()"
        )
    return rows
