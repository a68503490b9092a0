"""Decisions from Redis and in-process compiled rules: no Postgres on the hot path.

A batch costs two Redis round trips: one for the markers, the rules version and the
suppression index; one for every suppression lookup and attempt history of the batch.
Anything that cannot be read with certainty denies with DATA_UNAVAILABLE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.compliance.domain.decide import AttemptHistory, Denial, Outcome, Place, decide
from cxmesh_server.compliance.domain.rules import CompiledRuleSet, compile_rule_set
from cxmesh_server.compliance.mirror import LOADED_KEY as RULES_LOADED
from cxmesh_server.compliance.mirror import (
    attempts_key,
    decode_rule_set,
    rules_key,
    version_key,
)
from cxmesh_server.contacts.phones import Phone, PhoneError, normalize_phone
from cxmesh_server.contacts.timezones import derive_time_zone
from cxmesh_server.mirrors import suppression as suppression_mirror

DEFAULT_RULES = compile_rule_set(
    rule_set_pb2.RuleSet(name="ruleSets/builtin-default", display_name="default")
)
DEFAULT_REGION = "US"
MIDNIGHT_LOOKBACK = timedelta(hours=50)


@dataclass
class Subject:
    """One request, prepared: who, where, which rules, which keys to read."""

    request: decision_pb2.DecisionRequest
    channel: int
    address: str = ""
    kind: str = "phone"  # phone | email
    place: Place | None = None
    zone_label: str = ""
    rule_sets: list[CompiledRuleSet] = field(default_factory=list)
    suppression_lists: list[str] = field(default_factory=list)
    problem: Denial | None = None


class Unavailable(Exception):
    pass


@dataclass
class _View:
    rules_version: str
    rule_sets: list[CompiledRuleSet]
    index_version: str
    bindings: dict[str, list[str]]


class DecisionEngine:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # tenant → what its decisions are planned from, with the versions it was read at
        self._views: dict[str, _View] = {}

    async def decide(
        self,
        tenant: str,
        requests: Sequence[decision_pb2.DecisionRequest],
        now: datetime | None = None,
    ) -> list[decision_pb2.Decision]:
        now = now or datetime.now(UTC)
        try:
            return await self._decide(tenant, requests, now)
        except (RedisError, Unavailable, OSError) as error:
            reason = (
                f"compliance data unavailable: {error}"
                if str(error)
                else "compliance data unavailable"
            )
            return [_unavailable(reason) for _ in requests]

    async def _decide(
        self, tenant: str, requests: Sequence[decision_pb2.DecisionRequest], now: datetime
    ) -> list[decision_pb2.Decision]:
        view = self._views.get(tenant) or await self._refresh(tenant)
        # One round trip in the steady state: the lookups are planned from the cached rules
        # and suppression index, and their versions are read in the same pipeline; if either
        # moved, the answers are thrown away and planned again from fresh data.
        for _ in range(3):
            subjects = [
                self._prepare(request, view.rule_sets, view.bindings) for request in requests
            ]
            plan, attempt_keys, replies = await self._read(tenant, subjects, now)
            loaded, rebuilding, rules_version, index_version = replies[:4]
            if loaded != 2:
                raise Unavailable("the Redis mirrors are not loaded")
            if rebuilding:
                raise Unavailable("the suppression mirror is being rebuilt")
            if (str(rules_version or "0"), str(index_version or "0")) == (
                view.rules_version,
                view.index_version,
            ):
                return self._conclude(tenant, subjects, plan, attempt_keys, replies[4:], now)
            view = await self._refresh(tenant)
        raise Unavailable("the compliance data kept changing while deciding")

    async def _read(
        self, tenant: str, subjects: list[Subject], now: datetime
    ) -> tuple[list[tuple[str, str, list[str]]], list[str], list[Any]]:
        plan: list[tuple[str, str, list[str]]] = []
        attempt_keys = sorted({k for s in subjects for k in _attempt_keys(tenant, s)})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(suppression_mirror.LOADED_KEY, RULES_LOADED)
            pipe.exists(suppression_mirror.rebuilding_key(tenant))
            pipe.get(version_key(tenant))
            pipe.get(suppression_mirror.index_version_key(tenant))
            for list_id in sorted({name for s in subjects for name in s.suppression_lists}):
                for kind in ("phone", "email", "client"):
                    targets = sorted(
                        {
                            t
                            for s in subjects
                            if list_id in s.suppression_lists
                            for t in _targets(s, kind)
                        }
                    )
                    if targets:
                        pipe.hmget(suppression_mirror.list_key(tenant, list_id, kind), targets)
                        plan.append((list_id, kind, targets))
            if attempt_keys:
                # One command for every attempt history of the batch, however many keys.
                pipe.eval(
                    _READ_ATTEMPTS,
                    len(attempt_keys),
                    *attempt_keys,
                    int((now - timedelta(days=32)).timestamp() * 1000),
                )
            replies = await pipe.execute()
        return plan, attempt_keys, list(replies)

    def _conclude(
        self,
        tenant: str,
        subjects: list[Subject],
        plan: list[tuple[str, str, list[str]]],
        attempt_keys: list[str],
        replies: list[Any],
        now: datetime,
    ) -> list[decision_pb2.Decision]:
        now_ms = int(now.timestamp() * 1000)
        hits: dict[tuple[str, str], dict[str, str]] = {}
        for (list_id, kind, targets), reply in zip(plan, replies[: len(plan)], strict=True):
            for target, value in zip(targets, reply, strict=True):
                if value is not None:
                    hits.setdefault((kind, target), {})[list_id] = value
        histories: dict[str, list[tuple[str, float]]] = {}
        if attempt_keys:
            for key, flat in zip(attempt_keys, replies[len(plan)], strict=True):
                histories[key] = [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
        return [self._finish(s, hits, histories, tenant, now, now_ms) for s in subjects]

    async def _refresh(self, tenant: str) -> _View:
        """Reads the rules and the suppression index with their versions, atomically."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(version_key(tenant))
            pipe.hgetall(rules_key(tenant))
            pipe.get(suppression_mirror.index_version_key(tenant))
            pipe.hgetall(suppression_mirror.index_key(tenant))
            rules_version, encoded, index_version, index = await pipe.execute()
        view = _View(
            rules_version=str(rules_version or "0"),
            rule_sets=[compile_rule_set(decode_rule_set(v)) for v in encoded.values()],
            index_version=str(index_version or "0"),
            bindings={list_id: json.loads(value)["campaigns"] for list_id, value in index.items()},
        )
        self._views[tenant] = view
        return view

    def _prepare(
        self,
        request: decision_pb2.DecisionRequest,
        compiled: list[CompiledRuleSet],
        bindings: dict[str, list[str]],
    ) -> Subject:
        channel = request.channel or channel_pb2.CHANNEL_VOICE
        subject = Subject(request=request, channel=channel)
        contact = request.contact
        raw = contact.address.strip()
        phone_zones: tuple[str, ...] | None = None
        if "@" in raw:
            subject.kind, subject.address = "email", raw.lower()
        else:
            try:
                phone = _normalize(raw, contact.country or DEFAULT_REGION)
            except PhoneError as error:
                subject.problem = Denial(decision_pb2.DENIAL_CODE_INVALID_ADDRESS, str(error), "")
                return subject
            subject.address, phone_zones = phone.e164, phone.time_zones
        campaign = request.campaign
        bound = [r for r in compiled if campaign and campaign in r.campaigns]
        chosen = bound or [r for r in compiled if not r.campaigns] or [DEFAULT_RULES]
        subject.rule_sets = [r for r in chosen if r.applies_to(channel)] or [DEFAULT_RULES]
        default_zone = next(
            (r.default_time_zone for r in subject.rule_sets if r.default_time_zone), ""
        )
        decision = derive_time_zone(
            explicit=contact.time_zone,
            postal_code=contact.postal_code,
            country=contact.country.upper(),
            phone_zones=phone_zones,
            default_zone=default_zone,
        )
        if decision is None:
            subject.problem = Denial(
                decision_pb2.DENIAL_CODE_UNKNOWN_TIME_ZONE,
                "no time zone can be determined for the contact",
                "",
            )
            return subject
        zones = decision.candidates or (decision.time_zone,)
        area_code = subject.address[2:5] if subject.address.startswith("+1") else ""
        subject.place = Place(
            zones=tuple(zones),
            state=contact.state_province.upper(),
            area_code=area_code,
            postal_code=contact.postal_code,
        )
        subject.zone_label = ",".join(zones)
        # Tenant-wide lists always; lists bound to this campaign; lists the rules name.
        named = {
            s.removeprefix("suppressionLists/")
            for r in subject.rule_sets
            for s in r.suppression_lists
        }
        subject.suppression_lists = sorted(
            list_id
            for list_id, campaigns in bindings.items()
            if not campaigns or campaign in campaigns or list_id in named
        )
        return subject

    def _finish(
        self,
        subject: Subject,
        hits: dict[tuple[str, str], dict[str, str]],
        histories: dict[str, list[tuple[str, float]]],
        tenant: str,
        now: datetime,
        now_ms: int,
    ) -> decision_pb2.Decision:
        revisions = [f"{r.name}@{r.revision}" for r in subject.rule_sets]
        if subject.problem is not None or subject.place is None:
            problem = subject.problem or Denial(
                decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE, "no place", ""
            )
            return decision_pb2.Decision(
                allowed=False, denials=[_denial(problem)], rule_set_revisions=revisions
            )
        suppressed_by = sorted(
            f"suppressionLists/{list_id}"
            for kind in ("phone", "email", "client")
            for target in _targets(subject, kind)
            for list_id, value in hits.get((kind, target), {}).items()
            if list_id in subject.suppression_lists
            and suppression_mirror.is_active(value, now_ms, subject.channel)
        )
        attempts = []
        for rule_set in subject.rule_sets:
            for limit in rule_set.attempt_limits:
                if subject.channel not in limit.channels:
                    continue
                times = []
                for key in _limit_keys(tenant, subject, limit.scope):
                    for member, score in histories.get(key, []):
                        _, result, channel = member.rsplit("|", 2)
                        if int(result) in limit.counted_results and int(channel) in limit.channels:
                            times.append(datetime.fromtimestamp(score / 1000, UTC))
                attempts.append(
                    AttemptHistory(rule_set.name, limit.index, tuple(sorted(set(times))))
                )
        outcome: Outcome = decide(
            subject.rule_sets,
            subject.place,
            now,
            suppressed_by=sorted(set(suppressed_by)),
            attempts=attempts,
        )
        decision = decision_pb2.Decision(
            allowed=outcome.allowed,
            denials=[_denial(d) for d in outcome.denials],
            time_zone=subject.zone_label,
            rule_set_revisions=revisions,
        )
        if outcome.next_allowed is not None:
            decision.next_allowed_time.FromDatetime(outcome.next_allowed)
        return decision


@lru_cache(maxsize=200_000)
def _normalize(raw: str, region: str) -> Phone:
    """Dialers validate the same records again and again: parse each number once."""
    return normalize_phone(raw, region)


def _targets(subject: Subject, kind: str) -> list[str]:
    if subject.place is None:
        return []
    if kind == "client":
        return [subject.request.contact.client_id] if subject.request.contact.client_id else []
    return [subject.address] if subject.kind == kind else []


def _limit_keys(tenant: str, subject: Subject, scope: int) -> list[str]:
    keys = []
    if scope in (
        rule_set_pb2.ATTEMPT_SCOPE_DEVICE,
        rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT,
        rule_set_pb2.ATTEMPT_SCOPE_UNSPECIFIED,
    ):
        keys.append(attempts_key(tenant, "device", subject.address))
    if (
        scope in (rule_set_pb2.ATTEMPT_SCOPE_CLIENT, rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT)
        and subject.request.contact.client_id
    ):
        keys.append(attempts_key(tenant, "client", subject.request.contact.client_id))
    return keys


def _attempt_keys(tenant: str, subject: Subject) -> list[str]:
    if subject.place is None:
        return []
    return [
        k
        for r in subject.rule_sets
        for limit in r.attempt_limits
        for k in _limit_keys(tenant, subject, limit.scope)
    ]


def _denial(denial: Denial) -> decision_pb2.Denial:
    return decision_pb2.Denial(code=denial.code, reason=denial.reason, source=denial.source)  # type: ignore[arg-type]


def _unavailable(reason: str) -> decision_pb2.Decision:
    return decision_pb2.Decision(
        allowed=False,
        denials=[
            decision_pb2.Denial(code=decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE, reason=reason)
        ],
    )


# KEYS: attempt sorted sets; ARGV[1]: oldest score. Each key's members with their scores.
_READ_ATTEMPTS = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf', 'WITHSCORES')
end
return out
"""
