"""The shared runtime as an operator sees it: metrics, graceful shutdown, worker processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from cxmesh.diagnostics.v1 import echo_service_pb2, echo_service_pb2_grpc
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh, ServiceInstance, wait_serving
from cxmesh_server.stack.ports import free_port
from tests.conftest import grpc_bearer
from tests.e2e.processes import ended, read_or_empty, until, worker_processes


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


ECHO_LABELS = {"grpc_service": "cxmesh.diagnostics.v1.EchoService", "grpc_method": "Echo"}


def _instance(mesh: Mesh, name: str) -> ServiceInstance:
    return next(i for i in mesh.instances if i.name == name)


def _metrics_url(instance: ServiceInstance) -> str:
    return f"http://127.0.0.1:{instance.metrics_port}/metrics"


def test_metrics_count_started_and_handled_rpcs_by_code(mesh: Mesh, key: SigningKey) -> None:
    url = _metrics_url(_instance(mesh, "iam"))
    labels = {**ECHO_LABELS, "grpc_type": "unary"}
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


@pytest.fixture
def silent_postgres() -> Iterator[socket.socket]:
    """A "Postgres" that takes connections and never answers: a start that migrates
    waits on it (asyncpg gives up after 60 s)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(60)
        yield listener


def _dsn(listener: socket.socket) -> str:
    return f"postgresql://cxmesh@127.0.0.1:{listener.getsockname()[1]}/cxmesh"


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (SigCgt in /proc/PID/status)."""
    for line in read_or_empty(Path(f"/proc/{pid}/status")).decode().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_signal_while_starting_ends_the_start_at_once_and_cleanly(
    mesh: Mesh, silent_postgres: socket.socket, workers: int
) -> None:
    instance = mesh.start_service(
        "iam",
        env={"CXMESH_POSTGRES_DSN": _dsn(silent_postgres), "CXMESH_WORKERS": str(workers)},
    )
    waiting = [silent_postgres.accept()[0] for _ in range(workers)]  # every one migrating
    try:
        instance.process.send_signal(signal.SIGTERM)
        assert instance.process.wait(10) == 0
    finally:
        for connection in waiting:
            connection.close()
        mesh.instances.remove(instance)
    assert instance.own_log().count("stopped before serving") == workers


@pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(["unshare", "--fork", "--pid", "true"], check=False).returncode != 0,
    reason="needs a PID namespace (unshare)",
)
def test_as_pid_1_of_its_container_a_service_signalled_at_once_stops(
    mesh: Mesh, silent_postgres: socket.socket
) -> None:
    """The kernel drops signals PID 1 has no handler for, as Kubernetes' SIGTERM to a
    container that is still importing would be."""
    env = {**mesh.service_env("iam", 0, 0), "CXMESH_POSTGRES_DSN": _dsn(silent_postgres)}
    with subprocess.Popen(
        ["unshare", "--fork", "--pid", "--kill-child", sys.executable, "-m", "cxmesh_server"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as namespace:
        # The first moment it can take a signal at all: before its imports are done.
        deadline = time.monotonic() + 10
        service = 0
        while time.monotonic() < deadline:
            children = Path(f"/proc/{namespace.pid}/task/{namespace.pid}/children")
            service = int(children.read_text().split()[0]) if children.read_text() else 0
            if service and _catches(service, signal.SIGTERM):
                break
            time.sleep(0.001)
        assert service and _catches(service, signal.SIGTERM)
        started = time.monotonic()
        os.kill(service, signal.SIGTERM)  # from outside: to the namespace's PID 1
        try:
            assert namespace.wait(20) == 0
        finally:
            namespace.kill()
        assert time.monotonic() - started < 15
        output = namespace.stdout.read().decode() if namespace.stdout else ""
    assert "stopped before serving" in output


def test_a_worker_that_dies_is_replaced_and_workers_that_keep_dying_stop_the_service(
    mesh: Mesh, key: SigningKey
) -> None:
    instance = mesh.start_service("iam", env={"CXMESH_WORKERS": "2"})
    target = f"127.0.0.1:{instance.port}"
    parent = instance.process.pid
    try:
        wait_serving(target, time.monotonic() + 60, instance)
        first = worker_processes(parent)
        assert len(first) == 2
        assert instance.serving_pids() == set(first)  # both listen: one survives the kill
        os.kill(first[0], signal.SIGKILL)  # as the OOM killer would
        assert until(lambda: len(set(worker_processes(parent)) - {first[0]}) == 2, 30)
        token = key.mint(tenant="acme", roles=["viewer"])
        for n in range(10):  # the survivor serves while the replacement starts
            assert _echo(target, token, message=f"m{n}").message == f"m{n}"
        assert "worker exited; starting another" in instance.own_log()
        (replacement,) = set(worker_processes(parent)) - set(first)
        assert until(lambda: replacement in instance.serving_pids(), 60)
        deadline = time.monotonic() + 30
        # Four more deaths within the minute: the service stops, for its supervisor to see.
        killed = {first[0]}
        while instance.process.poll() is None and time.monotonic() < deadline:
            for child in set(worker_processes(parent)) - killed:
                os.kill(child, signal.SIGKILL)
                killed.add(child)
            time.sleep(0.05)
        assert instance.process.wait(20) == 1
        assert "workers keep exiting; stopping" in instance.own_log()
        assert not worker_processes(parent)
    finally:
        if instance.process.poll() is None:
            instance.process.kill()
        mesh.instances.remove(instance)


def test_the_workers_of_a_service_killed_9_drain_and_stop_with_it(mesh: Mesh) -> None:
    """Killed -9 (the OOM killer), a supervisor cannot stop its workers; the kernel does,
    or they would hold the port, running the old code, for good."""
    instance = mesh.start_service("iam", env={"CXMESH_WORKERS": "2"})
    try:
        wait_serving(f"127.0.0.1:{instance.port}", time.monotonic() + 60, instance)
        workers = worker_processes(instance.process.pid)
        assert len(workers) == 2
        instance.process.kill()
        instance.process.wait(10)
        assert until(lambda: all(ended(worker) for worker in workers), 30)
        assert instance.own_log().count('"message": "stopped"') == 2  # drained, not killed
    finally:
        if instance.process.poll() is None:
            instance.process.kill()
        mesh.instances.remove(instance)


def test_a_failure_repeating_every_turn_is_logged_once_a_period_and_its_last_at_stop(
    mesh: Mesh,
) -> None:
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"  # its check fails every second
    instance = mesh.start_service(
        "compliance", env={"CXMESH_REDIS_URL": nothing_there, "CXMESH_LOG_REPEAT_SECONDS": "3.5"}
    )
    try:
        # The first, then the last of its first period.
        assert until(lambda: len(_unavailable(instance)) >= 2, 30)
        time.sleep(1.5)  # a check or two into the next period: not written yet
        instance.process.send_signal(signal.SIGTERM)
        assert instance.process.wait(30) == 0
    finally:
        if instance.process.poll() is None:
            instance.process.kill()
        mesh.instances.remove(instance)
    written = _unavailable(instance)
    assert "not_logged" not in written[0] and written[1]["not_logged"] >= 1
    # The second is the last check of the first period (~3 s in), written once the period
    # was over: not the first check after it (3.5 s or more in).
    assert _logged_at(written[1]) - _logged_at(written[0]) < timedelta(seconds=3.5)
    checks = sum(1 + w.get("not_logged", 0) for w in written)
    assert len(written) < checks  # not one a check
    lines = instance.own_log().splitlines()
    last = max(n for n, line in enumerate(lines) if UNAVAILABLE in line)
    stopping = next(n for n, line in enumerate(lines) if '"message": "shutting down"' in line)
    assert last > stopping  # the run's last, written at stop


UNAVAILABLE = '"message": "compliance data unavailable"'


def _logged_at(line: dict[str, Any]) -> datetime:
    return datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f")


def _unavailable(instance: ServiceInstance) -> list[dict[str, Any]]:
    return [json.loads(line) for line in instance.own_log().splitlines() if UNAVAILABLE in line]


def test_a_worker_still_running_long_after_the_stop_is_killed_and_named(mesh: Mesh) -> None:
    grace = 1
    instance = mesh.start_service(
        "iam", env={"CXMESH_WORKERS": "2", "CXMESH_SHUTDOWN_GRACE_SECONDS": str(grace)}
    )
    parent = instance.process.pid
    try:
        wait_serving(f"127.0.0.1:{instance.port}", time.monotonic() + 60, instance)
        stuck, _ = worker_processes(parent)
        os.kill(stuck, signal.SIGSTOP)  # hangs: takes no signal but SIGKILL
        stopped_at = time.monotonic()
        instance.process.send_signal(signal.SIGTERM)
        assert instance.process.wait(30) == 1
        assert 2 * grace + 10 <= time.monotonic() - stopped_at < 2 * grace + 15
        killed = [line for line in instance.own_log().splitlines() if "killing it" in line]
        assert len(killed) == 1 and f"{stuck}" in killed[0]
        assert not worker_processes(parent)
    finally:
        if instance.process.poll() is None:
            instance.process.kill()
        mesh.instances.remove(instance)


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


def test_a_body_that_is_not_the_methods_message_is_an_invalid_argument_counted_not_logged(
    mesh: Mesh, key: SigningKey
) -> None:
    """Left to grpc.aio, it was UNKNOWN, never counted, and a traceback in the log for
    every such call."""
    iam, compliance = _instance(mesh, "iam"), _instance(mesh, "compliance")
    url = _metrics_url(iam)
    labels = {**ECHO_LABELS, "grpc_code": "INVALID_ARGUMENT"}
    logs_before = {i.name: i.log_path.stat().st_size for i in (iam, compliance)}
    counted_before = _metric(httpx.get(url).text, "grpc_server_handled_total", **labels)
    junk = b"\xff\xff\xff"
    with grpc.insecure_channel(f"127.0.0.1:{iam.port}") as channel:
        echo = channel.unary_unary("/cxmesh.diagnostics.v1.EchoService/Echo", None, None)
        with pytest.raises(grpc.RpcError) as refused:
            echo(junk, metadata=grpc_bearer(key.mint(tenant="acme", roles=["viewer"])))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parsing message with type 'cxmesh.diagnostics.v1.EchoRequest'" in str(
            refused.value.details()
        )
        with pytest.raises(grpc.RpcError) as anonymous:
            echo(junk)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED  # checked first
    with grpc.insecure_channel(f"127.0.0.1:{compliance.port}") as channel:
        stream = channel.stream_stream(
            "/cxmesh.compliance.v1.DecisionService/PreValidateStream", None, None
        )
        token = key.mint(tenant="acme", roles=["admin"])
        with pytest.raises(grpc.RpcError) as in_stream:
            list(stream(iter([junk]), metadata=grpc_bearer(token), timeout=10))
        assert in_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _metric(httpx.get(url).text, "grpc_server_handled_total", **labels) == (
        counted_before + 1
    )
    for instance in (iam, compliance):
        written = instance.log_path.read_bytes()[logs_before[instance.name] :]
        assert b"DecodeError" not in written
        assert b"Traceback" not in written
