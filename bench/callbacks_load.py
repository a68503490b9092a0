"""Group `callbacks`: GES creates through Envoy against the REST echo baseline, and how fast
10,000 callbacks due in the same minute are queued."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc

from bench.baselines import GROUP as BASELINE
from bench.baselines import SECONDS, bracketed, rest_echo_load
from bench.environment import Environment
from bench.harness import LATENCY_SECONDS, Figure, Run
from bench.load import wrk_post
from cxmesh.callbacks.v1 import callback_pb2, callback_service_pb2, callback_service_pb2_grpc

GROUP = "callbacks"
TENANT = "bench-callbacks"
DUE_COUNT = 10_000
CONNECTIONS = 16


Metadata = tuple[tuple[str, str], ...]


def _service(
    config: callback_service_pb2_grpc.CallbackConfigServiceStub, name: str, md: Metadata
) -> None:
    """Open around the clock, room for everything, no duplicate check or throttle: the
    figure is the cost of a create, not of a refusal."""
    queue = f"{name}-vq"
    config.CreateVirtualQueue(
        callback_service_pb2.CreateVirtualQueueRequest(virtual_queue_id=queue), metadata=md
    )
    config.CreateCallbackService(
        callback_service_pb2.CreateCallbackServiceRequest(
            callback_service_id=name,
            callback_service=callback_pb2.CallbackServiceConfig(
                virtual_queue=f"virtualQueues/{queue}",
                capacity=callback_pb2.Capacity(bucket_minutes=5, default_per_bucket=1_000_000),
                in_queue_check=callback_pb2.IN_QUEUE_CHECK_OFF,
                throttle_per_day=0,
            ),
        ),
        metadata=md,
    )


def measure(run: Run, env: Environment) -> None:
    admin = env.new_tenant(TENANT)
    api_key = env.api_key(admin, "engagement")
    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        config = callback_service_pb2_grpc.CallbackConfigServiceStub(channel)
        _service(config, "rest", admin)
        _service(config, "due", admin)

    url = f"{env.mesh.edge_url}/engagement/v3/callbacks/create"
    body = '{"serviceName":"rest","phoneNumber":"+1646555%04d","language":"en-US"}'
    headers = {"content-type": "application/json", "x-api-key": api_key}
    full = bracketed(
        run,
        GROUP,
        "rest_echo_rps_around_create",
        lambda: rest_echo_load(env),
        lambda: wrk_post(
            url, body, headers=headers, seconds=SECONDS, connections=CONNECTIONS, numbered=True
        ),
    )
    how = (
        f"wrk -c{CONNECTIONS} POST /engagement/v3/callbacks/create (ASAP, a new number each "
        "time) through Envoy with an API key, two callbacks replicas; "
        f"{run.versus(full.requests_per_second, f'{BASELINE}.rest_echo_rps')} (start of the run)"
    )
    run.record(
        Figure(
            GROUP,
            "create_rps",
            full.requests_per_second,
            "req/s",
            f"{GROUP}.rest_echo_rps_around_create",
            note=how,
        )
    )
    # Half the load: each connection pauses so that together they send half the maximum.
    half_rate = full.requests_per_second / 2
    paced = wrk_post(
        url,
        body,
        headers=headers,
        seconds=LATENCY_SECONDS,
        connections=CONNECTIONS,
        numbered=True,
        delay_ms=max(0.0, CONNECTIONS / half_rate * 1000 - full.p50_ms),
    )
    run.record(
        Figure(
            GROUP,
            "create_p99_ms_at_half_load",
            paced.p99_ms,
            "ms",
            f"{BASELINE}.rest_echo_p99_ms",
            note=f"wrk -c{CONNECTIONS} paced to about half the maximum, niced, "
            f"{LATENCY_SECONDS} s ({paced.requests_per_second:,.0f} req/s measured)",
        )
    )
    run.record(
        Figure(
            GROUP,
            "due_queued_seconds",
            _due_burst(env, admin, full.requests_per_second),
            "s",
            note=f"{DUE_COUNT:,} callbacks due at the same instant: desired time → the last "
            "one QUEUED (GetCallbackStatistics polled every 0.1 s), two callbacks replicas",
        )
    )


def _due_burst(env: Environment, admin: Metadata, create_rate: float) -> float:
    # Every callback is created before they all fall due together.
    lead = timedelta(seconds=max(30.0, 1.5 * DUE_COUNT / create_rate + 10))
    due = (datetime.now(UTC) + lead).replace(microsecond=0)
    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        callbacks = callback_service_pb2_grpc.CallbackServiceStub(channel)

        def create(n: int) -> None:
            message = callback_pb2.Callback(
                callback_service="callbackServices/due", phone_number=f"+1718555{n % 10000:04d}"
            )
            message.desired_time.FromDatetime(due)
            callbacks.CreateCallback(
                callback_service_pb2.CreateCallbackRequest(callback=message),
                metadata=admin,
                timeout=30,
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(DUE_COUNT)))
    if datetime.now(UTC) >= due:
        raise RuntimeError("creating the callbacks took longer than the lead time")
    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        statistics = callback_service_pb2_grpc.CallbackServiceStub(channel)
        while datetime.now(UTC) < due:
            time.sleep(0.05)
        while True:
            counts = statistics.GetCallbackStatistics(
                callback_service_pb2.GetCallbackStatisticsRequest(), metadata=admin, timeout=30
            ).counts
            queued = sum(
                c.count
                for c in counts
                if c.callback_service == "callbackServices/due"
                and c.state == callback_pb2.CALLBACK_STATE_QUEUED
            )
            if queued >= DUE_COUNT:
                return (datetime.now(UTC) - due).total_seconds()
            if (datetime.now(UTC) - due).total_seconds() > 120:
                raise RuntimeError(f"{queued} of {DUE_COUNT} queued after 120 s")
            time.sleep(0.1)
