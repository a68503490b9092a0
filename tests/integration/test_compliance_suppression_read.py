"""Suppression as decisions read it, in real Redis: one read looks a batch up in every list
(lists looked up for the same numbers share them in the command), each record gets exactly
its own denials, and an entry counts only on its channels and until its expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.compliance.engine import TRANSACTION_MAX_TARGETS, DecisionEngine
from cxmesh_server.compliance.mirror import LOADED_KEY, RulesMirror
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import LoadedMarker, create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis
from tests.integration.compliance_mirrors import mark_loaded

TENANT = "suppression-read"


def request(address: str, client_id: str = "") -> decision_pb2.DecisionRequest:
    return decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address=address, client_id=client_id, time_zone="UTC")
    )


def sources(decision: decision_pb2.Decision) -> list[str]:
    return sorted(d.source for d in decision.denials)


class Mirrored:
    """Loaded mirrors with an all-day rule set (only suppression decides), and an engine."""

    def __init__(self, redis_url: str) -> None:
        self.redis = create_redis(redis_url)
        self.wire = WireRedis(redis_url)
        self.engine = DecisionEngine(self.redis, self.wire)
        self.suppression = suppression.SuppressionMirror(self.redis)

    async def load(self, tenant: str) -> None:
        await mark_loaded(RulesMirror(self.redis), self.suppression)
        rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="r")
        rules.contact_windows.add().end_time.hours = 24
        await RulesMirror(self.redis).put(tenant, rules)

    async def close(self) -> None:
        await self.wire.close()
        await self.redis.aclose()


@pytest.fixture
async def mirrored(redis_server: EmbeddedRedis) -> AsyncIterator[Mirrored]:
    opened = Mirrored(redis_server.url)
    yield opened
    await opened.close()


async def test_each_record_is_denied_by_exactly_the_lists_that_hold_it(
    mirrored: Mirrored,
) -> None:
    await mirrored.load(TENANT)
    mirror, engine = mirrored.suppression, mirrored.engine
    entries = {
        "a": [suppression.Entry("phone", "+14155550101", 0, None)],
        "b": [
            suppression.Entry("phone", "+14155550102", 0, None),
            suppression.Entry("phone", "+14155551200", 0, None),
            suppression.Entry("client", "c-3", 0, None),
        ],
    }
    for list_id, listed in entries.items():
        await mirror.put_list(TENANT, list_id, [])
        await mirror.put_entries(TENANT, list_id, listed)
    now = datetime.now(UTC)

    # Two phone lists looked up for the same numbers, a client list for the client ids.
    decisions = await engine.decide(
        TENANT,
        [
            request("+14155550101", "c-1"),
            request("+14155550102", "c-2"),
            request("+14155550103", "c-3"),
            request("+14155550104", "c-4"),
        ],
        now=now,
    )
    assert [sources(d) for d in decisions] == [
        ["suppressionLists/a"],
        ["suppressionLists/b"],
        ["suppressionLists/b"],
        [],
    ]

    # More numbers than one lookup command takes (1,000): the one listed is still found.
    batch = [request(f"+1415555{n:04d}") for n in range(100, 1600)]
    decisions = await engine.decide(TENANT, batch, now=now)
    denied = [r.contact.address for r, d in zip(batch, decisions, strict=True) if not d.allowed]
    assert denied == ["+14155550101", "+14155550102", "+14155551200"]


async def test_an_entry_denies_until_the_instant_it_expires_and_only_on_its_channels(
    mirrored: Mirrored,
) -> None:
    tenant = "suppression-expiry"
    await mirrored.load(tenant)
    expiry = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    sms_only = suppression.channel_mask([channel_pb2.CHANNEL_SMS])
    await mirrored.suppression.put_list(tenant, "stop", [])
    await mirrored.suppression.put_entries(
        tenant,
        "stop",
        [
            suppression.Entry("phone", "+14155550111", 0, int(expiry.timestamp() * 1000)),
            suppression.Entry("phone", "+14155550112", sms_only, None),
        ],
    )

    async def denied(
        address: str,
        at: datetime,
        channel: channel_pb2.Channel.ValueType = channel_pb2.CHANNEL_VOICE,
    ) -> bool:
        asked = request(address)
        asked.channel = channel
        (decision,) = await mirrored.engine.decide(tenant, [asked], now=at)
        return sources(decision) == ["suppressionLists/stop"]

    one_ms = timedelta(milliseconds=1)
    assert await denied("+14155550111", expiry - one_ms)
    assert not await denied("+14155550111", expiry)  # at the instant exactly
    assert not await denied("+14155550111", expiry + one_ms)
    assert await denied("+14155550112", expiry, channel_pb2.CHANNEL_SMS)
    assert not await denied("+14155550112", expiry, channel_pb2.CHANNEL_VOICE)
    assert not await denied("+14155550112", expiry, channel_pb2.CHANNEL_EMAIL)


# One record is read in a MULTI/EXEC; 300 numbers, by the script. Both must fail closed.
@pytest.mark.parametrize("records", [1, 300])
async def test_every_read_denies_while_the_mirror_is_rebuilt_or_lost(
    mirrored: Mirrored, records: int
) -> None:
    assert (records > TRANSACTION_MAX_TARGETS) == (records > 1)
    tenant = f"suppression-unavailable-{records}"
    await mirrored.load(tenant)
    await mirrored.suppression.put_list(tenant, "dnc", [])
    batch = [request(f"+1415555{n:04d}") for n in range(2000, 2000 + records)]

    async def answers() -> set[tuple[bool, str]]:
        decisions = await mirrored.engine.decide(tenant, batch, now=datetime.now(UTC))
        return {(d.allowed, d.denials[0].reason if d.denials else "") for d in decisions}

    assert await answers() == {(True, "")}
    await mirrored.suppression.set_ready(tenant, False)
    assert await answers() == {
        (False, "compliance data unavailable: the suppression mirror is being rebuilt")
    }
    await mirrored.suppression.set_ready(tenant, True)
    assert await answers() == {(True, "")}
    for marker in (LOADED_KEY, suppression.LOADED_KEY):
        await mirrored.redis.delete(marker)
        assert await answers() == {
            (
                False,
                "compliance data unavailable: the Redis mirrors are not loaded into this "
                "Redis dataset",
            )
        }
        loaded = LoadedMarker(mirrored.redis, marker)
        await loaded.mark(await loaded.begin())
    assert await answers() == {(True, "")}
