"""IAM through the edge: tenants, API key listing, the development token CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from typer.testing import CliRunner

from cxmesh.iam.v1 import api_key_pb2, api_key_service_pb2, api_key_service_pb2_grpc
from cxmesh_cli.main import app
from cxmesh_server.runtime.auth import JwtVerifier
from cxmesh_server.runtime.devkeys import SigningKey, ensure_dev_key
from cxmesh_server.runtime.settings import AuthSettings
from tests.conftest import bearer, grpc_bearer


def test_api_keys_are_listed_newest_first_page_by_page(
    edge_channel: grpc.Channel, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    admin = grpc_bearer(key.mint(tenant=tenant, roles=["admin"]))
    stub = api_key_service_pb2_grpc.ApiKeyServiceStub(edge_channel)
    created = [
        stub.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name=f"key {n}")
            ),
            metadata=admin,
            timeout=5,
        ).api_key.name
        for n in range(5)
    ]
    seen, token = [], ""
    while True:
        page = stub.ListApiKeys(
            api_key_service_pb2.ListApiKeysRequest(page_size=2, page_token=token),
            metadata=admin,
            timeout=5,
        )
        assert len(page.api_keys) <= 2
        seen += [k.name for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))


def test_a_forged_page_token_is_400(
    edge: httpx.Client, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    response = edge.get(
        "/v1/apiKeys",
        params={"pageToken": "not-a-token"},
        headers=bearer(key.mint(tenant=new_tenant(), roles=["admin"])),
    )
    assert response.status_code == 400
    assert response.json()["details"][1]["fieldViolations"][0]["field"] == "page_token"


def test_creating_a_tenant_twice_is_409(
    edge: httpx.Client, key: SigningKey, new_tenant: Callable[[], str]
) -> None:
    tenant = new_tenant()
    response = edge.post(
        "/v1/tenants",
        params={"tenantId": tenant},
        json={"displayName": "again"},
        headers=bearer(key.mint(tenant="platform", roles=["platform-admin"])),
    )
    assert response.status_code == 409


def test_tenant_admins_cannot_create_tenants(edge: httpx.Client, key: SigningKey) -> None:
    response = edge.post(
        "/v1/tenants",
        params={"tenantId": "sneaky"},
        json={"displayName": "sneaky"},
        headers=bearer(key.mint(tenant="acme", roles=["admin"])),
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"displayName": "x", "defaultTimeZone": "Mars/Olympus"}, "tenant.default_time_zone"),
        ({"displayName": "x", "defaultRegion": "XX"}, "tenant.default_region"),
        ({"displayName": ""}, "tenant.display_name"),
    ],
)
def test_invalid_tenants_are_refused_field_by_field(
    edge: httpx.Client, key: SigningKey, body: dict[str, str], field: str
) -> None:
    response = edge.post(
        "/v1/tenants",
        params={"tenantId": "valid-id"},
        json=body,
        headers=bearer(key.mint(tenant="platform", roles=["platform-admin"])),
    )
    assert response.status_code == 400
    fields = [v["field"] for v in response.json()["details"][1]["fieldViolations"]]
    assert fields == [field]


def test_dev_token_cli_prints_a_token_the_services_accept(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["dev-token", "--tenant", "demo", "--role", "admin", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    _, jwks = ensure_dev_key(tmp_path / "keys")
    principal = JwtVerifier(AuthSettings(jwks_file=jwks)).verify(result.output.strip())
    assert (principal.tenant, principal.roles) == ("demo", frozenset({"admin"}))
