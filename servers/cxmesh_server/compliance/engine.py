"""Decisions from Redis and in-process compiled rules: no Postgres on the hot path.

In the steady state a batch costs one Redis round trip: the lookups (suppression entries,
attempt histories) are planned from the rules and suppression index cached in the
process, and the markers and versions those were read at come back in the same atomic
read (MULTI/EXEC when it is small, a script when it is large);
if a version moved, the answers are thrown away and planned again from fresh data.
Anything that cannot be read with certainty denies with DATA_UNAVAILABLE.

Live decisions of concurrent callers are coalesced (`Coalescer`): one read serves every
request that arrived while the previous read was in flight.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.compliance.coalescer import Coalescer
from cxmesh_server.compliance.domain.decide import (
    AttemptHistory,
    Denial,
    Place,
    TimeVerdict,
    decide,
    time_verdict,
)
from cxmesh_server.compliance.domain.rules import (
    CompiledRuleSet,
    InvalidRuleSet,
    compile_rule_set,
)
from cxmesh_server.compliance.mirror import LOADED_KEY as RULES_LOADED
from cxmesh_server.compliance.mirror import (
    attempt_index_key,
    attempts_key,
    decode_rule_set,
    rules_key,
    version_key,
)
from cxmesh_server.compliance.questions import Fields, Question, fields_of, question
from cxmesh_server.contacts.campaigns import campaign_key
from cxmesh_server.contacts.phones import PhoneError, normalize_phone
from cxmesh_server.contacts.places import (
    postal_key,
    state_for_postal_code,
    states_for_area_code,
    subdivision_code,
)
from cxmesh_server.contacts.timezones import derive_time_zone, is_local_zone
from cxmesh_server.mirrors import suppression as suppression_mirror
from cxmesh_server.mirrors import tenants as tenants_mirror
from cxmesh_server.mirrors.tenants import TenantSettings
from cxmesh_server.runtime.collector import long_lived
from cxmesh_server.runtime.redis import dataset_and_data_risk
from cxmesh_server.runtime.redis_wire import Script, WireRedis

# What decides where a tenant has no rule set for the channel: 08:00–21:00 every day.
DEFAULT_RULE_SET = rule_set_pb2.RuleSet(name="ruleSets/builtin-default", display_name="default")
DEFAULT_RULES = compile_rule_set(DEFAULT_RULE_SET)
DEFAULT_REGION = "US"
# Attempts older than the longest attempt window are never read.
ATTEMPT_LOOKBACK = timedelta(days=32)
DEVICE_SCOPES = frozenset(
    {
        rule_set_pb2.ATTEMPT_SCOPE_DEVICE,
        rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT,
        rule_set_pb2.ATTEMPT_SCOPE_UNSPECIFIED,
    }
)
CLIENT_SCOPES = frozenset(
    {rule_set_pb2.ATTEMPT_SCOPE_CLIENT, rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT}
)


class Unavailable(Exception):
    pass


# Profile numbers are never reused, so a cached time verdict can never outlive its rules.
_profile_numbers = itertools.count()


@dataclass(frozen=True, slots=True)
class Profile:
    """What every decision of one (campaign, channel) uses, worked out once per view."""

    number: int  # identifies the profile in the time-verdict cache
    rule_sets: tuple[CompiledRuleSet, ...]
    revisions: tuple[str, ...]
    default_zone: str
    # Tenant-wide lists, lists bound to the campaign, lists the rules name.
    suppression_lists: tuple[str, ...]
    counts_devices: bool
    counts_clients: bool
    # Lists the rules name that the tenant does not have: they suppress nothing.
    missing_lists: tuple[str, ...] = ()
    # target kind (phone, email, client) → the (list id, kind) lookups of a target of it:
    # derived from suppression_lists, once
    lookups: dict[str, tuple[tuple[str, str], ...]] = field(init=False, compare=False)
    # zone label → the "allowed" decision, built once: shared, never to be modified
    allowed: dict[str, decision_pb2.Decision] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        lookups = {
            kind: tuple((list_id, kind) for list_id in self.suppression_lists)
            for kind in ("phone", "email", "client")
        }
        object.__setattr__(self, "lookups", lookups)  # frozen: set once, here

    def allowed_in(self, zone_label: str) -> decision_pb2.Decision:
        decision = self.allowed.get(zone_label)
        if decision is None:
            if len(self.allowed) >= ALLOWED_PER_PROFILE:
                self.allowed.clear()
            decision = self.allowed[zone_label] = decision_pb2.Decision(
                allowed=True, time_zone=zone_label, rule_set_revisions=self.revisions
            )
        return decision


@dataclass(frozen=True, slots=True)
class Located:
    place: Place
    zone_label: str
    # Identifies the place in the time-verdict cache: two small ints hash faster than a
    # Place. Numbers are never reused, so a number always means the same place.
    place_number: int


_place_numbers = itertools.count()


@lru_cache(maxsize=100_000)
def _located(place: Place) -> Located:
    """One per place: the numbers of an area code (with the same ZIP code, or none) share
    it, so the collector tracks it once, not once a cached record (the bench's 200,000
    never-seen numbers, of every area code and no ZIP code, share 450)."""
    return Located(place, ",".join(place.zones), next(_place_numbers))


@dataclass(slots=True)
class Subject:
    """One request, prepared: what to read for it and what to decide it with. Shared by
    every later request with the same bytes under the same view: never modified."""

    profile: Profile
    channel: int
    address: str = ""
    kind: str = "phone"  # phone | email
    client_id: str = ""
    located: Located | None = None
    problem: Denial | None = None
    # its attempt sets: the device's if the rules count devices, the client's if clients
    attempt_keys: tuple[str, ...] = ()


# A read this small goes as plain commands in MULTI/EXEC, which Redis runs for less CPU
# than the script (`make bench`: compliance.redis_cpu_us_per_read_*); a larger one as the
# script, which reads only the attempt sets the attempt index names and sends targets
# shared by lists once.
TRANSACTION_MAX_ATTEMPT_SETS = 32
TRANSACTION_MAX_TARGETS = 256

# What a batch reads: (list id, kind, targets) per suppression lookup.
Plan = list[tuple[str, str, list[str]]]

# A national number of a tenant whose region is not known yet (see _View.region).
NO_REGION = Denial(
    decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE,
    "a national number, and the tenant's region is not available (IAM's settings mirror)",
    "",
)

# How often decisions read Redis's eviction policy and dataset id again: a changed policy
# is an operator's doing; a changed dataset (a failover) is trusted for at most this long.
REDIS_CHECK_SECONDS = 5.0

# How often a view without the tenant's settings (IAM has not mirrored them yet, or Redis
# lost them) reads them again.
SETTINGS_RETRY_SECONDS = 1.0

# (campaign, channel) profiles a view keeps, and "allowed" answers (one per zone label) a
# profile keeps: far more than a tenant has, so only a caller sending ever new campaigns or
# zone candidates reaches them, and then memory stays bounded.
PROFILES_PER_VIEW = 10_000
ALLOWED_PER_PROFILE = 1_000
# Prepared subjects a view keeps (a dialer validates the same records again and again).
SUBJECTS_PER_VIEW = 100_000
# Larger requests (the bench's record is 44 bytes; one with every contact field filled,
# a zone candidate and a campaign, 119) are prepared afresh
# each time: kept, a dialer sending kilobytes of junk per record would fill the caches'
# memory (100,000 subjects).
CACHED_REQUEST_BYTES = 1024


@dataclass
class _View:
    """A tenant's rules and suppression index as read at two versions."""

    rules_version: str
    rule_sets: list[CompiledRuleSet]
    index_version: str
    bindings: dict[str, list[str]]
    # why the rules cannot be applied (a stored rule set fails validation); "" when they can
    problem: str = ""
    # the tenant's settings (IAM's mirror); None until IAM has mirrored them
    settings: TenantSettings | None = None
    read_at: float = 0.0  # time.monotonic() of the read
    profiles: dict[tuple[str, int], Profile] = field(default_factory=dict)
    # request bytes → the request prepared under this view
    subjects: dict[bytes, Subject] = field(default_factory=dict)

    @property
    def region(self) -> str:
        """Where national numbers are read: the tenant's region; "" until IAM's mirror
        says (a guess could read a Mexican 55 number as New Jersey's 551)."""
        return self.settings.default_region if self.settings else ""

    @property
    def default_zone(self) -> str:
        """The tenant's zone for contacts whose own cannot be derived, when it is some
        place's local time: a tenant that never chose one has UTC, and 08:00 UTC is 03:00
        in New York."""
        zone = self.settings.default_time_zone if self.settings else ""
        return zone if is_local_zone(zone) else ""

    def profile(self, campaign: str, channel: int) -> Profile:
        key = (campaign, channel)
        found = self.profiles.get(key)
        if found is None:
            if len(self.profiles) >= PROFILES_PER_VIEW:
                self.profiles.clear()
            found = self.profiles[key] = self._profile(campaign, channel)
        return found

    def _profile(self, campaign: str, channel: int) -> Profile:
        # Channel first: a campaign's SMS-only rule set leaves its voice calls to the
        # tenant's default rule sets, not to the built-in ones.
        applicable = [r for r in self.rule_sets if r.applies_to(channel)]
        bound = [r for r in applicable if campaign and campaign in r.campaigns]
        rule_sets = tuple(bound or [r for r in applicable if not r.campaigns]) or (DEFAULT_RULES,)
        named = {
            s.removeprefix("suppressionLists/") for r in rule_sets for s in r.suppression_lists
        }
        scopes = {
            limit.scope
            for r in rule_sets
            for limit in r.attempt_limits
            if channel in limit.channels
        }
        return Profile(
            number=next(_profile_numbers),
            rule_sets=rule_sets,
            revisions=tuple(f"{r.name}@{r.revision}" for r in rule_sets),
            default_zone=next(
                (r.default_time_zone for r in rule_sets if r.default_time_zone),
                self.default_zone,
            ),
            suppression_lists=tuple(
                sorted(
                    list_id
                    for list_id, campaigns in self.bindings.items()
                    if not campaigns or campaign in campaigns or list_id in named
                )
            ),
            counts_devices=bool(scopes & DEVICE_SCOPES),
            counts_clients=bool(scopes & CLIENT_SCOPES),
            missing_lists=tuple(sorted(named - self.bindings.keys())),
        )


class _TimeVerdicts:
    """Time verdicts of the current second by (profile, place): a dialer asks about many
    contacts in the same zone each second, and the verdict is the same for all of them;
    so is the decision of every one of them that nothing else denies."""

    def __init__(self) -> None:
        self._second = -1
        self._verdicts: dict[tuple[int, int], TimeVerdict] = {}
        self._denied: dict[tuple[int, int], decision_pb2.Decision] = {}

    def get(self, profile: Profile, located: Located, now: datetime, second: int) -> TimeVerdict:
        if second != self._second:
            self._second, self._verdicts, self._denied = second, {}, {}
        key = (profile.number, located.place_number)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = time_verdict(profile.rule_sets, located.place, now)
            self._verdicts[key] = verdict
        return verdict

    def denied(
        self, profile: Profile, located: Located, verdict: TimeVerdict
    ) -> decision_pb2.Decision:
        """The decision when the time rules alone deny (`verdict`, from `get` in this
        second): shared, never to be modified. Built for each record, it cost ~4.5 µs a
        denied record (in-process, a batch half outside its window: 2.6-3.1 µs a record to
        conclude, 0.4-0.5 with this): the TCPA window shuts half the US in the UTC night."""
        key = (profile.number, located.place_number)
        decision = self._denied.get(key)
        if decision is None:
            decision = self._denied[key] = _decision(
                profile, located, verdict.denials, verdict.next_allowed
            )
        return decision


class DecisionEngine:
    def __init__(self, redis: Redis, wire: WireRedis, *, transactions: bool = True) -> None:
        """`transactions=False` reads everything by the script (the bench compares both)."""
        self._redis = redis
        # The per-decision read goes over the pipelined connection (the hot path).
        self._wire = wire
        self._transactions = transactions
        # tenant → what its decisions are planned from, with the versions it was read at
        self._views: dict[str, _View] = {}
        self._time_verdicts = _TimeVerdicts()
        self._live = Coalescer(self._decide_now)
        # What Redis says of its data, read every REDIS_CHECK_SECONDS: why it cannot be
        # trusted ("": it can), and the dataset's id, which loaded markers must hold.
        self._data_risk = ""
        self._dataset = ""
        self._redis_checked_at = -REDIS_CHECK_SECONDS

    async def decide(
        self,
        tenant: str,
        requests: Sequence[decision_pb2.DecisionRequest],
        now: datetime | None = None,
    ) -> list[decision_pb2.Decision]:
        """`answer` of requests that are not yet questions."""
        return await self.answer(tenant, [question(r) for r in requests], now)

    async def answer(
        self, tenant: str, questions: Sequence[Question], now: datetime | None = None
    ) -> list[decision_pb2.Decision]:
        """Decisions for now (coalesced with concurrent callers), or as of another instant
        (what the data in Redis now says about it: attempts made after it do not count)."""
        if now is None:
            return await self._live.submit(tenant, questions)
        return await self._decide_safely(tenant, questions, now, live=False)

    async def place(self, tenant: str, asked: Question) -> Place | None:
        """Where decisions take the question's contact to be; None when nowhere (denied)."""
        view = await self._view(tenant)
        if view.problem:
            return None
        located = _prepare(tenant, asked, view).located
        return located.place if located is not None else None

    async def suppression_lists(
        self, tenant: str, request: decision_pb2.DecisionRequest
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The suppression lists the request's decision checks, and those its rule sets
        name that the tenant does not have."""
        view = await self._view(tenant)
        profile = view.profile(
            campaign_key(request.campaign), request.channel or channel_pb2.CHANNEL_VOICE
        )
        return profile.suppression_lists, profile.missing_lists

    async def region(self, tenant: str) -> str:
        """Where the tenant's national numbers are read (attempts must be read as decisions
        are, or they would count against another number)."""
        return (await self._view(tenant)).region

    async def _view(self, tenant: str) -> _View:
        view = self._views.get(tenant)
        if view is None or (
            view.settings is None and time.monotonic() - view.read_at >= SETTINGS_RETRY_SECONDS
        ):
            view = await self._refresh(tenant)
        return view

    async def _decide_now(
        self, tenant: str, questions: Sequence[Question]
    ) -> list[decision_pb2.Decision]:
        return await self._decide_safely(tenant, questions, datetime.now(UTC), live=True)

    async def _decide_safely(
        self,
        tenant: str,
        questions: Sequence[Question],
        now: datetime,
        *,
        live: bool,
    ) -> list[decision_pb2.Decision]:
        try:
            if time.monotonic() - self._redis_checked_at >= REDIS_CHECK_SECONDS:
                self._dataset, self._data_risk = await dataset_and_data_risk(self._redis)
                self._redis_checked_at = time.monotonic()
            if self._data_risk:
                raise Unavailable(self._data_risk)
            return await self._decide(tenant, questions, now, live)
        except (RedisError, Unavailable, OSError) as error:
            reason = (
                f"compliance data unavailable: {error}"
                if str(error)
                else "compliance data unavailable"
            )
            return [_unavailable(reason) for _ in questions]

    async def _decide(
        self,
        tenant: str,
        questions: Sequence[Question],
        now: datetime,
        live: bool,
    ) -> list[decision_pb2.Decision]:
        view = await self._view(tenant)
        for _ in range(3):
            subjects = [_prepare(tenant, asked, view) for asked in questions]
            plan, attempt_keys, replies = await self._read(tenant, subjects, now)
            loaded, rebuilding, rules_version, index_version = replies[:4]
            if list(loaded) != [self._dataset, self._dataset]:
                raise Unavailable("the Redis mirrors are not loaded into this Redis dataset")
            if rebuilding:
                raise Unavailable("the suppression mirror is being rebuilt")
            if (str(rules_version or "0"), str(index_version or "0")) == (
                view.rules_version,
                view.index_version,
            ):
                if view.problem:
                    raise Unavailable(view.problem)
                return self._conclude(tenant, subjects, plan, attempt_keys, replies[4:], now, live)
            view = await self._refresh(tenant)
        raise Unavailable("the compliance data kept changing while deciding")

    async def _read(
        self, tenant: str, subjects: list[Subject], now: datetime
    ) -> tuple[Plan, list[str], list[Any]]:
        plan, sets = _planned(subjects)
        oldest = int((now - ATTEMPT_LOOKBACK).timestamp() * 1000)
        # One command, one atomic snapshot: markers, versions, entries and attempts.
        if (
            self._transactions
            and len(sets) <= TRANSACTION_MAX_ATTEMPT_SETS
            and sum(len(targets) for _, _, targets in plan) <= TRANSACTION_MAX_TARGETS
        ):
            replies, stale = await self._read_in_transaction(tenant, plan, sets, oldest)
        else:
            replies, stale = await self._read_by_script(tenant, plan, sets, oldest)
        if stale:
            # Sets with nothing left since the oldest score leave the index (they can never
            # count again; the next attempt puts them back), checked again atomically.
            await self._wire.evalsha(_FORGET_STALE, [attempt_index_key(tenant), *stale], [oldest])
        return plan, sets, replies

    async def _read_by_script(
        self,
        tenant: str,
        plan: Plan,
        attempt_keys: list[str],
        oldest: int,
    ) -> tuple[list[Any], list[str]]:
        """(`_READ`'s answer without its last part, the stale sets that part names)."""
        # Lists looked up for the same targets (every phone list, usually) share one copy of
        # them in the command: a batch of 1,000 sends 1,000 numbers, not 1,000 per list.
        groups: dict[tuple[str, ...], int] = {}
        group_of = [groups.setdefault(tuple(targets), len(groups)) for _, _, targets in plan]
        keys = [
            suppression_mirror.LOADED_KEY,
            RULES_LOADED,
            suppression_mirror.rebuilding_key(tenant),
            version_key(tenant),
            suppression_mirror.index_version_key(tenant),
            attempt_index_key(tenant),
            *(suppression_mirror.list_key(tenant, list_id, kind) for list_id, kind, _ in plan),
            *attempt_keys,
        ]
        args: list[str | int] = [
            oldest,
            len(plan),
            len(groups),
            *(group + 1 for group in group_of),
            *(len(targets) for targets in groups),
        ]
        for targets in groups:
            args.extend(targets)
        replies = list(await self._wire.evalsha(_READ, keys, args))
        return replies, [attempt_keys[position] for position in replies.pop()]

    async def _read_in_transaction(
        self,
        tenant: str,
        plan: Plan,
        attempt_keys: list[str],
        oldest: int,
    ) -> tuple[list[Any], list[str]]:
        """What `_read_by_script` answers, from plain commands in MULTI/EXEC."""
        commands: list[tuple[Any, ...]] = [
            ("MGET", suppression_mirror.LOADED_KEY, RULES_LOADED),
            ("EXISTS", suppression_mirror.rebuilding_key(tenant)),
            ("GET", version_key(tenant)),
            ("GET", suppression_mirror.index_version_key(tenant)),
            *(
                ("HMGET", suppression_mirror.list_key(tenant, list_id, kind), *targets)
                for list_id, kind, targets in plan
            ),
        ]
        if attempt_keys:
            # Every set is read, indexed or not: a set the index leaves out has nothing
            # that counts, so reading it changes no answer.
            commands.append(("HMGET", attempt_index_key(tenant), *attempt_keys))
            commands.extend(
                ("ZRANGEBYSCORE", key, oldest, "+inf", "WITHSCORES") for key in attempt_keys
            )
        replies = await self._wire.transaction(commands)
        read = 4 + len(plan)
        attempts: list[Any] = []
        stale = []
        if attempt_keys:
            indexed, members_of = replies[read], replies[read + 1 :]
            for position, (key, listed, members) in enumerate(
                zip(attempt_keys, indexed, members_of, strict=True)
            ):
                if members:
                    attempts += [position, members]
                elif listed is not None:
                    stale.append(key)
        return [*replies[:read], attempts], stale

    def _conclude(
        self,
        tenant: str,
        subjects: list[Subject],
        plan: Plan,
        attempt_keys: list[str],
        replies: list[Any],
        now: datetime,
        live: bool,
    ) -> list[decision_pb2.Decision]:
        now_ms = int(now.timestamp() * 1000)
        # Live, every attempt recorded has been made, even one stamped later than this
        # replica's clock (another replica's clock is ahead): it counts as made now.
        made_by = now if live else None
        # (list id, kind) → target → the entry's mirror value, for the targets found only
        entries: dict[tuple[str, str], dict[str, str]] = {}
        listed: set[str] = set()  # every target found on some list
        for (list_id, kind, targets), reply in zip(plan, replies, strict=False):
            found = {t: v for t, v in zip(targets, reply, strict=True) if v is not None}
            if found:
                entries[(list_id, kind)] = found
                listed.update(found)
        histories: dict[str, list[tuple[str, float]]] = {}
        if attempt_keys:
            found = replies[len(plan)]  # position, members, position, members, …
            for position, flat in zip(found[::2], found[1::2], strict=True):
                if flat:
                    histories[attempt_keys[position]] = [
                        (flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)
                    ]
        second = int(now.timestamp())
        decisions = []
        for subject in subjects:
            located = subject.located
            profile = subject.profile
            if located is None:
                problem = subject.problem or Denial(
                    decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE, "no place", ""
                )
                decisions.append(
                    decision_pb2.Decision(
                        allowed=False,
                        denials=[_denial(problem)],
                        rule_set_revisions=profile.revisions,
                    )
                )
                continue
            suppressed_by = (
                _suppressed_by(subject, entries, now_ms)
                if subject.address in listed or subject.client_id in listed
                else []
            )
            attempts = (
                _attempts(tenant, subject, histories, made_by)
                if histories and any(key in histories for key in subject.attempt_keys)
                else []
            )
            timed = self._time_verdicts.get(profile, located, now, second)
            if not suppressed_by and not attempts:
                decisions.append(
                    self._time_verdicts.denied(profile, located, timed)
                    if timed.denials
                    else profile.allowed_in(located.zone_label)
                )
                continue
            outcome = decide(
                profile.rule_sets,
                located.place,
                now,
                suppressed_by=suppressed_by,
                attempts=attempts,
                time_rules=timed,
            )
            decisions.append(_decision(profile, located, outcome.denials, outcome.next_allowed))
        return decisions

    async def _refresh(self, tenant: str) -> _View:
        """Reads the rules and the suppression index with their versions, atomically."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(version_key(tenant))
            pipe.hgetall(rules_key(tenant))
            pipe.get(suppression_mirror.index_version_key(tenant))
            pipe.hgetall(suppression_mirror.index_key(tenant))
            pipe.hgetall(tenants_mirror.settings_key(tenant))
            rules_version, encoded, index_version, index, settings = await pipe.execute()
        problem = ""
        try:
            rule_sets = [compile_rule_set(decode_rule_set(v)) for v in encoded.values()]
        except InvalidRuleSet as error:
            # Left out, it would restrict nothing: every decision of the tenant is denied
            # until the rules change.
            rule_sets, problem = [], f"a rule set is invalid: {error}"
        view = _View(
            rules_version=str(rules_version or "0"),
            rule_sets=rule_sets,
            problem=problem,
            settings=tenants_mirror.decode(settings),
            read_at=time.monotonic(),
            index_version=str(index_version or "0"),
            bindings={
                list_id: [campaign_key(c) for c in json.loads(value)["campaigns"]]
                for list_id, value in index.items()
            },
        )
        self._views[tenant] = view
        return view


def warm_up() -> None:
    """Loads what placing a contact reads (the ZIP and area code tables, phone metadata:
    ~160 ms for the first contact, timed in-process on the bench machine) before serving, so the first calls after a start do not
    wait for it; and before the runtime's gc.freeze, which keeps it out of the collector's
    sight."""
    _facts("+12125550100", DEFAULT_REGION, "", "10001", "NY", "", (), remember=True)


def _prepare(tenant: str, asked: Question, view: _View) -> Subject:
    _, key, _ = asked  # its serialized form keys the view's prepared requests
    subject = view.subjects.get(key)
    if subject is None:
        if len(key) > CACHED_REQUEST_BYTES:
            return _prepared(tenant, fields_of(asked), view, cached=False)
        if len(view.subjects) >= SUBJECTS_PER_VIEW:
            view.subjects.clear()
        subject = view.subjects[key] = _prepared(tenant, fields_of(asked), view)
        long_lived.added()
    return subject


def _prepared(tenant: str, fields: Fields, view: _View, *, cached: bool = True) -> Subject:
    (
        raw_address,
        country,
        zone,
        postal_code,
        state,
        candidates,
        raw_client_id,
        sent_channel,
        campaign,
        _,
    ) = fields
    channel = sent_channel or channel_pb2.CHANNEL_VOICE
    profile = view.profile(campaign_key(campaign), channel)
    kind, address, located, problem = _facts(
        raw_address,
        country or view.region,
        zone,
        postal_code,
        state,
        profile.default_zone,
        candidates,
        remember=cached,
    )
    # Trimmed, as the lists service stores client ids on its suppression lists.
    client_id = raw_client_id.strip()
    subject = Subject(profile, channel, address, kind, client_id, located, problem)
    if located is None:
        return subject  # denied without reading anything
    subject.attempt_keys = tuple(
        _limit_keys(tenant, subject, profile.counts_devices, profile.counts_clients)
    )
    return subject


Facts = tuple[str, str, Located | None, Denial | None]


def _facts(
    raw_address: str,
    country: str,
    explicit_zone: str,
    postal_code: str,
    state: str,
    default_zone: str,
    candidate_zones: tuple[str, ...],
    *,
    remember: bool,
) -> Facts:
    """(kind, normalised address, place, problem) of a contact; `remember`: whether its
    placing may be kept (not for a request of kilobytes). The contact is not kept: its
    prepared request is (`_View.subjects`). A cache of contacts as well cost more than it
    saved (in-process, caches full): 2.3 of 12.6 µs per never-seen record, for 2.5 µs per
    known record once after each rule change (8.1 against 5.6)."""
    raw = raw_address.strip()
    phone_zones: tuple[str, ...] | None = None
    area_code = ""
    if "@" in raw:
        kind, address = "email", raw.lower()
    else:
        try:
            phone = normalize_phone(raw, country)
        except PhoneError as error:
            if error.reason == "NO_REGION":
                return "phone", "", None, NO_REGION
            return (
                "phone",
                "",
                None,
                Denial(decision_pb2.DENIAL_CODE_INVALID_ADDRESS, str(error), ""),
            )
        kind, address, phone_zones = "phone", phone.e164, phone.time_zones
        area_code = address[2:5] if address.startswith("+1") else ""
    place = _placed if remember else _placed.__wrapped__
    located, problem = place(
        area_code,
        phone_zones,
        country.upper(),
        explicit_zone,
        postal_code,
        state,
        default_zone,
        candidate_zones,
    )
    return kind, address, located, problem


@lru_cache(maxsize=100_000)
def _placed(
    area_code: str,
    phone_zones: tuple[str, ...] | None,
    country: str,
    explicit_zone: str,
    postal_code: str,
    state: str,
    default_zone: str,
    candidate_zones: tuple[str, ...],
) -> tuple[Located | None, Denial | None]:
    """Where a contact is, from what its number says (its North American area code, the
    zones of its prefix; None for an email address) and its own fields. A list's numbers
    share a few hundred answers, so a number never seen before is placed by a lookup:
    in-process, a contact's facts took 8.2 µs without this cache, 5.4 with it."""
    decision = derive_time_zone(
        explicit=explicit_zone,
        postal_code=postal_code,
        country=country,
        phone_zones=phone_zones,
        default_zone=default_zone,
    )
    if decision is None and not candidate_zones:
        problem = Denial(
            decision_pb2.DENIAL_CODE_UNKNOWN_TIME_ZONE,
            "no time zone can be determined for the contact",
            "",
        )
        return None, problem
    # Zones other data gives add to those the contact's own data gives.
    derived = () if decision is None else decision.candidates or (decision.time_zone,)
    zones = tuple(dict.fromkeys((*derived, *candidate_zones)))
    # The rules of every state the record names, its ZIP code lies in or its area code
    # covers apply (`contacts.places`).
    named = subdivision_code(state) if state.strip() else ""
    by_postal = state_for_postal_code(postal_code, country) or ""
    by_number = states_for_area_code(area_code) if area_code else ()
    place = Place(
        zones=zones,
        states=tuple(dict.fromkeys(s for s in (named, by_postal, *by_number) if s)),
        area_code=area_code,
        postal_code=postal_key(postal_code),
    )
    return _located(place), None


def _planned(subjects: list[Subject]) -> tuple[Plan, list[str]]:
    """What a batch reads: its suppression lookups, and its attempt sets."""
    # (list id, kind) → targets to look up, in first-seen order without repeats
    lookups: dict[tuple[str, str], dict[str, None]] = {}
    attempt_keys: dict[str, None] = {}
    for subject in subjects:
        if subject.located is None:
            continue  # denied without reading anything
        # Its profile's lookups of its address, and of its client id if it has one.
        of_kind = subject.profile.lookups
        for target, kind in ((subject.address, subject.kind), (subject.client_id, "client")):
            if not target:
                continue
            for lookup in of_kind[kind]:
                wanted = lookups.get(lookup)
                if wanted is None:
                    wanted = lookups[lookup] = {}
                wanted[target] = None
        for key in subject.attempt_keys:
            attempt_keys[key] = None
    plan = [(list_id, kind, list(targets)) for (list_id, kind), targets in lookups.items()]
    sets = list(attempt_keys)
    return plan, sets


def _suppressed_by(
    subject: Subject, entries: dict[tuple[str, str], dict[str, str]], now_ms: int
) -> list[str]:
    names = set()
    for list_id in subject.profile.suppression_lists:
        for kind, target in ((subject.kind, subject.address), ("client", subject.client_id)):
            value = entries.get((list_id, kind), {}).get(target) if target else None
            if value is not None and suppression_mirror.is_active(value, now_ms, subject.channel):
                names.add(f"suppressionLists/{list_id}")
    return sorted(names)


def _attempts(
    tenant: str,
    subject: Subject,
    histories: dict[str, list[tuple[str, float]]],
    made_by: datetime | None,
) -> list[AttemptHistory]:
    """The attempts each of the subject's limits counts; with `made_by`, those stamped later
    are taken as made at that instant."""
    attempts = []
    for rule_set in subject.profile.rule_sets:
        for limit in rule_set.attempt_limits:
            if subject.channel not in limit.channels:
                continue
            # attempt id → when: an attempt on the device and the client counts once, and
            # two attempts in the same millisecond count twice
            times: dict[str, datetime] = {}
            keys = _limit_keys(
                tenant, subject, limit.scope in DEVICE_SCOPES, limit.scope in CLIENT_SCOPES
            )
            for key in keys:
                for member, score in histories.get(key, ()):
                    attempt_id, result, channel = member.rsplit("|", 2)
                    if int(result) in limit.counted_results and int(channel) in limit.channels:
                        made = datetime.fromtimestamp(score / 1000, UTC)
                        times[attempt_id] = made if made_by is None else min(made, made_by)
            if times:
                attempts.append(
                    AttemptHistory(rule_set.name, limit.index, tuple(sorted(times.values())))
                )
    return attempts


def _limit_keys(tenant: str, subject: Subject, devices: bool, clients: bool) -> list[str]:
    keys = []
    # Without a client id the number stands for the client: a limit by client id (the
    # Regulation F preset's) would otherwise count nothing for the record.
    if devices or (clients and not subject.client_id):
        keys.append(attempts_key(tenant, "device", subject.address))
    if clients and subject.client_id:
        keys.append(attempts_key(tenant, "client", subject.client_id))
    return keys


def _decision(
    profile: Profile,
    located: Located,
    denials: Sequence[Denial],
    next_allowed: datetime | None,
) -> decision_pb2.Decision:
    decision = decision_pb2.Decision(
        allowed=not denials,
        denials=[_denial(d) for d in denials],
        time_zone=located.zone_label,
        rule_set_revisions=profile.revisions,
    )
    if next_allowed is not None:
        decision.next_allowed_time.FromDatetime(next_allowed)
    return decision


def _denial(denial: Denial) -> decision_pb2.Denial:
    return decision_pb2.Denial(code=denial.code, reason=denial.reason, source=denial.source)  # type: ignore[arg-type]


def _unavailable(reason: str) -> decision_pb2.Decision:
    return decision_pb2.Decision(
        allowed=False,
        denials=[
            decision_pb2.Denial(code=decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE, reason=reason)
        ],
    )


# Everything a batch of decisions reads, in one script (one atomic snapshot):
# KEYS[1], KEYS[2]: the suppression and rules loaded markers; KEYS[3]: the tenant's
# suppression rebuilding marker; KEYS[4], KEYS[5]: rules and suppression index versions;
# KEYS[6]: the attempt index; then one suppression hash per lookup; then attempt sets.
# ARGV[1]: the oldest attempt score; ARGV[2]: the number of lookups L; ARGV[3..2+L]: how
# many targets each lookup has; then the targets of every lookup in order.
# Answer: the two markers' values, rebuilding (0/1), the two versions, one HMGET answer per
# lookup, then the attempts flat for the sets in the index only: position of the set among
# the attempt sets (0-based), its members with their scores, and so on; last the positions
# of the sets in the index with nothing left since the oldest score (stale).
_READ = Script("""
local lookups = tonumber(ARGV[2])
local groups = tonumber(ARGV[3])
local out = {
  redis.call('MGET', KEYS[1], KEYS[2]),
  redis.call('EXISTS', KEYS[3]),
  redis.call('GET', KEYS[4]),
  redis.call('GET', KEYS[5]),
}
-- where each group of targets starts in ARGV, and where it ends
local starts, ends = {}, {}
local arg = 4 + lookups + groups
for g = 1, groups do
  starts[g] = arg
  arg = arg + tonumber(ARGV[3 + lookups + g])
  ends[g] = arg - 1
end
for l = 1, lookups do
  local g = tonumber(ARGV[3 + l])
  local first, last = starts[g], ends[g]
  if last - first < 1000 then
    out[#out + 1] = redis.call('HMGET', KEYS[6 + l], unpack(ARGV, first, last))
  else
    local values = {}
    for chunk = first, last, 1000 do
      local found = redis.call('HMGET', KEYS[6 + l], unpack(ARGV, chunk, math.min(chunk + 999, last)))
      for j = 1, #found do
        values[#values + 1] = found[j]
      end
    end
    out[#out + 1] = values
  end
end
local attempts, stale = {}, {}
local sets = 7 + lookups
for first = sets, #KEYS, 1000 do
  local last = math.min(first + 999, #KEYS)
  local found = redis.call('HMGET', KEYS[6], unpack(KEYS, first, last))
  for j = 1, #found do
    if found[j] then
      local i = first + j - 1
      local members = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf', 'WITHSCORES')
      if #members > 0 then
        attempts[#attempts + 1] = i - sets
        attempts[#attempts + 1] = members
      else
        stale[#stale + 1] = i - sets
      end
    end
  end
end
out[#out + 1] = attempts
out[#out + 1] = stale
return out
""")

# KEYS[1]: the attempt index; KEYS[2..]: attempt sets a read found with nothing since
# ARGV[1]. Each leaves the index unless an attempt came meanwhile.
_FORGET_STALE = Script("""
for i = 2, #KEYS do
  if redis.call('ZCOUNT', KEYS[i], ARGV[1], '+inf') == 0 then
    redis.call('HDEL', KEYS[1], KEYS[i])
  end
end
return 0
""")
