"""The import pipeline: a spooled file → rows → records (in worker processes) → Postgres.

One import is one Postgres transaction: it commits whole or not at all, so a failed,
cancelled or crashed import never leaves part of itself behind. Rows are parsed here,
turned into records by a process pool (phone parsing is CPU-bound), deduplicated, marked
against the suppression mirror, and COPied in batches. Progress is written from another
connection so that it is visible while the transaction runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from cxmesh.lists.v1 import import_pb2
from cxmesh.types.v1 import device_pb2
from cxmesh_server.lists.domain import formats
from cxmesh_server.lists.domain.records import (
    ColumnPlan,
    ErrorTuple,
    Record,
    RecordTuple,
    RowSettings,
    build_records,
    plan_from_header,
    plan_from_mappings,
)
from cxmesh_server.mirrors.suppression import SuppressionMirror
from cxmesh_server.runtime.postgres import Db, copy_into, tenant_transaction

log = logging.getLogger(__name__)

EMAIL = device_pb2.DEVICE_TYPE_EMAIL
# Positions in a record tuple (see Record).
_FIELD = {name: n for n, name in enumerate(Record._fields)}
DEDUPE_KEY, CLIENT_ID, LINE = _FIELD["dedupe_key"], _FIELD["client_id"], _FIELD["line"]
DEVICE_TYPES, DEVICE_ADDRESSES = _FIELD["device_types"], _FIELD["device_addresses"]
CHUNK_ROWS = 5_000
PROGRESS_SECONDS = 0.25
RECORD_COLUMNS = [
    "tenant_id",
    "list_id",
    "dedupe_key",
    "client_id",
    "first_name",
    "last_name",
    "company",
    "device_types",
    "device_addresses",
    "device_raw",
    "postal_code",
    "state_province",
    "country",
    "time_zone",
    "time_zone_source",
    "candidate_time_zones",
    "custom_fields",
    "suppression_lists",
    "import_id",
]
ERROR_COLUMNS = [
    "tenant_id",
    "list_id",
    "import_id",
    "line_number",
    "column_name",
    "raw_value",
    "reason",
    "message",
]


class ImportCancelled(Exception):
    pass


class ImportFailed(Exception):
    """A failure the caller should read in the import's failure_reason."""


@dataclass
class Progress:
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    rows_suppressed: int = 0
    rows_duplicate: int = 0
    bytes_read: int = 0


@dataclass
class ImportJob:
    tenant: str
    list_id: str
    import_id: str
    mode: int
    path: Path
    file_format: import_pb2.FileFormat
    plan: ColumnPlan
    skip_first_row: bool
    settings: RowSettings
    progress: Progress = field(default_factory=Progress)


def lock_id(import_id: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"cxmesh-import:{import_id}".encode()).digest()[:8], "big", signed=True
    )


def plan_for_file(path: Path, file_format: import_pb2.FileFormat) -> tuple[ColumnPlan, bool]:
    """The column plan and whether the first row is a header to skip. Raises FormatError
    with every problem of the header or mapping."""
    mappings = [(c.column, c.field) for c in file_format.columns]
    fixed = file_format.file_type == import_pb2.FILE_TYPE_FIXED_WIDTH
    if fixed:
        mappings = [(str(n + 1), c.field) for n, c in enumerate(file_format.columns)]
    by_name = any(not column.isdigit() for column, _ in mappings)
    has_header = not fixed and (not mappings or by_name or file_format.has_header)
    header = None
    if has_header:
        first = formats.first_row(path, file_format)
        if first is None:
            raise formats.FormatError("the file is empty")
        header = list(first)
    elif formats.first_row(path, file_format) is None:
        raise formats.FormatError("the file is empty")
    if mappings:
        plan, problems = plan_from_mappings(mappings, header)
    else:
        assert header is not None
        plan, problems = plan_from_header(header)
    if problems:
        raise formats.FormatError("; ".join(problems), "header" if not mappings else "columns")
    return plan, has_header


class Importer:
    def __init__(self, pool: asyncpg.Pool, mirror: SuppressionMirror, executor: Executor) -> None:
        self._pool = pool
        self._mirror = mirror
        self._executor = executor
        self.running: dict[str, asyncio.Task[None]] = {}

    def start(self, job: ImportJob) -> None:
        task = asyncio.create_task(self._run(job), name=f"import-{job.import_id}")
        self.running[job.import_id] = task
        task.add_done_callback(lambda _: self.running.pop(job.import_id, None))

    async def _run(self, job: ImportJob) -> None:
        cancel = asyncio.Event()
        reporter = asyncio.create_task(self._report(job, cancel))
        state, reason = import_pb2.IMPORT_STATE_SUCCEEDED, ""
        try:
            async with tenant_transaction(self._pool, job.tenant) as db:
                await db.execute("SELECT pg_advisory_xact_lock($1)", lock_id(job.import_id))
                await self._set_state(job, import_pb2.IMPORT_STATE_RUNNING)
                await self._load(db, job, cancel)
                reporter.cancel()
                await db.execute(
                    """
                    UPDATE lists.imports SET state = $2, rows_read = $3, rows_accepted = $4,
                        rows_rejected = $5, rows_suppressed = $6, rows_duplicate = $7,
                        bytes_read = $8, end_time = now()
                    WHERE import_id = $1
                    """,
                    job.import_id,
                    state,
                    *_counters(job.progress),
                )
        except ImportCancelled:
            state, reason = import_pb2.IMPORT_STATE_CANCELLED, "cancelled"
        except (ImportFailed, formats.FormatError) as error:
            state, reason = import_pb2.IMPORT_STATE_FAILED, str(error)
        except UnicodeDecodeError as error:
            state, reason = (
                import_pb2.IMPORT_STATE_FAILED,
                (
                    f"the file is not {job.file_format.charset or 'UTF-8'} (byte {error.start} of a line); set the charset"
                ),
            )
        except Exception as error:  # the import must end in a state whatever happens
            log.exception("import failed", extra={"import": job.import_id})
            state, reason = (
                import_pb2.IMPORT_STATE_FAILED,
                f"internal error: {type(error).__name__}",
            )
        finally:
            reporter.cancel()
            job.path.unlink(missing_ok=True)
        if state != import_pb2.IMPORT_STATE_SUCCEEDED:
            await self._set_state(job, state, reason, final=True)

    async def _load(self, db: Db, job: ImportJob, cancel: asyncio.Event) -> None:
        locked = await db.fetchval(
            "SELECT list_id FROM lists.contact_lists WHERE list_id = $1 FOR UPDATE", job.list_id
        )
        if locked is None:
            raise ImportFailed("the contact list was deleted")
        seen: set[str] = set()
        if job.mode == import_pb2.IMPORT_MODE_REPLACE:
            await db.execute("DELETE FROM lists.records WHERE list_id = $1", job.list_id)
        else:
            keys = await db.fetch(
                "SELECT dedupe_key FROM lists.records WHERE list_id = $1", job.list_id
            )
            if keys and job.mode == import_pb2.IMPORT_MODE_CREATE:
                raise ImportFailed("mode CREATE needs an empty list; use APPEND or REPLACE")
            seen = {r["dedupe_key"] for r in keys}
        suppression_lists = sorted(await self._mirror.lists(job.tenant))
        if suppression_lists and not await self._mirror.is_loaded():
            raise ImportFailed(
                "suppression data is unavailable (mirror not loaded); nothing was imported"
            )
        loop = asyncio.get_running_loop()
        rows = formats.read_rows(job.path, job.file_format)
        if job.skip_first_row:
            next(rows, None)
        pending: list[asyncio.Future[tuple[list[RecordTuple], list[ErrorTuple]]]] = []
        in_flight = 4  # chunks being built at once: enough to keep every worker busy
        while True:
            chunk = await asyncio.to_thread(_take, rows, CHUNK_ROWS)
            if chunk:
                job.progress.rows_read += len(chunk)
                pending.append(
                    loop.run_in_executor(
                        self._executor, build_records, chunk, job.plan, job.settings
                    )
                )
            while pending and (len(pending) >= in_flight or not chunk):
                records, errors = await pending.pop(0)
                rejected = _refused_rows(records, errors)
                await self._store(db, job, records, errors, rejected, seen, suppression_lists)
                if cancel.is_set():
                    raise ImportCancelled
            if not chunk:
                break
        job.progress.bytes_read = job.path.stat().st_size

    async def _store(
        self,
        db: Db,
        job: ImportJob,
        records: list[RecordTuple],
        errors: list[ErrorTuple],
        rejected: int,
        seen: set[str],
        suppression_lists: list[str],
    ) -> None:
        fresh = []
        for record in records:
            if record[DEDUPE_KEY] in seen:
                job.progress.rows_duplicate += 1
                continue
            seen.add(record[DEDUPE_KEY])
            fresh.append(record)
        marks: list[list[str]] = [[] for _ in fresh]
        if suppression_lists and fresh:
            marks = await self._suppression_marks(job.tenant, fresh, suppression_lists)
        await copy_into(
            db,
            "lists",
            "records",
            RECORD_COLUMNS,
            [
                (job.tenant, job.list_id, *r[:LINE], m, job.import_id)
                for r, m in zip(fresh, marks, strict=True)
            ],
        )
        if errors:
            await copy_into(
                db,
                "lists",
                "import_errors",
                ERROR_COLUMNS,
                [(job.tenant, job.list_id, job.import_id, *e) for e in errors],
            )
        job.progress.rows_accepted += len(fresh)
        job.progress.rows_rejected += rejected
        job.progress.rows_suppressed += sum(1 for m in marks if m)

    async def _suppression_marks(
        self, tenant: str, records: list[RecordTuple], list_ids: list[str]
    ) -> list[list[str]]:
        """For each record, the suppression lists its devices or client id are on. Records
        are marked, never dropped: compliance decides at dial time."""
        phones: set[str] = set()
        emails: set[str] = set()
        clients: set[str] = set()
        for record in records:
            for device_type, address in zip(
                record[DEVICE_TYPES], record[DEVICE_ADDRESSES], strict=True
            ):
                (emails if device_type == EMAIL else phones).add(address)
            if record[CLIENT_ID]:
                clients.add(record[CLIENT_ID])
        found = await self._mirror.matches(
            tenant,
            list_ids,
            {"phone": list(phones), "email": list(emails), "client": list(clients)},
            now_ms=int(time.time() * 1000),
        )
        marks: list[list[str]] = []
        for record in records:
            hits: set[str] = set()
            if found:
                for device_type, address in zip(
                    record[DEVICE_TYPES], record[DEVICE_ADDRESSES], strict=True
                ):
                    hits.update(
                        found.get(("email" if device_type == EMAIL else "phone", address), ())
                    )
                if record[CLIENT_ID]:
                    hits.update(found.get(("client", record[CLIENT_ID]), ()))
            marks.append(sorted(hits))
        return marks

    async def _report(self, job: ImportJob, cancel: asyncio.Event) -> None:
        """Publishes progress and watches for a cancel request, from its own connection."""
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            async with tenant_transaction(self._pool, job.tenant) as db:
                requested = await db.fetchval(
                    """
                    UPDATE lists.imports SET rows_read = $2, rows_accepted = $3, rows_rejected = $4,
                        rows_suppressed = $5, rows_duplicate = $6, bytes_read = $7
                    WHERE import_id = $1 RETURNING cancel_requested
                    """,
                    job.import_id,
                    *_counters(job.progress),
                )
            if requested:
                cancel.set()

    async def _set_state(
        self, job: ImportJob, state: int, reason: str = "", *, final: bool = False
    ) -> None:
        async with tenant_transaction(self._pool, job.tenant) as db:
            await db.execute(
                """
                UPDATE lists.imports SET state = $2, failure_reason = $3,
                    end_time = CASE WHEN $4 THEN now() ELSE end_time END,
                    rows_accepted = CASE WHEN $4 THEN 0 ELSE rows_accepted END
                WHERE import_id = $1
                """,
                job.import_id,
                state,
                reason,
                final,
            )


def _refused_rows(records: list[RecordTuple], errors: list[ErrorTuple]) -> int:
    accepted = {r[LINE] for r in records}
    return len({e[0] for e in errors} - accepted)


def _take(rows: Iterator[formats.Row], count: int) -> list[formats.Row]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == count:
            break
    return chunk


def _counters(progress: Progress) -> tuple[int, ...]:
    return (
        progress.rows_read,
        progress.rows_accepted,
        progress.rows_rejected,
        progress.rows_suppressed,
        progress.rows_duplicate,
        progress.bytes_read,
    )
