"""A rule set stored before today's checks existed, and failing them, cannot be trusted to
restrict what it says: its tenant's decisions are denied with the reason until the rules
change, and no other tenant is touched."""

from __future__ import annotations

from cxmesh.compliance.v1 import decision_pb2, rule_set_pb2
from cxmesh_server.compliance.engine import DecisionEngine
from cxmesh_server.compliance.mirror import RulesMirror
from cxmesh_server.mirrors import suppression
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.stack.datastores import EmbeddedRedis
from tests.integration.compliance_mirrors import mark_loaded

ANY_HOUR = rule_set_pb2.ContactWindow()
ANY_HOUR.end_time.hours = 24


def _rules(**fields: object) -> rule_set_pb2.RuleSet:
    return rule_set_pb2.RuleSet(
        name="ruleSets/r",
        display_name="r",
        contact_windows=[ANY_HOUR],
        **fields,  # type: ignore[arg-type]
    )


def _florida_override(state: str) -> rule_set_pb2.WindowOverride:
    override = rule_set_pb2.WindowOverride(state_province=state)
    override.contact_windows.add().end_time.hours = 24
    return override


REQUEST = decision_pb2.DecisionRequest(
    contact=decision_pb2.Contact(address="+13055550100", time_zone="America/New_York")
)


async def _decide(engine: DecisionEngine, tenant: str) -> decision_pb2.Decision:
    (decision,) = await engine.decide(tenant, [REQUEST])
    return decision


async def test_a_stored_rule_set_failing_validation_denies_its_tenant_until_fixed(
    redis_server: EmbeddedRedis,
) -> None:
    redis = create_redis(redis_server.url)
    wire = WireRedis(redis_server.url)
    mirror = RulesMirror(redis)
    engine = DecisionEngine(redis, wire)
    await mark_loaded(mirror, suppression.SuppressionMirror(redis))
    # A misspelt state: stored as it is, its override would match no contact.
    await mirror.put("invalid-rules", _rules(window_overrides=[_florida_override("Floride")]))
    await mirror.put("valid-rules", _rules())

    denied = await _decide(engine, "invalid-rules")
    assert not denied.allowed
    assert [d.code for d in denied.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
    assert "ruleSets/r.window_overrides[0].state_province" in denied.denials[0].reason
    assert (await _decide(engine, "valid-rules")).allowed

    await mirror.put("invalid-rules", _rules(window_overrides=[_florida_override("Florida")]))
    assert (await _decide(engine, "invalid-rules")).allowed
    await wire.close()
    await redis.aclose()
