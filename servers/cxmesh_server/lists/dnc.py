"""External do-not-call data: the provider interface and the US National DNC registry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from cxmesh.lists.v1 import suppression_pb2
from cxmesh.lists.v1 import suppression_service_pb2 as pb
from cxmesh_server.lists.suppression_store import EntryRow, SuppressionStore

BATCH = 20_000
REASON = "national DNC registry"
_NANP = re.compile(r"^[2-9]\d{2}[2-9]\d{6}$")


class DncProvider(Protocol):
    """Turns a provider's file lines into E.164 numbers; None for a line to refuse."""

    source: int

    def number(self, line: str) -> str | None: ...


class UsNationalDnc:
    """The US registry: a 10-digit number (area code + number) per line, separators allowed
    (`2015550123`, `201,5550123`, `201-555-0123`)."""

    source: int = int(suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC)

    def number(self, line: str) -> str | None:
        digits = "".join(ch for ch in line if ch.isdigit())
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        return f"+1{digits}" if _NANP.match(digits) else None


PROVIDERS: dict[int, DncProvider] = {
    int(suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC): UsNationalDnc()
}


async def load_dnc_file(
    store: SuppressionStore,
    tenant: str,
    list_id: str,
    kind: int,
    lines: AsyncIterable[tuple[int, str]],
    provider: DncProvider = PROVIDERS[suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC],
) -> pb.ImportSuppressionEntriesResponse:
    result = pb.ImportSuppressionEntriesResponse()

    async def batches() -> AsyncIterator[list[str]]:
        batch: list[str] = []
        seen: set[str] = set()  # registry files should not repeat a number; if one does, once
        async for number, line in lines:
            result.lines_read += 1
            e164 = provider.number(line)
            if e164 is None:
                result.lines_rejected += 1
                if len(result.errors) < 100:
                    result.errors.append(f"line {number}: not a 10-digit North American number")
                continue
            if e164 in seen:
                continue
            seen.add(e164)
            batch.append(e164)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    if kind == pb.DNC_FILE_KIND_FULL:
        result.entries_added = await store.replace_all(tenant, list_id, "phone", batches(), REASON)
    elif kind == pb.DNC_FILE_KIND_ADDITIONS:
        async for batch in batches():
            await store.upsert_entries(
                tenant,
                list_id,
                [EntryRow("phone", e164, [], None, False, REASON) for e164 in batch],
            )
            result.entries_added += len(batch)
    else:
        async for batch in batches():
            result.entries_removed += await store.delete_entries(
                tenant, list_id, {"phone": batch}, keep_emergency=True
            )
    return result
