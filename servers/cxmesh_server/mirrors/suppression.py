"""The suppression mirror: the lists service writes it, compliance reads it per decision.

Layout (tenant as a cluster hash tag, so one tenant's keys share a shard):
- `cx:{t}:suppr:{list}:{kind}` hash, kind ∈ phone | email | client: target → "<channels
  mask>:<expiry epoch ms, 0 = never>". Expiry is checked on read, so an entry stops
  counting at its instant with no sweep.
- `cx:{t}:suppr:index` hash: list id → JSON {"campaigns": [...]} (empty: tenant-wide), and
  `cx:{t}:suppr:index_version`, incremented with every change of the index, so a reader
  may cache the index and check it is current in the same round trip as its lookups.
- `cx:{t}:suppr:rebuilding`: present while the tenant's mirror is being rebuilt: readers
  treat the tenant's suppression data as unavailable. It has no expiry: a rebuild that dies
  leaves the tenant failing closed until a rebuild completes.
- `cx:suppr:writers` sorted set: "<tenant>|<writer id>" → lease deadline (epoch ms), one per
  change in progress that leaves the mirror unlike Postgres until it completes (a rebuild, a
  full load between its swap and its commit). The writer renews its lease while it works; a
  writer that fails or dies leaves its member behind, and once the deadline has passed a
  lists replica rebuilds that tenant (`abandoned`, `claim`).
- `cx:suppr:loaded`: set once every tenant's mirror has been built into this dataset, to the
  dataset's id (`runtime.redis.LoadedMarker`). A reader that finds it missing or holding
  another id must treat all data as unavailable (Redis was lost, failed over or restarted).
A batch check is one pipeline: one HMGET per list and kind.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from redis.asyncio import Redis

from cxmesh_server.runtime.redis import LoadedMarker

KINDS = ("phone", "email", "client")
LOADED_KEY = "cx:suppr:loaded"
WRITERS_KEY = "cx:suppr:writers"
WRITER_LEASE_SECONDS = 30.0
_BATCH = 1000


def list_key(tenant: str, list_id: str, kind: str) -> str:
    return f"cx:{{{tenant}}}:suppr:{list_id}:{kind}"


def index_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:suppr:index"


def index_version_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:suppr:index_version"


def rebuilding_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:suppr:rebuilding"


def channel_mask(channels: Iterable[int]) -> int:
    """A bit per channel; 0 means every channel."""
    mask = 0
    for channel in channels:
        mask |= 1 << channel
    return mask


def encode(mask: int, expire_ms: int | None) -> str:
    return f"{mask}:{expire_ms or 0}"


def is_active(value: str, now_ms: int, channel: int | None = None) -> bool:
    mask_text, _, expire_text = value.partition(":")
    expire = int(expire_text or 0)
    if expire and expire <= now_ms:
        return False
    mask = int(mask_text or 0)
    return channel is None or mask == 0 or bool(mask & (1 << channel))


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str
    target: str
    mask: int
    expire_ms: int | None


@dataclass(slots=True)
class MirrorWrite:
    """Whether a write in progress has left the mirror unlike Postgres."""

    diverged: bool


class SuppressionMirror:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def put_list(self, tenant: str, list_id: str, campaigns: Sequence[str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(index_key(tenant), list_id, json.dumps({"campaigns": list(campaigns)}))
            pipe.incr(index_version_key(tenant))
            await pipe.execute()

    async def drop_list(self, tenant: str, list_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(index_key(tenant), list_id)
            pipe.delete(*(list_key(tenant, list_id, kind) for kind in KINDS))
            pipe.incr(index_version_key(tenant))
            await pipe.execute()

    async def put_entries(
        self, tenant: str, list_id: str, entries: Iterable[Entry] | AsyncIterable[Entry]
    ) -> int:
        count = 0
        pending = 0  # entries in `batch`, or a repeated target counted twice (harmless)
        batch: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        async for entry in _each(entries):
            batch[entry.kind][entry.target] = encode(entry.mask, entry.expire_ms)
            count += 1
            pending += 1
            if pending >= _BATCH * 10:
                await self._flush(tenant, list_id, batch)
                pending = 0
        await self._flush(tenant, list_id, batch)
        return count

    async def put_targets(
        self,
        tenant: str,
        list_id: str,
        kind: str,
        targets: Sequence[str],
        *,
        mask: int,
        expire_ms: int | None,
    ) -> int:
        """Many targets with the same channels and expiry (a registry file): no per-entry
        objects, one HSET per thousand targets."""
        value = encode(mask, expire_ms)
        key = list_key(tenant, list_id, kind)
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(targets), _BATCH):
                pipe.hset(key, mapping=dict.fromkeys(targets[start : start + _BATCH], value))
            await pipe.execute()
        return len(targets)

    async def _flush(self, tenant: str, list_id: str, batch: dict[str, dict[str, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for kind, fields in batch.items():
                items = list(fields.items())
                for start in range(0, len(items), _BATCH):
                    pipe.hset(
                        list_key(tenant, list_id, kind), mapping=dict(items[start : start + _BATCH])
                    )
                fields.clear()
            await pipe.execute()

    async def remove_entries(
        self, tenant: str, list_id: str, targets: Mapping[str, Sequence[str]]
    ) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for kind, values in targets.items():
                if values:
                    pipe.hdel(list_key(tenant, list_id, kind), *values)
            await pipe.execute()

    async def replace_list(
        self, tenant: str, list_id: str, entries: Iterable[Entry] | AsyncIterable[Entry]
    ) -> int:
        """Builds the list under temporary keys and swaps them in at once, so readers never
        see a half-loaded list."""
        staging = f"{list_id}.staging"
        await self._redis.delete(*(list_key(tenant, staging, kind) for kind in KINDS))
        count = await self.put_entries(tenant, staging, entries)
        await self.swap_in(tenant, staging, list_id)
        return count

    async def swap_in(self, tenant: str, staging: str, list_id: str) -> None:
        """Replaces a list's keys by staged ones in one MULTI, so readers see the old list or
        the new one, never a mix."""
        exists = await self._redis.exists(*(list_key(tenant, staging, kind) for kind in KINDS))
        async with self._redis.pipeline(transaction=True) as pipe:
            for kind in KINDS:
                pipe.delete(list_key(tenant, list_id, kind))
            for kind in KINDS:
                if exists:
                    pipe.rename(list_key(tenant, staging, kind), list_key(tenant, list_id, kind))
            # RENAME of a missing key fails inside MULTI without aborting the others.
            await pipe.execute(raise_on_error=False)

    async def set_ready(self, tenant: str, ready: bool) -> None:
        if ready:
            await self._redis.delete(rebuilding_key(tenant))
        else:
            await self._redis.set(rebuilding_key(tenant), "1")

    @asynccontextmanager
    async def writing(
        self, tenant: str, *, diverged: bool = True, lease_seconds: float = WRITER_LEASE_SECONDS
    ) -> AsyncIterator[MirrorWrite]:
        """Brackets a change that may leave the tenant's mirror unlike Postgres until it
        ends; the writer sets `diverged` once it has (it starts as given). If the change
        fails or is cancelled after that, its member is due at once; if the process dies,
        its lease lapses. Either way a lists replica then rebuilds the tenant."""
        write = MirrorWrite(diverged)
        member = f"{tenant}|{uuid.uuid4().hex}"
        await self._lease(member, lease_seconds)
        renewal = asyncio.create_task(self._renew(member, lease_seconds))
        try:
            yield write
        except BaseException:
            renewal.cancel()
            with suppress(Exception):  # Redis lost: its rebuild covers this tenant too
                if write.diverged:
                    await self._redis.zadd(WRITERS_KEY, {member: 0})
                else:
                    await self._redis.zrem(WRITERS_KEY, member)
            raise
        renewal.cancel()
        await self._redis.zrem(WRITERS_KEY, member)

    async def _lease(self, member: str, seconds: float) -> None:
        await self._redis.zadd(WRITERS_KEY, {member: int((time.time() + seconds) * 1000)})

    async def _renew(self, member: str, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            with suppress(Exception):  # a missed renewal costs at most a redundant rebuild
                await self._lease(member, seconds)

    async def abandoned(self) -> list[str]:
        """Writers whose lease has lapsed or that failed, oldest first."""
        now_ms = int(time.time() * 1000)
        return [str(m) for m in await self._redis.zrangebyscore(WRITERS_KEY, "-inf", now_ms)]

    async def claim(self, member: str) -> bool:
        """Takes an abandoned writer's repair; exactly one claimant gets True."""
        return bool(await self._redis.zrem(WRITERS_KEY, member))

    async def begin_load(self) -> str:
        return await LoadedMarker(self._redis, LOADED_KEY).begin()

    async def mark_loaded(self, dataset: str) -> None:
        await LoadedMarker(self._redis, LOADED_KEY).mark(dataset)

    async def is_loaded(self) -> bool:
        return await LoadedMarker(self._redis, LOADED_KEY).is_set()

    async def lists(self, tenant: str) -> dict[str, list[str]]:
        """Every suppression list of the tenant → the campaigns it is bound to."""
        raw = await self._redis.hgetall(index_key(tenant))
        return {str(k): json.loads(v)["campaigns"] for k, v in raw.items()}

    async def matches(
        self,
        tenant: str,
        list_ids: Sequence[str],
        targets: Mapping[str, Sequence[str]],
        now_ms: int,
        channel: int | None = None,
    ) -> dict[tuple[str, str], list[str]]:
        """(kind, target) → the lists in which it is actively suppressed, in one round trip."""
        plan: list[tuple[str, str, Sequence[str]]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for list_id in list_ids:
                for kind, values in targets.items():
                    if values:
                        pipe.hmget(list_key(tenant, list_id, kind), list(values))
                        plan.append((list_id, kind, values))
            replies = await pipe.execute()
        found: dict[tuple[str, str], list[str]] = {}
        for (list_id, kind, values), reply in zip(plan, replies, strict=True):
            for target, value in zip(values, reply, strict=True):
                if value is not None and is_active(value, now_ms, channel):
                    found.setdefault((kind, target), []).append(list_id)
        return found


async def _each(entries: Iterable[Entry] | AsyncIterable[Entry]) -> AsyncIterator[Entry]:
    if isinstance(entries, AsyncIterable):
        async for entry in entries:
            yield entry
    else:
        for entry in entries:
            yield entry
