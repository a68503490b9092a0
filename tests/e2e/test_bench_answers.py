"""The bench counts a load run only when the service's own metrics show every call of it
answered OK: h2load sees HTTP 200 for a gRPC call whatever its grpc-status."""

from __future__ import annotations

import shutil

import pytest

from bench.baselines import ECHO_PATH
from bench.grpc_codes import answered_ok
from bench.load import LoadResult, h2load_grpc
from cxmesh.diagnostics.v1 import echo_service_pb2
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh, ServiceInstance

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)"
)


def _iam(mesh: Mesh) -> ServiceInstance:
    return next(i for i in mesh.instances if i.name == "iam")


def _echo_load(iam: ServiceInstance, headers: dict[str, str]) -> LoadResult:
    return h2load_grpc(
        f"http://127.0.0.1:{iam.port}{ECHO_PATH}",
        echo_service_pb2.EchoRequest(message="hi"),
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
