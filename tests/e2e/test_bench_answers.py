"""The bench counts a load run only when the service's own metrics show every call of it
answered OK: h2load sees HTTP 200 for a gRPC call whatever its grpc-status."""

from __future__ import annotations

import shutil

import pytest

from bench.baselines import ECHO_PATH
from bench.grpc_codes import answered_ok, handled
from bench.load import LoadResult, h2load_grpc
from cxmesh.diagnostics.v1 import echo_service_pb2
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh, ServiceInstance

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)"
)


def _iam(mesh: Mesh) -> ServiceInstance:
    return next(i for i in mesh.instances if i.name == "iam")


def _echo_load(
    iam: ServiceInstance, headers: dict[str, str], delay_seconds: float = 0
) -> LoadResult:
    request = echo_service_pb2.EchoRequest(message="hi")
    request.delay.FromNanoseconds(int(delay_seconds * 1e9))
    return h2load_grpc(
        f"http://127.0.0.1:{iam.port}{ECHO_PATH}",
        request,
        headers=headers,
        seconds=1,
        connections=1,
        streams=4,
        warmup_seconds=0,
    )


def test_a_run_of_answered_calls_is_counted(mesh: Mesh, key: SigningKey) -> None:
    iam = _iam(mesh)
    token = key.mint(tenant="acme", roles=["viewer"])
    result = answered_ok(
        [iam.metrics_port], "Echo", lambda: _echo_load(iam, {"authorization": f"Bearer {token}"})
    )
    assert result.requests > 0


def test_a_run_of_refused_calls_is_not_taken_for_answers(mesh: Mesh) -> None:
    iam = _iam(mesh)
    # No credentials: every call is UNAUTHENTICATED, inside an HTTP 200 that h2load counts.
    with pytest.raises(RuntimeError, match="UNAUTHENTICATED"):
        answered_ok([iam.metrics_port], "Echo", lambda: _echo_load(iam, {}))


def test_calls_the_client_resets_when_its_timed_run_ends_are_not_errors(
    mesh: Mesh, key: SigningKey
) -> None:
    iam = _iam(mesh)
    token = key.mint(tenant="acme", roles=["viewer"])
    cancelled_before = handled(iam.metrics_port, "Echo")["CANCELLED"]
    # Each call takes 0.3 s, so calls are in flight when h2load's second ends.
    result = answered_ok(
        [iam.metrics_port],
        "Echo",
        lambda: _echo_load(iam, {"authorization": f"Bearer {token}"}, delay_seconds=0.3),
    )
    assert result.requests > 0
    assert handled(iam.metrics_port, "Echo")["CANCELLED"] > cancelled_before
