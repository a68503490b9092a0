"""Fixtures that start the real things: embedded Postgres, Redis, every service and Envoy,
on free ports, once per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from cxmesh.iam.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from cxmesh_server.runtime.devkeys import SigningKey, ensure_dev_key
from cxmesh_server.stack.datastores import (
    EmbeddedPostgres,
    EmbeddedRedis,
    start_postgres,
    start_redis,
)
from cxmesh_server.stack.mesh import Mesh, MeshOptions
from cxmesh_server.stack.ports import free_port


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cxmesh")


@pytest.fixture(scope="session")
def postgres(state_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = start_postgres(state_dir / "postgres", delete_on_stop=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(state_dir: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(state_dir / "redis", persist=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis of the test module's own, not the mesh's: for tests that reconfigure, pause
    or kill it, or whose writes a service's mirror keeper would repair before they look."""
    server = start_redis(tmp_path_factory.mktemp("own-redis") / "redis", persist=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def signing_key(state_dir: Path) -> tuple[SigningKey, Path]:
    return ensure_dev_key(state_dir / "keys")


@pytest.fixture(scope="session")
def mesh(
    state_dir: Path,
    postgres: EmbeddedPostgres,
    redis_server: EmbeddedRedis,
    signing_key: tuple[SigningKey, Path],
) -> Iterator[Mesh]:
    mesh = Mesh(
        MeshOptions(
            state_dir=state_dir,
            postgres_dsn=postgres.dsn,
            redis_url=redis_server.url,
            jwks_file=signing_key[1],
            edge_port=free_port(),
            edge_admin_port=free_port(),
            shutdown_grace_seconds=5,
            extra_env={
                "CXMESH_DROP_DIR": str(state_dir / "drop"),
                # Imports whose process died are failed within seconds, not the default 30 s.
                "CXMESH_IMPORT_SWEEP_SECONDS": "1",
            },
        )
    )
    try:
        mesh.start(timeout=90)
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="session")
def key(signing_key: tuple[SigningKey, Path]) -> SigningKey:
    return signing_key[0]


@pytest.fixture
def edge(mesh: Mesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.edge_url, timeout=10) as client:
        yield client


@pytest.fixture
def edge_channel(mesh: Mesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.edge_target) as channel:
        yield channel


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def grpc_bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="session")
def new_tenant(mesh: Mesh, key: SigningKey):  # type: ignore[no-untyped-def]
    """Creates a fresh tenant through the API, with IAM's default settings (UTC, US) unless
    given; returns its id."""

    def create(default_time_zone: str = "", default_region: str = "") -> str:
        tenant_id = "t-" + uuid.uuid4().hex[:12]
        operator = key.mint(tenant="platform", roles=["platform-admin"])
        tenant = tenant_pb2.Tenant(
            display_name=tenant_id,
            default_time_zone=default_time_zone,
            default_region=default_region,
        )
        with grpc.insecure_channel(mesh.edge_target) as channel:
            tenant_service_pb2_grpc.TenantServiceStub(channel).CreateTenant(
                tenant_service_pb2.CreateTenantRequest(tenant_id=tenant_id, tenant=tenant),
                metadata=grpc_bearer(operator),
                timeout=10,
            )
        return tenant_id

    return create


@pytest.fixture
def lists(mesh: Mesh, key: SigningKey, new_tenant):  # type: ignore[no-untyped-def]
    """A lists client for a fresh tenant (admin), through the edge."""
    from tests.e2e.lists_helpers import Lists

    tenant = new_tenant()
    with grpc.insecure_channel(mesh.edge_target) as channel:
        yield Lists(channel, key.mint(tenant=tenant, roles=["admin"]), tenant)
