"""Group `runtime`: what the shared runtime and the edge cost over the bare echo."""

from __future__ import annotations

from bench.baselines import ECHO_PATH, SECONDS
from bench.environment import Environment
from bench.grpc_codes import answered_ok
from bench.harness import Figure, Run
from bench.load import h2load_grpc
from cxmesh.diagnostics.v1 import echo_service_pb2

GROUP = "runtime"


def measure(run: Run, env: Environment) -> None:
    request = echo_service_pb2.EchoRequest(message="hello")
    auth = {"authorization": f"Bearer {env.token()}"}
    iam = env.instance("iam")
    iam_metrics = [iam.metrics_port]
    direct = answered_ok(
        iam_metrics,
        "Echo",
        lambda: h2load_grpc(
            f"http://127.0.0.1:{iam.port}{ECHO_PATH}",
            request,
            headers=auth,
            seconds=SECONDS,
        ),
    )
    how = "h2load -c4 -m16 straight to the iam process: the runtime around the handler (JWT check, metrics)"
    run.record(
        Figure(
            GROUP,
            "grpc_echo_runtime_rps",
            direct.requests_per_second,
            "req/s",
            "baseline.grpc_echo_rps",
            note=how,
        )
    )
    run.record(
        Figure(
            GROUP,
            "grpc_echo_runtime_p99_ms",
            direct.p99_ms,
            "ms",
            "baseline.grpc_echo_p99_ms",
            note=how,
        )
    )
    edge = answered_ok(
        iam_metrics,
        "Echo",
        lambda: h2load_grpc(
            f"{env.mesh.edge_url}{ECHO_PATH}", request, headers=auth, seconds=SECONDS
        ),
    )
    how = "h2load -c4 -m16 through Envoy (JWT at the edge and in the service)"
    run.record(
        Figure(
            GROUP,
            "grpc_echo_edge_rps",
            edge.requests_per_second,
            "req/s",
            "baseline.grpc_echo_rps",
            note=how,
        )
    )
    run.record(
        Figure(
            GROUP, "grpc_echo_edge_p99_ms", edge.p99_ms, "ms", "baseline.grpc_echo_p99_ms", note=how
        )
    )
