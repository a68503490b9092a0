"""Decisions read the tenant's settings from IAM's mirror: where its national numbers are
read, and the zone of contacts with none of their own. Until IAM has mirrored them (or
after Redis lost them) a national number is denied as data unavailable (read as US, a
Mexico City 55 number is New Jersey's 551), no zone is guessed, and decisions look again
every second."""

from __future__ import annotations

import asyncio

from cxmesh.compliance.v1 import decision_pb2
from cxmesh_server.compliance import engine as engine_module
from cxmesh_server.mirrors.tenants import TenantSettings, encode, settings_key
from cxmesh_server.stack.datastores import EmbeddedRedis
from tests.integration.compliance_mirrors import loaded_mirrors

TENANT = "tenant-settings"
LONDON_NATIONAL = decision_pb2.DecisionRequest(
    contact=decision_pb2.Contact(address="020 7946 0000")
)


async def test_settings_mirrored_after_the_first_decision_are_read_within_a_second(
    redis_server: EmbeddedRedis,
) -> None:
    mirrors = await loaded_mirrors(redis_server.url, TENANT)
    engine = mirrors.engine()

    mexico_city = decision_pb2.DecisionRequest(contact=decision_pb2.Contact(address="5512345678"))
    london = decision_pb2.DecisionRequest(contact=decision_pb2.Contact(address="+442079460000"))
    national, other_national, international = await engine.decide(
        TENANT, [LONDON_NATIONAL, mexico_city, london]
    )
    assert [d.code for d in national.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
    assert [d.code for d in other_national.denials] == [decision_pb2.DENIAL_CODE_DATA_UNAVAILABLE]
    assert international.allowed and international.time_zone == "Europe/London"
    await mirrors.redis.hset(
        settings_key(TENANT), mapping=encode(TenantSettings("Europe/London", "GB"))
    )
    await asyncio.sleep(engine_module.SETTINGS_RETRY_SECONDS)
    (after,) = await engine.decide(TENANT, [LONDON_NATIONAL])
    assert after.allowed and after.time_zone == "Europe/London"
    await mirrors.close()
