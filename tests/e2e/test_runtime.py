"""The shared runtime as an operator sees it: metrics, graceful shutdown, worker processes."""

from __future__ import annotations

import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh, ServiceInstance, wait_serving
from tests.conftest import grpc_bearer


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _echo(
    target: str, token: str, message: str = "hi", delay: float = 0
) -> echo_service_pb2.EchoResponse:
    request = echo_service_pb2.EchoRequest(message=message)
    if delay:
        request.delay.CopyFrom(Duration(seconds=int(delay), nanos=int((delay % 1) * 1e9)))
    with grpc.insecure_channel(target) as channel:
        return echo_service_pb2_grpc.EchoServiceStub(channel).Echo(
            request, metadata=grpc_bearer(token), timeout=30
        )


def test_metrics_count_started_and_handled_rpcs_by_code(mesh: Mesh, key: SigningKey) -> None:
    iam = next(i for i in mesh.instances if i.name == "iam")
    url = f"http://127.0.0.1:{iam.metrics_port}/metrics"
    labels = {
        "grpc_service": "cxmesh.diagnostics.v1.EchoService",
        "grpc_method": "Echo",
        "grpc_type": "unary",
    }
    before = httpx.get(url).text
    token = key.mint(tenant="acme", roles=["viewer"])
    _echo(mesh.edge_target, token)
    _echo(mesh.edge_target, token)
    with pytest.raises(grpc.RpcError):
        _echo(mesh.edge_target, token, message="")
    after = httpx.get(url).text
    assert (
        _metric(after, "grpc_server_started_total", **labels)
        - _metric(before, "grpc_server_started_total", **labels)
        == 3
    )
    handled = "grpc_server_handled_total"
    assert (
        _metric(after, handled, grpc_code="OK", **labels)
        - _metric(before, handled, grpc_code="OK", **labels)
        == 2
    )
    invalid = {"grpc_code": "INVALID_ARGUMENT", **labels}
    assert _metric(after, handled, **invalid) - _metric(before, handled, **invalid) == 1
    assert _metric(after, "grpc_server_handling_seconds_count", **labels) >= 3
    assert re.search(r'grpc_server_handling_seconds_bucket\{.*le="0.005".*\}', after)


def test_sigterm_lets_an_in_flight_call_finish_and_refuses_new_ones(
    mesh: Mesh, key: SigningKey
) -> None:
    instance: ServiceInstance = mesh.start_service("iam")
    target = f"127.0.0.1:{instance.port}"
    wait_serving(target, time.monotonic() + 30, instance)
    token = key.mint(tenant="acme", roles=["viewer"])
    result: dict[str, object] = {}

    def slow_call() -> None:
        try:
            result["response"] = _echo(target, token, message="in flight", delay=1.5)
        except grpc.RpcError as error:  # pragma: no cover - the failure we test against
            result["error"] = error

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)
    instance.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as refused:
        _echo(target, token, message="too late")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    caller.join(10)
    assert "error" not in result, result.get("error")
    assert result["response"].message == "in flight"  # type: ignore[attr-defined]
    assert instance.process.wait(10) == 0
    mesh.instances.remove(instance)


def test_worker_processes_share_one_port(mesh: Mesh, key: SigningKey, tmp_path: Path) -> None:
    workers_env = {"CXMESH_WORKERS": "2", "TMPDIR": str(tmp_path)}
    mesh.options = type(mesh.options)(**{**mesh.options.__dict__, "extra_env": workers_env})
    try:
        instance = mesh.start_service("iam")
    finally:
        mesh.options = type(mesh.options)(**{**mesh.options.__dict__, "extra_env": {}})
    target = f"127.0.0.1:{instance.port}"
    try:
        wait_serving(target, time.monotonic() + 60, instance)
        token = key.mint(tenant="acme", roles=["viewer"])
        for n in range(20):
            assert _echo(target, token, message=f"m{n}").message == f"m{n}"
        metrics = httpx.get(f"http://127.0.0.1:{instance.metrics_port}/metrics").text
        started = _metric(metrics, "grpc_server_started_total", grpc_method="Echo")
        assert started >= 20
        assert len(list(tmp_path.glob("cxmesh-metrics-*"))) == 1  # the workers' shared one
    finally:
        instance.process.send_signal(signal.SIGTERM)
        assert instance.process.wait(20) == 0
        mesh.instances.remove(instance)
    assert not list(tmp_path.glob("cxmesh-metrics-*"))  # removed at exit


def test_echo_delay_is_bounded(mesh: Mesh, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    with pytest.raises(grpc.RpcError) as caught:
        request = echo_service_pb2.EchoRequest(message="x")
        request.delay.FromTimedelta(timedelta(seconds=31))
        with grpc.insecure_channel(mesh.edge_target) as channel:
            echo_service_pb2_grpc.EchoServiceStub(channel).Echo(
                request, metadata=grpc_bearer(token), timeout=5
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
