"""Group `compliance`: pre-dial decisions against the baselines, with 1,000,000 suppression
entries loaded."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from bench import compliance_new_records, compliance_reads, compliance_recovery, compliance_stream
from bench.baselines import (
    ECHO_PATH,
    SECONDS,
    bracketed,
    grpc_echo_load,
    rest_echo_load,
)
from bench.baselines import GROUP as BASELINE
from bench.cpu import CpuMeter, with_descendants
from bench.data import dnc_file
from bench.environment import Environment
from bench.grpc_codes import answered_ok, only_ok
from bench.harness import LATENCY_SECONDS, LATENCY_WINDOWS, Figure, Run
from bench.lists_import import _file_messages
from bench.load import LoadResult, h2load_grpc, h2load_grpc_paced, merged, wrk_post
from cxmesh.compliance.v1 import (
    decision_pb2,
    decision_service_pb2,
    decision_service_pb2_grpc,
    rule_set_pb2,
    rule_set_service_pb2,
    rule_set_service_pb2_grpc,
)
from cxmesh.diagnostics.v1 import echo_service_pb2
from cxmesh.lists.v1 import suppression_pb2, suppression_service_pb2, suppression_service_pb2_grpc
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.stack.mesh import wait_serving

GROUP = "compliance"
TENANT = "bench-compliance"
# The throughput target: PreValidate at >= this share of the bare echo's.
REQUIRED_SHARE_OF_ECHO = 0.70
PRE_VALIDATE_METHOD = "PreValidate"
PRE_VALIDATE_BATCH_METHOD = "PreValidateBatch"
PRE_VALIDATE = f"/cxmesh.compliance.v1.DecisionService/{PRE_VALIDATE_METHOD}"
PRE_VALIDATE_BATCH = f"/cxmesh.compliance.v1.DecisionService/{PRE_VALIDATE_BATCH_METHOD}"
RECORD_ATTEMPTS_METHOD = "RecordAttempts"
BATCH_WINDOWS = 3


def _contact(n: int) -> decision_pb2.DecisionRequest:
    return decision_pb2.DecisionRequest(
        contact=decision_pb2.Contact(
            address=f"+1212{5550000 + n % 10000}", client_id=f"C{n}", postal_code="10001"
        ),
        campaign="campaigns/bench",
    )


@dataclass(frozen=True)
class _Target:
    url: str
    request: Message
    headers: dict[str, str] | None
    # the processes whose CPU time serves its calls
    pids: list[int]
    # where its service counts its answers by gRPC code (None: the bare echo, no metrics)
    metrics_port: int | None = None
    # the datastore processes its calls read (Redis): their CPU is part of a call's cost
    datastore_pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Paced:
    result: LoadResult
    steal_share: float
    cpu_us_per_call: float
    datastore_cpu_us_per_call: float
    window_p99s_ms: tuple[float, ...]
    # the host's steal in each window: the p99s follow it
    window_steal_shares: tuple[float, ...]
    # the rate each window reached: h2load's pacing can over- or undershoot one
    window_rates: tuple[float, ...]

    def windows(self) -> str:
        return (
            "windows' p99 "
            + ", ".join(f"{p99:,.2f}" for p99 in self.window_p99s_ms)
            + " ms at "
            + ", ".join(f"{rate:,.0f}" for rate in self.window_rates)
            + " req/s with "
            + ", ".join(f"{steal:.1%}" for steal in self.window_steal_shares)
            + " stolen"
        )


def _latency_at(rate: float, targets: dict[str, _Target]) -> dict[str, _Paced]:
    """Each target under the same paced load, in windows taken in turn so that all see the
    machine as it was (the host's steal came and went within minutes)."""
    runs: dict[str, list[tuple[LoadResult, CpuMeter, CpuMeter]]] = {n: [] for n in targets}
    for _ in range(LATENCY_WINDOWS):
        for name, target in targets.items():
            ports = [] if target.metrics_port is None else [target.metrics_port]
            with (
                only_ok(ports, PRE_VALIDATE_METHOD) as answered,
                CpuMeter(target.pids) as meter,
                CpuMeter(target.datastore_pids) as datastore,
            ):
                result = h2load_grpc_paced(
                    target.url,
                    target.request,
                    rate=rate,
                    headers=target.headers,
                    seconds=LATENCY_SECONDS // LATENCY_WINDOWS,
                )
            answered.covers(result.requests)
            runs[name].append((result, meter, datastore))

    def summed(windows: list[tuple[LoadResult, CpuMeter, CpuMeter]]) -> _Paced:
        answered = sum(result.answered for result, _, _ in windows)
        return _Paced(
            result=merged([result for result, _, _ in windows]),
            steal_share=sum(meter.steal_share for _, meter, _ in windows) / len(windows),
            cpu_us_per_call=sum(meter.seconds for _, meter, _ in windows) / answered * 1e6,
            datastore_cpu_us_per_call=sum(d.seconds for _, _, d in windows) / answered * 1e6,
            window_p99s_ms=tuple(result.p99_ms for result, _, _ in windows),
            window_steal_shares=tuple(meter.steal_share for _, meter, _ in windows),
            window_rates=tuple(result.requests_per_second for result, _, _ in windows),
        )

    return {name: summed(windows) for name, windows in runs.items()}


def measure(run: Run, env: Environment) -> None:
    admin = env.new_tenant(TENANT)
    dialer_key = env.api_key(admin, "dialer")
    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        # Open all day so every decision does the full work; a 7-in-7 attempt rule as Reg F.
        rules = rule_set_pb2.RuleSet(display_name="bench")
        window = rules.contact_windows.add()
        window.end_time.hours = 24
        limit = rules.attempt_rules.add(
            max_attempts=7, scope=rule_set_pb2.ATTEMPT_SCOPE_DEVICE_AND_CLIENT
        )
        limit.window.FromTimedelta(timedelta(days=7))
        rule_set = (
            rule_set_service_pb2_grpc.RuleSetServiceStub(channel)
            .CreateRuleSet(
                rule_set_service_pb2.CreateRuleSetRequest(rule_set=rules), metadata=admin
            )
            .rule_set
        )
        # The same rules with the TCPA window (08:00-21:00, the default), for one campaign.
        tcpa = rule_set_pb2.RuleSet(
            display_name="bench, TCPA window",
            campaigns=[compliance_new_records.TCPA_CAMPAIGN],
            attempt_rules=rules.attempt_rules,
        )
        rule_set_service_pb2_grpc.RuleSetServiceStub(channel).CreateRuleSet(
            rule_set_service_pb2.CreateRuleSetRequest(rule_set=tcpa), metadata=admin
        )
        suppression = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        dnc = suppression.CreateSuppressionList(
            suppression_service_pb2.CreateSuppressionListRequest(
                suppression_list=suppression_pb2.SuppressionList(display_name="national dnc")
            ),
            metadata=admin,
        ).suppression_list
        suppression.ImportDncFile(
            _file_messages(  # type: ignore[arg-type]
                suppression_service_pb2.ImportDncFileRequest(
                    options=suppression_service_pb2.ImportDncFileOptions(
                        parent=dnc.name,
                        provider=suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC,
                        kind=suppression_service_pb2.DNC_FILE_KIND_FULL,
                    )
                ),
                dnc_file(),
                suppression_service_pb2.ImportDncFileRequest,
            ),
            metadata=admin,
            timeout=600,
        )
        decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
        check = decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=_contact(1)), metadata=admin
        )
        assert check.decision.allowed, check

        # How fast a rule change reaches decisions (every replica reads the version per call).
        changed = time.perf_counter()
        blocked = rule_set_pb2.RuleSet(
            name=rule_set.name, display_name="bench", channels=[channel_pb2.CHANNEL_SMS]
        )  # SMS only
        rule_set_service_pb2_grpc.RuleSetServiceStub(channel).UpdateRuleSet(
            rule_set_service_pb2.UpdateRuleSetRequest(
                rule_set=blocked, update_mask=FieldMask(paths=["channels"])
            ),
            metadata=admin,
        )
        while (
            decisions.PreValidate(
                decision_service_pb2.PreValidateRequest(decision_request=_contact(1)),
                metadata=admin,
            )
            .decision.rule_set_revisions[0]
            .startswith(rule_set.name)
        ):
            pass
        visible = time.perf_counter() - changed
        rule_set_service_pb2_grpc.RuleSetServiceStub(channel).UpdateRuleSet(
            rule_set_service_pb2.UpdateRuleSetRequest(
                rule_set=rule_set_pb2.RuleSet(name=rule_set.name),
                update_mask=FieldMask(paths=["channels"]),
            ),
            metadata=admin,
        )
    run.record(
        Figure(
            GROUP,
            "rule_change_visible_seconds",
            visible,
            "s",
            note="UpdateRuleSet returned → first decision under the new revision",
        )
    )

    with grpc.insecure_channel(env.mesh.edge_target) as channel:
        decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
        suppression = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        target = _contact(4242)
        started = time.perf_counter()
        suppression.CreateEmergencySuppressionEntry(
            suppression_service_pb2.CreateEmergencySuppressionEntryRequest(
                parent=dnc.name,
                entry=suppression_pb2.SuppressionEntry(phone_number=target.contact.address),
            ),
            metadata=admin,
        )
        while decisions.PreValidate(
            decision_service_pb2.PreValidateRequest(decision_request=target), metadata=admin
        ).decision.allowed:
            pass
        emergency = time.perf_counter() - started
    run.record(
        Figure(
            GROUP,
            "emergency_suppression_visible_seconds",
            emergency,
            "s",
            note="CreateEmergencySuppressionEntry called → first decision that denies",
        )
    )
    compliance_reads.measure(run, env, GROUP, TENANT, _contact)

    compliance = env.instance("compliance")
    port = compliance.port
    auth = {"authorization": f"Bearer {env.token(TENANT)}"}
    request = decision_service_pb2.PreValidateRequest(decision_request=_contact(7))
    unary = bracketed(
        run,
        GROUP,
        "grpc_echo_rps_around_prevalidate",
        lambda: grpc_echo_load(env),
        lambda: answered_ok(
            [compliance.metrics_port],
            PRE_VALIDATE_METHOD,
            lambda: h2load_grpc(
                f"http://127.0.0.1:{port}{PRE_VALIDATE}", request, headers=auth, seconds=SECONDS
            ),
        ),
    )
    how = (
        "h2load -c4 -m16 PreValidate straight to the compliance process; 1M suppression "
        f"entries loaded; {run.versus(unary.requests_per_second, f'{BASELINE}.grpc_echo_rps')} "
        "(start of the run)"
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_rps",
            unary.requests_per_second,
            "req/s",
            f"{GROUP}.grpc_echo_rps_around_prevalidate",
            note=how,
        )
    )
    # The same calls to one compliance process running two workers (CXMESH_WORKERS=2, one
    # per core): the figures an operator gets from one pod of two cores.
    # At INFO: wait_serving counts the workers' "serving" lines.
    workers = env.mesh.start_service(
        "compliance", env={"CXMESH_WORKERS": "2", "CXMESH_LOG_LEVEL": "INFO"}
    )
    # The same process with one gRPC server, as grpc.aio serves by default: what the
    # servers' accept loops side by side change at the same load, in the same turns.
    one_loop = env.mesh.start_service("compliance", env={"CXMESH_ACCEPT_LOOPS": "1"})
    try:
        wait_serving(f"127.0.0.1:{workers.port}", time.monotonic() + 60, workers)
        wait_serving(f"127.0.0.1:{one_loop.port}", time.monotonic() + 60, one_loop)
        two_workers_url = f"http://127.0.0.1:{workers.port}{PRE_VALIDATE}"
        two = bracketed(
            run,
            GROUP,
            "grpc_echo_rps_around_two_workers",
            lambda: grpc_echo_load(env),
            lambda: answered_ok(
                [workers.metrics_port],
                PRE_VALIDATE_METHOD,
                lambda: h2load_grpc(two_workers_url, request, headers=auth, seconds=SECONDS),
            ),
        )
        half_rate = unary.requests_per_second / 2
        prevalidate = _Target(
            f"http://127.0.0.1:{port}{PRE_VALIDATE}",
            request,
            auth,
            [compliance.process.pid],
            compliance.metrics_port,
            (env.redis.process.pid,),
        )
        echo = _Target(
            f"http://127.0.0.1:{env.bare_echo_port}{ECHO_PATH}",
            echo_service_pb2.EchoRequest(message="hello"),
            None,
            [env.bare_echo_pid],
        )
        two_workers = _Target(
            two_workers_url,
            request,
            auth,
            with_descendants(workers.process.pid),
            workers.metrics_port,
        )
        paced = _latency_at(
            half_rate,
            {
                "prevalidate": prevalidate,
                "echo": echo,
                "two_workers": two_workers,
                "one_accept_loop": _Target(
                    f"http://127.0.0.1:{one_loop.port}{PRE_VALIDATE}",
                    request,
                    auth,
                    [one_loop.process.pid],
                    one_loop.metrics_port,
                ),
            },
        )
        # The issue asks for >= 0.70x the echo's throughput and a p99 <= 5 ms "at half that
        # load". Above, "that load" is the maximum PreValidate reached, which moves with our
        # own speed (past the echo's since several accept loops); here it is the load the
        # issue requires, 0.70x the echo around PreValidate's maximum, the same for any code.
        required_half_rate = (
            REQUIRED_SHARE_OF_ECHO
            * run.figures[f"{GROUP}.grpc_echo_rps_around_prevalidate"].value
            / 2
        )
        paced_required = _latency_at(
            required_half_rate,
            {"prevalidate": prevalidate, "echo": echo, "two_workers": two_workers},
        )
    finally:
        for instance in (workers, one_loop):
            instance.process.terminate()
        for instance in (workers, one_loop):
            try:
                instance.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Killed, and said: a failure above must not be hidden by this one.
                print(f"{instance.name} did not stop 30 s after SIGTERM; killed", file=sys.stderr)
                instance.process.kill()
                instance.process.wait()
    run.record(
        Figure(
            GROUP,
            "prevalidate_rps_two_workers",
            two.requests_per_second,
            "req/s",
            f"{GROUP}.grpc_echo_rps_around_two_workers",
            note="h2load -c4 -m16 PreValidate to one compliance process with CXMESH_WORKERS=2 "
            "(the echo is one process)",
        )
    )
    _record_half_load(run, half_rate, paced)
    _record_half_required_load(run, required_half_rate, paced_required)
    batch = decision_service_pb2.PreValidateBatchRequest(
        decision_requests=[_contact(n) for n in range(1000)]
    )
    # Three windows, the median: one 10-s window swung 86,700-179,300 records/s between
    # runs of the same code on a host whose steal comes in bursts.
    windows = sorted(
        _batches(
            compliance.metrics_port, port, auth, PRE_VALIDATE_BATCH_METHOD, batch
        ).requests_per_second
        * 1000
        for _ in range(BATCH_WINDOWS)
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_batch_records_per_s",
            statistics.median(windows),
            "records/s",
            note="PreValidateBatch of 1,000 contacts, h2load -c2 -m2 (the same 1,000 every call: "
            "their parsed numbers and zones are cached, as when a dialer re-validates its "
            f"records); the median of {BATCH_WINDOWS} windows of {SECONDS} s: "
            + ", ".join(f"{rate:,.0f}" for rate in windows),
        )
    )
    compliance_new_records.measure(run, GROUP, port, compliance.metrics_port, auth)
    compliance_stream.measure(
        run, GROUP, port, compliance.metrics_port, auth, request.decision_request
    )
    ocs = bracketed(
        run,
        GROUP,
        "rest_echo_rps_around_ocs",
        lambda: rest_echo_load(env),
        lambda: wrk_post(
            f"{env.mesh.edge_url}/ocs/v1/validate",
            '{"GSW_PHONE":"2125550007","GSW_CAMPAIGN_NAME":"campaigns/bench","POSTAL_CODE":"10001","GSW_ATTEMPTS":0}',
            headers={"content-type": "application/json", "x-api-key": dialer_key},
            seconds=SECONDS,
        ),
    )
    how = "wrk -c16 POST /ocs/v1/validate through Envoy with a dialer API key"
    versus_start = run.versus(ocs.requests_per_second, f"{BASELINE}.rest_echo_rps")
    run.record(
        Figure(
            GROUP,
            "ocs_validate_rps",
            ocs.requests_per_second,
            "req/s",
            f"{GROUP}.rest_echo_rps_around_ocs",
            note=f"{how}; {versus_start} (start of the run)",
        )
    )
    run.record(
        Figure(
            GROUP, "ocs_validate_p99_ms", ocs.p99_ms, "ms", f"{BASELINE}.rest_echo_p99_ms", note=how
        )
    )
    # Last: the attempts go to numbers no other figure decides for.
    attempts = decision_service_pb2.RecordAttemptsRequest(
        attempts=[
            decision_pb2.Attempt(
                attempt_id=f"bench-{n}",
                contact=decision_pb2.Contact(address=f"+1415555{1000 + n:04d}"),
                call_result=call_result_pb2.CALL_RESULT_NO_ANSWER,
            )
            for n in range(1000)
        ]
    )
    recorded = _batches(compliance.metrics_port, port, auth, RECORD_ATTEMPTS_METHOD, attempts)
    run.record(
        Figure(
            GROUP,
            "record_attempts_per_s",
            recorded.requests_per_second * 1000,
            "attempts/s",
            f"{BASELINE}.redis_pipelined_set_ops",
            note="RecordAttempts of 1,000 attempts, h2load -c2 -m2 (the same 1,000 every call: "
            "each replaces its last report; one Postgres upsert of the 1,000, committed, then "
            "scripts of 50 attempts, 5-7 Redis commands each, all in one pipeline)",
        )
    )
    # Last: it empties Redis.
    compliance_recovery.measure(run, env, GROUP, TENANT, admin, _contact)


def _batches(
    metrics_port: int, port: int, auth: dict[str, str], method: str, request: Message
) -> LoadResult:
    """Calls of 1,000 items each to a DecisionService method, h2load -c2 -m2."""
    return answered_ok(
        [metrics_port],
        method,
        lambda: h2load_grpc(
            f"http://127.0.0.1:{port}/cxmesh.compliance.v1.DecisionService/{method}",
            request,
            headers=auth,
            seconds=SECONDS,
            connections=2,
            streams=2,
        ),
    )


def _measured(of: _Paced) -> str:
    return (
        f"{of.result.requests_per_second:,.0f} req/s ({of.windows()}), "
        f"{of.steal_share:.1%} of the CPUs' time stolen by the host meanwhile"
    )


def _record_half_required_load(run: Run, rate: float, paced: dict[str, _Paced]) -> None:
    echo_p99 = run.record(
        Figure(
            GROUP,
            "grpc_echo_p99_ms_at_half_required_load",
            paced["echo"].result.p99_ms,
            "ms",
            note=f"the bare echo under the same load: {_measured(paced['echo'])}",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_p99_ms_at_half_required_load",
            paced["prevalidate"].result.p99_ms,
            "ms",
            echo_p99.key,
            note=f"evenly paced calls at half of {REQUIRED_SHARE_OF_ECHO:.2f}x the echo around "
            f"PreValidate's maximum ({rate:,.0f} req/s asked), {LATENCY_WINDOWS} windows of "
            f"{LATENCY_SECONDS // LATENCY_WINDOWS} s taken in turn with the bare echo's: "
            f"{_measured(paced['prevalidate'])}",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_p99_ms_at_half_required_load_two_workers",
            paced["two_workers"].result.p99_ms,
            "ms",
            echo_p99.key,
            note="the same load on one process with CXMESH_WORKERS=2 (one pod of two cores), "
            f"in the same turns: {_measured(paced['two_workers'])}",
        )
    )


def _record_half_load(run: Run, rate: float, paced: dict[str, _Paced]) -> None:
    echo, single, two = paced["echo"], paced["prevalidate"], paced["two_workers"]
    one_loop = paced["one_accept_loop"]
    how = (
        f"evenly paced calls at half the measured maximum ({rate:,.0f} req/s asked; h2load "
        "timing scripts, one connection per process, niced), "
        f"{LATENCY_WINDOWS} windows of {LATENCY_SECONDS // LATENCY_WINDOWS} s taken in turn "
        "with the bare echo's"
    )

    # The bare echo under the same load, in the windows between: the latency floor of the
    # machine and of the load pattern as they were at the time.
    echo_p99 = f"{GROUP}.grpc_echo_p99_ms_at_half_load"
    run.record(
        Figure(
            GROUP,
            "grpc_echo_p99_ms_at_half_load",
            echo.result.p99_ms,
            "ms",
            note=f"the bare echo under the same load: {_measured(echo)}",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_p99_ms_at_half_load",
            single.result.p99_ms,
            "ms",
            echo_p99,
            note=f"{how}: {_measured(single)}",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_p99_ms_at_half_load_two_workers",
            two.result.p99_ms,
            "ms",
            echo_p99,
            note=f"the same load on one process with CXMESH_WORKERS=2, in the same turns: "
            f"{_measured(two)}",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_p99_ms_at_half_load_one_accept_loop",
            one_loop.result.p99_ms,
            "ms",
            echo_p99,
            note="the same load on one process with CXMESH_ACCEPT_LOOPS=1 (one gRPC server, "
            f"as grpc.aio serves by default), in the same turns: {_measured(one_loop)}",
        )
    )
    # What a call costs at that load, queueing aside: comparable across runs on a host
    # whose noise decides the p99.
    echo_cpu = f"{GROUP}.grpc_echo_cpu_us_per_call_at_half_load"
    run.record(
        Figure(
            GROUP,
            "grpc_echo_cpu_us_per_call_at_half_load",
            echo.cpu_us_per_call,
            "µs",
            note="CPU time (every thread) of the bare echo process per call answered, "
            "in the half-load windows",
        )
    )
    for name, of, process in (
        ("prevalidate_cpu_us_per_call_at_half_load", single, "the compliance process"),
        ("prevalidate_cpu_us_per_call_at_half_load_two_workers", two, "the two-worker process"),
        (
            "prevalidate_cpu_us_per_call_at_half_load_one_accept_loop",
            one_loop,
            "the one-server process",
        ),
    ):
        run.record(
            Figure(
                GROUP,
                name,
                of.cpu_us_per_call,
                "µs",
                echo_cpu,
                note=f"CPU time (every thread and worker) of {process} per call answered, "
                "in the half-load windows (Redis not counted)",
            )
        )
    # A decision also costs the Redis it reads: on the bench machine that CPU comes from
    # the same two cores, and the echo has nothing like it.
    run.record(
        Figure(
            GROUP,
            "prevalidate_redis_cpu_us_per_call_at_half_load",
            single.datastore_cpu_us_per_call,
            "µs",
            note="CPU time of the Redis server per PreValidate call answered by the compliance "
            "process, in its half-load windows",
        )
    )
    run.record(
        Figure(
            GROUP,
            "prevalidate_with_redis_cpu_us_per_call_at_half_load",
            single.cpu_us_per_call + single.datastore_cpu_us_per_call,
            "µs",
            echo_cpu,
            note="the compliance process and Redis together, per call answered, in the "
            "half-load windows: what a decision costs the machine",
        )
    )
