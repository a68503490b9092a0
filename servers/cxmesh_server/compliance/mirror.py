"""Compliance's hot data in Redis: the tenant's rule sets and its contact attempts.

- `cx:{t}:compliance:rules` hash: rule set id → base64 serialized RuleSet.
- `cx:{t}:compliance:version`: incremented by every rule change; a replica whose compiled
  rules carry another version reloads them before deciding (so a change reaches every
  replica on its next decision).
- `cx:compliance:loaded:v2`: set once every tenant's rules and attempts are mirrored into
  this Redis (`LoadedMarker`); missing or another dataset's means Redis lost them:
  decisions are denied until the rebuild.
- Attempts, mirrored from Postgres's `compliance.attempts` (`attempts.AttemptStore`):
  `cx:{t}:compliance:attempts:device:<address>` and `…:client:<id>` sorted sets (member
  "<attempt id>|<call result>|<channel>", score epoch ms) and one
  `cx:{t}:compliance:attempt:<attempt id>` string per attempt ("<member>#<revision>"), so a
  later report of an attempt replaces the earlier one and an older revision (a rebuild
  replaying a row read before the report) replaces nothing. Everything expires after the
  retention.
- `cx:{t}:compliance:attempt_index` hash: attempts key → last attempt (epoch ms), for every
  device and client with an attempt: a decision reads the sorted sets of those only (most
  contacts have none, and one HMGET is far cheaper than a read of each set).
- `cx:{t}:compliance:unstored_attempts` list: reports of attempts counted here while
  Postgres could not take them, until a replica stores them (`AttemptStore.store_unstored`);
  `cx:compliance:unstored_attempts` set: the tenants with such a list.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from cxmesh.compliance.v1 import rule_set_pb2
from cxmesh_server.runtime.redis import LoadedMarker

# v2: the attempt index came with it; an older marker must not count as loaded.
LOADED_KEY = "cx:compliance:loaded:v2"
# Attempts older than the longest attempt window (31 days) are dropped.
ATTEMPT_RETENTION = timedelta(days=32)
UNSTORED_TENANTS_KEY = "cx:compliance:unstored_attempts"
# Attempts written per script run: one run blocks Redis, so a few hundred microseconds.
SCRIPT_ATTEMPTS = 50


def rules_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:compliance:rules"


def version_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:compliance:version"


def attempts_key(tenant: str, scope: str, value: str) -> str:
    return f"cx:{{{tenant}}}:compliance:attempts:{scope}:{value}"


def attempt_index_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:compliance:attempt_index"


def attempt_key(tenant: str, attempt_id: str) -> str:
    """One key per attempt, expiring with it (a hash of every attempt would only grow)."""
    return f"cx:{{{tenant}}}:compliance:attempt:{attempt_id}"


def unstored_attempts_key(tenant: str) -> str:
    return f"cx:{{{tenant}}}:compliance:unstored_attempts"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class RecordedAttempt:
    """A contact attempt as Postgres holds it after every report of it."""

    attempt_id: str
    devices: tuple[str, ...]
    client_ids: tuple[str, ...]
    call_result: int
    channel: int
    attempt_time: datetime
    revision: int


class RulesMirror:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record_attempts = redis.register_script(_RECORD_ATTEMPTS)
        self._forget_unstored = redis.register_script(_FORGET_UNSTORED)

    async def put(self, tenant: str, rule_set: rule_set_pb2.RuleSet) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(rules_key(tenant), rule_set.name.removeprefix("ruleSets/"), _encode(rule_set))
            pipe.incr(version_key(tenant))
            await pipe.execute()

    async def remove(self, tenant: str, rule_set_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(rules_key(tenant), rule_set_id)
            pipe.incr(version_key(tenant))
            await pipe.execute()

    async def replace(self, tenant: str, rule_sets: Sequence[rule_set_pb2.RuleSet]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(rules_key(tenant))
            for rule_set in rule_sets:
                pipe.hset(
                    rules_key(tenant), rule_set.name.removeprefix("ruleSets/"), _encode(rule_set)
                )
            pipe.incr(version_key(tenant))
            await pipe.execute()

    async def begin_load(self) -> str:
        return await LoadedMarker(self.redis, LOADED_KEY).begin()

    async def mark_loaded(self, dataset: str) -> None:
        await LoadedMarker(self.redis, LOADED_KEY).mark(dataset)

    async def is_loaded(self) -> bool:
        return await LoadedMarker(self.redis, LOADED_KEY).is_set()

    async def load(self, tenant: str) -> tuple[str, list[rule_set_pb2.RuleSet]]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(version_key(tenant))
            pipe.hgetall(rules_key(tenant))
            version, encoded = await pipe.execute()
        return str(version or "0"), [decode_rule_set(v) for v in encoded.values()]

    async def record_attempts(self, tenant: str, attempts: Sequence[RecordedAttempt]) -> None:
        """Writes each attempt into its devices' and clients' sets, replacing an earlier
        revision of it, in one round trip (a dialer reports up to 1,000 at once, a rebuild
        replays millions). Attempts go SCRIPT_ATTEMPTS to a script run, each run atomic, so
        an attempt never counts twice, whatever interleaves."""
        oldest = _ms(datetime.now(UTC) - ATTEMPT_RETENTION)
        retention = int(ATTEMPT_RETENTION.total_seconds())
        index = attempt_index_key(tenant)
        async with self.redis.pipeline(transaction=False) as pipe:
            for first in range(0, len(attempts), SCRIPT_ATTEMPTS):
                keys = [index]
                args: list[str | int] = [oldest, retention]
                for attempt in attempts[first : first + SCRIPT_ATTEMPTS]:
                    keys.append(attempt_key(tenant, attempt.attempt_id))
                    keys.extend(attempts_key(tenant, "device", d) for d in attempt.devices)
                    keys.extend(attempts_key(tenant, "client", c) for c in attempt.client_ids)
                    args.extend(
                        (
                            f"{attempt.attempt_id}|{attempt.call_result}|{attempt.channel}",
                            _ms(attempt.attempt_time),
                            attempt.revision,
                            len(attempt.devices) + len(attempt.client_ids),
                        )
                    )
                await self._record_attempts(keys, args, client=pipe)
            await pipe.execute()

    async def keep_unstored(self, tenant: str, reports: Sequence[str]) -> None:
        """Keeps reports Postgres could not take until `forget_unstored` (they expire with
        the attempts they report)."""
        key = unstored_attempts_key(tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *reports)
            pipe.expire(key, int(ATTEMPT_RETENTION.total_seconds()))
            pipe.sadd(UNSTORED_TENANTS_KEY, tenant)
            await pipe.execute()

    async def unstored(self, count: int) -> list[tuple[str, list[str]]]:
        """(tenant, its oldest `count` unstored reports) of every tenant with some."""
        tenants = sorted(str(t) for t in await self.redis.smembers(UNSTORED_TENANTS_KEY))
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.lrange(unstored_attempts_key(tenant), 0, count - 1)
            reports = await pipe.execute()
        return list(zip(tenants, reports, strict=True))

    async def forget_unstored(self, tenant: str, reports: Sequence[str]) -> int:
        """Removes one copy of each report, wherever it is now (another replica may have
        stored and removed it, and reports may have been kept behind it since); returns
        how many it removed."""
        removed = await self._forget_unstored(
            [unstored_attempts_key(tenant), UNSTORED_TENANTS_KEY], [tenant, *reports]
        )
        return int(removed)

    async def index_attempts(self) -> int:
        """Puts every existing attempts set in its tenant's index (sets written before the
        index existed); returns how many."""
        keys = [
            key
            async for key in self.redis.scan_iter(match="cx:{*}:compliance:attempts:*", count=1000)
        ]
        for first in range(0, len(keys), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[first : first + 1000]:
                    pipe.hsetnx(attempt_index_key(key[len("cx:{") : key.index("}")]), key, "0")
                await pipe.execute()
        return len(keys)


# KEYS[1] the attempt index, then for each attempt its key and its sorted sets; ARGV:
# oldest, ttl, then for each attempt its member, score, revision and number of sets. An
# attempt's key holds "<member>#<revision>" (a bare member before Postgres held attempts:
# revision 0); an older revision than the key's replaces nothing.
_RECORD_ATTEMPTS = """
local index, oldest, ttl = KEYS[1], ARGV[1], ARGV[2]
local k, a = 2, 3
while a <= #ARGV do
  local key, member, score, revision = KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local last = k + tonumber(ARGV[a + 3])
  local previous = redis.call('GET', key)
  local stale = false
  if previous then
    local was, was_revision = string.match(previous, '^(.*)#(%d+)$')
    if was then
      stale = tonumber(was_revision) > tonumber(revision)
      previous = was
    end
  end
  if not stale then
    for i = k + 1, last do
      if previous then redis.call('ZREM', KEYS[i], previous) end
      redis.call('ZADD', KEYS[i], score, member)
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', oldest)
      redis.call('EXPIRE', KEYS[i], ttl)
      redis.call('HSET', index, KEYS[i], score)
    end
    redis.call('SET', key, member .. '#' .. revision, 'EX', ttl)
  end
  k = last + 1
  a = a + 4
end
return 0
"""


# KEYS[1] a tenant's unstored reports, KEYS[2] the tenants with some; ARGV[1] the tenant,
# then the reports stored. The tenant leaves the set only with its last report, atomically,
# so a report kept meanwhile is never stranded.
_FORGET_UNSTORED = """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return removed
"""


def _encode(rule_set: rule_set_pb2.RuleSet) -> str:
    return base64.b64encode(rule_set.SerializeToString()).decode()


def decode_rule_set(value: str) -> rule_set_pb2.RuleSet:
    return rule_set_pb2.RuleSet.FromString(base64.b64decode(value))
