"""One read looks a batch up in every suppression list, in real Redis: lists looked up for
the same numbers share them in the command, and each record gets exactly its own denials."""

from __future__ import annotations

from datetime import UTC, datetime

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.mirror import LOADED_KEY, RulesMirror
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis

TENANT = "suppression-read"


def request(address: str, client_id: str = "") -> decision_pb2.DecisionRequest:
    return decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(address=address, client_id=client_id, time_zone="UTC")
    )


def sources(decision: decision_pb2.Decision) -> list[str]:
    return sorted(d.source for d in decision.denials)


async def test_each_record_is_denied_by_exactly_the_lists_that_hold_it(
    redis_server: EmbeddedRedis,
) -> None:
    redis = create_redis(redis_server.url)
    await redis.set(LOADED_KEY, "1")
    await redis.set(suppression.LOADED_KEY, "1")
    rules = rule_set_pb2.RuleSet(name="ruleSets/r", display_name="r")
    rules.contact_windows.add().end_time.hours = 24  # any hour: only suppression decides
    await RulesMirror(redis).put(TENANT, rules)
    mirror = suppression.SuppressionMirror(redis)
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
    wire = WireRedis(redis_server.url)
    engine = DecisionEngine(redis, wire)
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
    await wire.close()
    await redis.aclose()
