"""The demo tenant of `make run`, seeded idempotently through the public API."""

from __future__ import annotations

from pathlib import Path

import grpc

from cxmesh.iam.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh

DEMO_TENANT = "demo"


def seed_demo(mesh: Mesh, key: SigningKey) -> dict[str, str]:
    """Creates the demo tenant if missing; returns the KEY=VALUE lines to publish."""
    operator = key.mint(tenant=DEMO_TENANT, roles=["platform-admin"], subject="make-run")
    with grpc.insecure_channel(mesh.edge_target) as channel:
        tenants = tenant_service_pb2_grpc.TenantServiceStub(channel)
        try:
            tenants.CreateTenant(
                tenant_service_pb2.CreateTenantRequest(
                    tenant_id=DEMO_TENANT,
                    tenant=tenant_pb2.Tenant(
                        display_name="Demo tenant",
                        default_time_zone="America/New_York",
                        default_region="US",
                    ),
                    request_id="cxmesh-demo-tenant",
                ),
                metadata=(("authorization", f"Bearer {operator}"),),
                timeout=10,
            )
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
    token = key.mint(tenant=DEMO_TENANT, roles=["admin"], subject="demo-admin")
    return {"CXMESH_TENANT": DEMO_TENANT, "CXMESH_TOKEN": token}


def write_env_file(path: Path, lines: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
    return path
