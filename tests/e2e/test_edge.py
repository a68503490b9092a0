"""The edge: health, reflection, REST ↔ gRPC transcoding, gRPC pass-through, 404s, CORS."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cxmesh.campaigns.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh_edge.config import Upstream
from cxmesh_server.runtime.api import all_service_names
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh, launch_envoy, wait_serving
from cxmesh_server.stack.ports import free_port
from tests.conftest import bearer, grpc_bearer


def test_healthz_is_200_while_every_upstream_is_healthy(edge: httpx.Client, mesh: Mesh) -> None:
    # Earlier tests may have had a service rebuild its mirrors (NOT_SERVING meanwhile).
    for instance in mesh.instances:
        wait_serving(f"127.0.0.1:{instance.port}", time.monotonic() + 60, instance)
    # The edge sees them healthy at its next health check (every second).
    deadline = time.monotonic() + 3.0
    while (response := edge.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert response.status_code == 200


def test_grpc_health_answers_through_the_edge(edge_channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(edge_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_through_the_edge_lists_every_cxmesh_service(edge_channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(edge_channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    listed = {
        service.name
        for response in responses
        for service in response.list_services_response.service
    }
    expected = set(all_service_names())
    assert len(expected) >= 16
    assert expected <= listed


def test_rest_call_is_transcoded_to_grpc_and_back(edge: httpx.Client, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    response = edge.post("/v1/echo", json={"message": "hello"}, headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"message": "hello", "tenant": "acme"}


def test_invalid_rest_input_is_400_with_field_violations(
    edge: httpx.Client, key: SigningKey
) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    response = edge.post("/v1/echo", json={"message": ""}, headers=bearer(token))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = {d["@type"].rsplit("/", 1)[1]: d for d in body["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert details["google.rpc.BadRequest"]["fieldViolations"] == [
        {"field": "message", "description": "must be 1-4096 characters"}
    ]


def test_grpc_passes_through_the_same_port(edge_channel: grpc.Channel, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    response = echo_service_pb2_grpc.EchoServiceStub(edge_channel).Echo(
        echo_service_pb2.EchoRequest(message="over grpc"), metadata=grpc_bearer(token), timeout=5
    )
    assert (response.message, response.tenant) == ("over grpc", "acme")


def test_unknown_rest_path_is_a_clean_404(edge: httpx.Client) -> None:
    assert edge.get("/v1/no-such-thing").status_code == 404
    assert edge.post("/nothing/here", json={}).status_code == 404


def test_unknown_query_parameters_are_ignored(edge: httpx.Client, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    response = edge.post("/v1/echo?_=1700000000000", json={"message": "x"}, headers=bearer(token))
    assert response.status_code == 200


def test_services_of_later_issues_answer_unimplemented(
    edge_channel: grpc.Channel, key: SigningKey
) -> None:
    token = key.mint(tenant="acme", roles=["admin"])
    stub = campaign_service_pb2_grpc.CampaignServiceStub(edge_channel)
    try:
        stub.ListCampaigns(
            campaign_service_pb2.ListCampaignsRequest(),
            metadata=grpc_bearer(token),
            timeout=5,
        )
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    else:
        raise AssertionError("expected UNIMPLEMENTED")


def test_cors_preflight_is_answered_at_the_edge(edge: httpx.Client) -> None:
    response = edge.options(
        "/v1/echo",
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"


def _extra_edge(mesh: Mesh, name: str, **overrides: Any) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = dataclasses.replace(
        mesh.edge_config(), listen_port=port, admin_port=free_port(), **overrides
    )
    process = launch_envoy(
        config, mesh.options.state_dir / f"{name}.json", mesh.logs / f"{name}.log"
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)


def test_healthz_is_503_while_an_upstream_is_down(mesh: Mesh) -> None:
    dead = Upstream(
        name="dead", packages=("cxmesh.nothing.v1",), endpoints=(("127.0.0.1", free_port()),)
    )
    config = mesh.edge_config()
    process, url = _extra_edge(mesh, "edge-dead-upstream", upstreams=(*config.upstreams, dead))
    try:
        time.sleep(2.5)  # several health-check intervals
        assert httpx.get(f"{url}/healthz").status_code == 503
    finally:
        process.terminate()
        process.wait(10)


def test_the_local_rate_limit_answers_429(mesh: Mesh, key: SigningKey) -> None:
    process, url = _extra_edge(mesh, "edge-rate-limited", rate_limit_per_second=5)
    try:
        with httpx.Client(base_url=url) as client:
            statuses = [
                client.post(
                    "/v1/echo",
                    json={"message": "x"},
                    headers=bearer(key.mint(tenant="acme", roles=["viewer"])),
                ).status_code
                for _ in range(20)
            ]
        assert 429 in statuses
        assert 200 in statuses
    finally:
        process.terminate()
        process.wait(10)
