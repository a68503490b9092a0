"""Authentication and tenancy, through the edge and directly to a service."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import pytest
import redis

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh.iam.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from cxmesh_server.iam.store import LOADED_KEY
from cxmesh_server.runtime.auth import api_key_redis_key, hash_api_key
from cxmesh_server.runtime.devkeys import SigningKey, generate_key
from cxmesh_server.stack.datastores import EmbeddedRedis
from cxmesh_server.stack.mesh import Mesh
from tests.conftest import bearer, grpc_bearer


def _echo(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return client.post("/v1/echo", json={"message": "hi"}, headers=headers)


def test_no_credentials_is_401(edge: httpx.Client) -> None:
    response = _echo(edge, {})
    assert response.status_code == 401


def test_expired_token_is_401(edge: httpx.Client, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["admin"], ttl_seconds=60, now=time.time() - 3600)
    assert _echo(edge, bearer(token)).status_code == 401


def test_token_with_a_wrong_signature_is_401(edge: httpx.Client, key: SigningKey) -> None:
    impostor = generate_key()
    forged = impostor.__class__(impostor.private_key, key.kid)  # same kid, other key
    assert _echo(edge, bearer(forged.mint(tenant="acme", roles=["admin"]))).status_code == 401


def test_token_for_another_audience_is_401(edge: httpx.Client, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["admin"], audience="someone-else")
    assert _echo(edge, bearer(token)).status_code == 401


def test_missing_permission_is_403(edge: httpx.Client, key: SigningKey) -> None:
    token = key.mint(tenant="acme", roles=["viewer"])
    response = edge.post("/v1/apiKeys", json={"displayName": "x"}, headers=bearer(token))
    assert response.status_code == 403


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda key: None, id="no token"),
        pytest.param(
            lambda key: key.mint(
                tenant="acme", roles=["admin"], ttl_seconds=1, now=time.time() - 600
            ),
            id="expired",
        ),
        pytest.param(
            lambda key: generate_key().mint(tenant="acme", roles=["admin"]), id="unknown key"
        ),
        pytest.param(
            lambda key: key.mint(tenant="acme", roles=["admin"], audience="other"),
            id="wrong audience",
        ),
        pytest.param(
            lambda key: key.mint(tenant="acme", roles=["admin"], issuer="other"), id="wrong issuer"
        ),
    ],
)
def test_a_service_reached_directly_is_protected_as_through_the_edge(
    mesh: Mesh, key: SigningKey, make_token: Callable[[SigningKey], str | None]
) -> None:
    iam = next(i for i in mesh.instances if i.name == "iam")
    token = make_token(key)
    metadata = grpc_bearer(token) if token else ()
    with (
        grpc.insecure_channel(f"127.0.0.1:{iam.port}") as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        echo_service_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_service_pb2.EchoRequest(message="hi"), metadata=metadata, timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_tenant_cannot_read_another_tenants_api_key(
    edge: httpx.Client, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    owner, other = new_tenant(), new_tenant()
    created = edge.post(
        "/v1/apiKeys",
        json={"displayName": "owner's key"},
        headers=bearer(key.mint(tenant=owner, roles=["admin"])),
    )
    assert created.status_code == 200, created.text
    name = created.json()["apiKey"]["name"]
    as_other = edge.get(f"/v1/{name}", headers=bearer(key.mint(tenant=other, roles=["admin"])))
    assert as_other.status_code == 404
    listed = edge.get("/v1/apiKeys", headers=bearer(key.mint(tenant=other, roles=["admin"])))
    assert listed.json().get("apiKeys", []) == []
    as_owner = edge.get(f"/v1/{name}", headers=bearer(key.mint(tenant=owner, roles=["admin"])))
    assert as_owner.status_code == 200


def test_a_tenant_cannot_read_another_tenant(
    edge_channel: grpc.Channel, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    mine, theirs = new_tenant(), new_tenant()
    stub = tenant_service_pb2_grpc.TenantServiceStub(edge_channel)
    token = grpc_bearer(key.mint(tenant=mine, roles=["admin"]))
    own = stub.GetTenant(
        tenant_service_pb2.GetTenantRequest(name=f"tenants/{mine}"), metadata=token, timeout=5
    )
    assert own.tenant.name == f"tenants/{mine}"
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetTenant(
            tenant_service_pb2.GetTenantRequest(name=f"tenants/{theirs}"), metadata=token, timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_api_key_works_until_revoked_then_401_within_a_second(
    edge: httpx.Client, edge_channel: grpc.Channel, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    admin = grpc_bearer(key.mint(tenant=tenant, roles=["admin"]))
    keys = api_key_service_pb2_grpc.ApiKeyServiceStub(edge_channel)
    created = keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(display_name="web widget")
        ),
        metadata=admin,
        timeout=5,
    )
    assert created.key.startswith("cxk_") and created.api_key.key_prefix == created.key[:12]
    response = _echo(edge, {"x-api-key": created.key})
    assert response.status_code == 200
    assert response.json()["tenant"] == tenant

    keys.RevokeApiKey(
        api_key_service_pb2.RevokeApiKeyRequest(name=created.api_key.name),
        metadata=admin,
        timeout=5,
    )
    # Services remember a valid key for up to 1 s (Authenticator.API_KEY_CACHE_SECONDS).
    revoked = time.monotonic()
    while _echo(edge, {"x-api-key": created.key}).status_code != 401:
        assert time.monotonic() - revoked < 1.5, "a revoked key must stop working within 1 s"
        time.sleep(0.05)


def test_api_keys_work_again_soon_after_redis_loses_their_mirror(
    edge: httpx.Client,
    edge_channel: grpc.Channel,
    key: SigningKey,
    new_tenant: Callable[[], str],
    redis_server: EmbeddedRedis,
) -> None:
    # A dialer's key must not stay refused (every validation a 401) after a Redis failover.
    admin = grpc_bearer(key.mint(tenant=new_tenant(), roles=["admin"]))
    created = api_key_service_pb2_grpc.ApiKeyServiceStub(edge_channel).CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(display_name="dialer")),
        metadata=admin,
        timeout=5,
    )
    mirrored = api_key_redis_key(hash_api_key(created.key))
    client = redis.Redis(port=redis_server.port)
    try:
        client.delete(mirrored, LOADED_KEY)  # what a flushed Redis looks like to IAM
        deadline = time.monotonic() + 15
        while not client.exists(LOADED_KEY):
            assert time.monotonic() < deadline, "IAM did not rebuild its API key mirror"
            time.sleep(0.1)
        assert client.exists(mirrored)
    finally:
        client.close()
    assert _echo(edge, {"x-api-key": created.key}).status_code == 200


def test_api_keys_are_refused_where_the_contract_wants_a_bearer_token(
    edge: httpx.Client, edge_channel: grpc.Channel, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    created = api_key_service_pb2_grpc.ApiKeyServiceStub(edge_channel).CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(display_name="app")),
        metadata=grpc_bearer(key.mint(tenant=tenant, roles=["admin"])),
        timeout=5,
    )
    assert edge.get("/v1/apiKeys", headers={"x-api-key": created.key}).status_code == 401


def test_create_api_key_retried_with_a_request_id_makes_one_key(
    edge_channel: grpc.Channel, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    admin = grpc_bearer(key.mint(tenant=tenant, roles=["admin"]))
    stub = api_key_service_pb2_grpc.ApiKeyServiceStub(edge_channel)
    request = api_key_service_pb2.CreateApiKeyRequest(
        api_key=api_key_pb2.ApiKey(display_name="once"), request_id="6b1f0f5e-retry"
    )
    first = stub.CreateApiKey(request, metadata=admin, timeout=5)
    second = stub.CreateApiKey(request, metadata=admin, timeout=5)
    assert first.api_key.name == second.api_key.name
    assert first.key and not second.key  # the secret is shown once
    listed = stub.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(), metadata=admin, timeout=5)
    assert [k.name for k in listed.api_keys] == [first.api_key.name]


def test_api_key_roles_are_limited(
    edge: httpx.Client, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    response = edge.post(
        "/v1/apiKeys",
        json={"displayName": "too strong", "roles": ["admin"]},
        headers=bearer(key.mint(tenant=tenant, roles=["admin"])),
    )
    assert response.status_code == 400
    violations = response.json()["details"][1]["fieldViolations"]
    assert violations[0]["field"] == "api_key.roles"
