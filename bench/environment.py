"""What the benchmarks run against: the same embedded stack as `make run`, on free ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from cxmesh.iam.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from cxmesh_server.runtime.devkeys import SigningKey, ensure_dev_key
from cxmesh_server.stack.datastores import (
    EmbeddedPostgres,
    EmbeddedRedis,
    start_postgres,
    start_redis,
)
from cxmesh_server.stack.mesh import Mesh, MeshOptions, ServiceInstance
from cxmesh_server.stack.ports import free_port, is_listening


@dataclass
class Environment:
    state: Path
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    key: SigningKey
    mesh: Mesh
    bare_echo_port: int
    bare_echo_pid: int

    def token(self, tenant: str = "bench", roles: tuple[str, ...] = ("admin",)) -> str:
        return self.key.mint(tenant=tenant, roles=list(roles))

    def settle(self) -> None:
        """Cleans up after a group (dead rows, dirty pages) so that the next group does not
        measure autovacuum and checkpoints working through a million-row import."""

        async def vacuum() -> None:
            connection = await asyncpg.connect(self.postgres.dsn)
            try:
                await connection.execute("VACUUM (ANALYZE)")
                await connection.execute("CHECKPOINT")
            finally:
                await connection.close()

        asyncio.run(vacuum())

    def instance(self, service: str) -> ServiceInstance:
        """The first running process of `service`."""
        return next(i for i in self.mesh.instances if i.name == service)

    def new_tenant(self, tenant: str) -> tuple[tuple[str, str], ...]:
        """Creates a tenant through the edge; returns an admin's call metadata for it."""
        operator = self.key.mint(tenant=tenant, roles=["platform-admin"])
        with grpc.insecure_channel(self.mesh.edge_target) as channel:
            tenant_service_pb2_grpc.TenantServiceStub(channel).CreateTenant(
                tenant_service_pb2.CreateTenantRequest(
                    tenant_id=tenant, tenant=tenant_pb2.Tenant(display_name="bench")
                ),
                metadata=(("authorization", f"Bearer {operator}"),),
            )
        return (("authorization", f"Bearer {self.token(tenant)}"),)

    def api_key(self, admin: tuple[tuple[str, str], ...], role: str) -> str:
        """A new API key of the admin's tenant with one role."""
        with grpc.insecure_channel(self.mesh.edge_target) as channel:
            return (
                api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
                .CreateApiKey(
                    api_key_service_pb2.CreateApiKeyRequest(
                        api_key=api_key_pb2.ApiKey(display_name="bench", roles=[role])
                    ),
                    metadata=admin,
                )
                .key
            )


def start(stack: ExitStack, services: tuple[str, ...] = ("iam",)) -> Environment:
    state = Path(tempfile.mkdtemp(prefix="cxmesh-bench-"))

    def remove_unless_failed(failure: type[BaseException] | None, *_: object) -> bool:
        # Envoy's access log alone is ~50 MB a run; a failed run keeps it to be read.
        if failure is None:
            shutil.rmtree(state, ignore_errors=True)
        return False

    stack.push(remove_unless_failed)  # first in, so it runs after everything has stopped
    postgres = start_postgres(state / "postgres", delete_on_stop=True)
    stack.callback(postgres.stop)
    redis = start_redis(state / "redis", persist=False)
    stack.callback(redis.stop)
    key, jwks = ensure_dev_key(state / "keys")
    mesh = Mesh(
        MeshOptions(
            state_dir=state,
            postgres_dsn=postgres.dsn,
            redis_url=redis.url,
            jwks_file=jwks,
            edge_port=free_port(),
            edge_admin_port=free_port(),
            services=services,
            # The edge's rate limit must not cap a benchmark.
            rate_limit_per_second=1_000_000,
            extra_env={"CXMESH_LOG_LEVEL": "WARNING"},
        )
    )
    stack.callback(mesh.stop)
    mesh.start(timeout=90)
    bare_port = free_port()
    # grpc.aio as it comes: gRPC core's own defaults, whatever the services are tuned to.
    bare_env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_echo", str(bare_port)], env=bare_env)
    stack.callback(bare.terminate)
    deadline = time.monotonic() + 30
    while not is_listening("127.0.0.1", bare_port):
        if bare.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the bare echo server did not start")
        time.sleep(0.05)
    return Environment(state, postgres, redis, key, mesh, bare_port, bare.pid)
