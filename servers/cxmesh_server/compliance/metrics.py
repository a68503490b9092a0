"""Prometheus metrics of the compliance service: what it answered, and why it denied.

A rise of `cxmesh_compliance_denials_total{code="DATA_UNAVAILABLE"}` is the fail-closed
alarm: the service is answering "do not contact" because it cannot trust its Redis data.
Attempt reports are counted as new or repeated, so an operator can see that a dialer's
history reports (OCS sends two per attempt) are matched to one attempt each; and as
deferred while Postgres or Redis could not take them, until they caught up.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from prometheus_client import Counter

from cxmesh.compliance.v1 import decision_pb2

DECISIONS = Counter(
    "cxmesh_compliance_decisions_total",
    "Pre-dial decisions answered (PreValidate, batches, streams, OCS), by outcome.",
    ("tenant", "outcome"),
)
DENIALS = Counter(
    "cxmesh_compliance_denials_total",
    "Rules that denied a pre-dial decision, by code (a decision two rules deny counts twice).",
    ("tenant", "code"),
)
ATTEMPTS = Counter(
    "cxmesh_compliance_attempts_total",
    "Attempt reports, by whether they were new or reported an attempt again.",
    ("tenant", "report"),
)

DEFERRED_ATTEMPTS = Counter(
    "cxmesh_compliance_deferred_attempts_total",
    "Attempts a store could not take when reported (store postgres: counted and kept in"
    " Redis until Postgres is back; store redis: stored, noted as a gap until Redis is back),"
    " and those that reached it later (event caught_up) or never will (event dropped).",
    ("tenant", "store", "event"),
)


# The label children, looked up once: a unary decision pays two cached calls.
@lru_cache(maxsize=4096)
def _decisions(tenant: str, outcome: str) -> Any:
    return DECISIONS.labels(tenant, outcome)


@lru_cache(maxsize=4096)
def _denials(tenant: str, code: int) -> Any:
    name = decision_pb2.DenialCode.Name(code).removeprefix("DENIAL_CODE_")  # type: ignore[arg-type]
    return DENIALS.labels(tenant, name)


def count_decisions(tenant: str, decisions: Iterable[decision_pb2.Decision]) -> None:
    allowed = denied = 0
    for decision in decisions:
        if decision.allowed:
            allowed += 1
            continue
        denied += 1
        for denial in decision.denials:
            _denials(tenant, denial.code).inc()
    if allowed:
        _decisions(tenant, "allowed").inc(allowed)
    if denied:
        _decisions(tenant, "denied").inc(denied)


def count_attempts(tenant: str, reported: int, new: int) -> None:
    if new:
        ATTEMPTS.labels(tenant, "new").inc(new)
    if reported > new:
        ATTEMPTS.labels(tenant, "repeated").inc(reported - new)


def count_deferred(tenant: str, store: str, event: str, count: int) -> None:
    """`store` "postgres" or "redis"; `event` "deferred", "caught_up" or "dropped"."""
    if count:
        DEFERRED_ATTEMPTS.labels(tenant, store, event).inc(count)
