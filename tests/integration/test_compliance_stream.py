"""A PreValidateStream whose dialer sends without reading the answers stops taking its
questions: an answer holds its question's place until it is sent, so a stream's memory
stays bounded whatever the dialer does (real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from cxmesh.compliance.v1 import decision_pb2, decision_service_pb2
from cxmesh_server.compliance.attempts import AttemptStore
from cxmesh_server.compliance.handlers import STREAM_IN_FLIGHT, DecisionHandlers
from cxmesh_server.runtime.context import Principal, reset_principal, set_principal
from cxmesh_server.stack.datastores import EmbeddedPostgres, EmbeddedRedis
from tests.integration.compliance_mirrors import compliance_pool, loaded_mirrors

TENANT = "stream-backpressure"
QUESTIONS = 1000


async def test_a_stream_whose_answers_are_not_read_stops_taking_questions(
    redis_server: EmbeddedRedis, postgres: EmbeddedPostgres
) -> None:
    mirrors = await loaded_mirrors(redis_server.url, TENANT)
    pool = await compliance_pool(postgres.dsn)
    handlers = DecisionHandlers(mirrors.engine(), AttemptStore(pool, mirrors.rules))
    taken = 0

    async def questions() -> AsyncIterator[decision_service_pb2.PreValidateStreamRequest]:
        nonlocal taken
        for n in range(QUESTIONS):
            taken += 1
            contact = decision_pb2.Contact(address=f"+1415555{n:04d}", time_zone="America/Denver")
            yield decision_service_pb2.PreValidateStreamRequest(
                correlation_id=str(n),
                decision_request=decision_pb2.DecisionRequest(contact=contact),
            )

    principal = set_principal(Principal(TENANT, "dialer", frozenset(), "jwt"))
    try:
        stream = handlers.PreValidateStream(questions(), None)  # type: ignore[arg-type]
        first = await anext(stream)  # one answer read, then none for a while
        await asyncio.sleep(0.5)
        assert taken <= STREAM_IN_FLIGHT + 2
        rest = [answer async for answer in stream]  # read at last, every one comes
        assert len({a.correlation_id for a in [first, *rest]}) == QUESTIONS
        assert all(a.decision.allowed for a in [first, *rest])
    finally:
        reset_principal(principal)
        await pool.close()
        await mirrors.close()
