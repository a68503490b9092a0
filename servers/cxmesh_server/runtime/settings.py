"""Typed settings of a service process, read from CXMESH_* environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    """How bearer tokens are validated. The same values configure Envoy's jwt_authn."""

    model_config = SettingsConfigDict(env_prefix="CXMESH_JWT_")

    # A JWKS document on disk (local development, tests) or at a URL (an identity provider).
    jwks_file: Path | None = None
    jwks_url: str | None = None
    issuer: str = "cxmesh-dev"
    audience: str = "cxmesh"
    # Tolerated clock skew between the token issuer and us.
    leeway_seconds: int = 30


class ServiceSettings(BaseSettings):
    """Everything a service process needs to start."""

    model_config = SettingsConfigDict(env_prefix="CXMESH_")

    service: str = Field(description="which service this process serves, e.g. 'iam'")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Prometheus metrics over HTTP; 0 disables.
    metrics_port: int = 0
    # Worker processes sharing grpc_port through SO_REUSEPORT (CPU-bound services).
    workers: int = Field(default=1, ge=1, le=64)
    # gRPC servers in each process (or worker) sharing grpc_port, each taking calls on its
    # own accept loop: one grpc.aio server takes one call at a time (runtime/accept_loops.py).
    accept_loops: int = Field(default=4, ge=1, le=32)
    postgres_dsn: str | None = None
    redis_url: str | None = None
    # Seconds in-flight calls get to finish after SIGTERM.
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    # A log that repeats per request or per retry is written once in this many seconds,
    # with how many were not (runtime/logging.py); 0 writes every one.
    log_repeat_seconds: float = Field(default=10.0, ge=0)
    # OTLP/gRPC collector endpoint; tracing exports nothing unless it is set.
    otlp_endpoint: str | None = None
    # Postgres pool size per worker.
    postgres_pool_max: int = 10
    # Where uploaded files wait while they are imported.
    spool_dir: Path = Path(tempfile.gettempdir()) / "cxmesh-spool"
    # The lists drop folder: <dir>/<tenant>/<contact list id>/<file>; unset = off.
    drop_dir: Path | None = None
    # How often the lists service looks for imports whose process died (they are failed:
    # their transaction rolled back); an import younger than this is left alone.
    import_sweep_seconds: float = Field(default=30.0, gt=0)
    # Processes that turn rows into records during imports; 0 = one per CPU.
    import_workers: int = Field(default=0, ge=0, le=64)
