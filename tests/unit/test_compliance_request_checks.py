"""A decision request that passed its checks is not read field by field again, and only
one that passes them whenever it comes back is taken for checked."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from cxmesh.compliance.v1 import decision_pb2
from cxmesh_server.compliance.handlers import _asked
from cxmesh_server.runtime.errors import Validator


def _violations(request: decision_pb2.DecisionRequest, index: int | None = None) -> list[str]:
    check = Validator()
    _asked("decision_requests", request, check, index=index)
    return [violation.field for violation in check.violations]


def _request(**contact: str | list[str]) -> decision_pb2.DecisionRequest:
    return decision_pb2.DecisionRequest(contact=decision_pb2.Contact(**contact))  # type: ignore[arg-type]


def test_a_request_that_failed_fails_every_time() -> None:
    bad = _request(address="+12125550100", time_zone="Mars/Olympus_Mons")
    assert _violations(bad) == ["decision_requests.contact.time_zone"]
    assert _violations(bad) == ["decision_requests.contact.time_zone"]
    assert _violations(bad, index=3) == ["decision_requests[3].contact.time_zone"]


def test_a_good_request_passes_again_and_a_bad_one_beside_it_still_fails() -> None:
    good = _request(address="+12125550101")
    assert _violations(good) == []
    check = Validator()
    _asked("decision_requests", good, check, index=0)
    _asked("decision_requests", _request(address=" "), check, index=1)
    assert [v.field for v in check.violations] == ["decision_requests[1].contact.address"]


def test_a_request_with_a_decision_time_is_checked_whenever_it_comes() -> None:
    """Its time goes stale: PreValidate decides for now, within 5 s."""
    timed = _request(address="+12125550102")
    timed.decision_time.FromDatetime(datetime.now(UTC) - timedelta(seconds=4.8))
    assert _violations(timed) == []
    time.sleep(0.5)
    assert _violations(timed) == ["decision_requests.decision_time"]


def test_what_attempts_cannot_hold_a_decision_refuses() -> None:
    """Attempts of that client id or email address could never be recorded, so no attempt
    rule could ever deny them."""
    assert _violations(_request(address="+12125550103", client_id="c" * 256)) == [
        "decision_requests.contact.client_id"
    ]
    assert _violations(_request(address="+12125550103", client_id="a\tb")) == [
        "decision_requests.contact.client_id"
    ]
    assert _violations(_request(address=("a" * 250) + "@x.io")) == [
        "decision_requests.contact.address"
    ]
    assert _violations(_request(address="a\x00@x.io")) == ["decision_requests.contact.address"]
    # Trimmed, as attempts and decisions read them.
    assert _violations(_request(address=" A@X.io ", client_id=" " + "c" * 255 + " ")) == []


def test_a_contact_is_in_at_most_16_candidate_zones() -> None:
    """Every time rule is checked in each of them, for every decision of the contact."""
    zones = ["America/New_York", "America/Chicago"] * 8
    assert _violations(_request(address="+12125550104", candidate_time_zones=zones)) == []
    assert _violations(
        _request(address="+12125550104", candidate_time_zones=[*zones, "America/Denver"])
    ) == ["decision_requests.contact.candidate_time_zones"]
