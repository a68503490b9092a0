"""Builds and runs one service process from its settings.

Every process serves grpc.health.v1 and server reflection listing every cxmesh service
(so one edge address is enough for grpcurl-style tools), every handler wrapped by the runtime.
On SIGTERM: health goes NOT_SERVING, new calls are refused, in-flight calls get the grace
period to finish, and work their callers abandoned (`run_to_completion`) gets it again
before the pools close. SIGTERM while the process is still starting ends the start
(`stop_signals`). With worker processes, the parent keeps them running
(`WorkerSupervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client.multiprocess import mark_process_dead
from redis.asyncio import Redis

from cxmesh_server.runtime import api, stop_signals
from cxmesh_server.runtime.accept_loops import Registration, start_servers
from cxmesh_server.runtime.auth import Authenticator, JwtVerifier
from cxmesh_server.runtime.collector import long_lived
from cxmesh_server.runtime.interceptor import Runtime
from cxmesh_server.runtime.logging import (
    configure_logging,
    repeating,
    write_last_repeats,
    write_last_repeats_every,
)
from cxmesh_server.runtime.metrics import serve_metrics
from cxmesh_server.runtime.postgres import create_pool
from cxmesh_server.runtime.redis import create_redis
from cxmesh_server.runtime.redis_wire import WireRedis
from cxmesh_server.runtime.settings import AuthSettings, ServiceSettings
from cxmesh_server.runtime.tracing import configure_tracing

log = logging.getLogger(__name__)


_Resource = TypeVar("_Resource")


@dataclass
class Resources:
    """What handlers may use; built once per process by `serve`, swapped in tests."""

    settings: ServiceSettings
    postgres: asyncpg.Pool | None = None
    redis: Redis | None = None
    # A pipelined connection to the same Redis, for the hot paths.
    redis_wire: WireRedis | None = None
    # Reports whether the process can do its job (grpc.health.v1); set by run_server.
    set_serving: Callable[[bool], Awaitable[None]] | None = None

    async def report_health(self, serving: bool) -> None:
        if self.set_serving is not None:
            await self.set_serving(serving)

    def require_postgres(self) -> asyncpg.Pool:
        return self._required(self.postgres, "CXMESH_POSTGRES_DSN")

    def require_redis(self) -> Redis:
        return self._required(self.redis, "CXMESH_REDIS_URL")

    def require_redis_wire(self) -> WireRedis:
        return self._required(self.redis_wire, "CXMESH_REDIS_URL")

    def _required(self, resource: _Resource | None, setting: str) -> _Resource:
        if resource is None:
            raise RuntimeError(f"{self.settings.service} needs {setting}")
        return resource

    async def close(self) -> None:
        if self.postgres is not None:
            await self.postgres.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.redis_wire is not None:
            await self.redis_wire.close()


# How soon after its period the last of a run of repeated logs is written: a look at a
# small dict.
REPEATS_WRITTEN_EVERY_SECONDS = 0.25
_background: set[asyncio.Task[None]] = set()
# Work that goes on to its end though its caller stopped waiting (`run_to_completion`).
_unabandoned: set[asyncio.Task[Any]] = set()
_Result = TypeVar("_Result")


def start_background(loop: Coroutine[Any, Any, None]) -> None:
    """Runs a service's background loop (mirror checks, sweeps) for the process's life."""
    task = asyncio.create_task(loop)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def run_to_completion(work: Coroutine[Any, Any, _Result]) -> _Result:
    """Awaits `work`, which goes on to its end if the caller is cancelled (its deadline
    passed): for work left half done would be wrong, such as attempts stored but not yet
    counted. A shutdown waits for it (`finish_unabandoned`) before closing the pools."""
    task = asyncio.create_task(work)
    _unabandoned.add(task)
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


def _settled(task: asyncio.Task[Any]) -> None:
    _unabandoned.discard(task)
    if not task.cancelled():
        task.exception()  # the caller's to handle; read, or asyncio logs it as never read


async def finish_unabandoned(seconds: float) -> int:
    """Waits up to `seconds` for work begun by `run_to_completion`; returns how much is
    still unfinished."""
    if not _unabandoned:
        return 0
    _, unfinished = await asyncio.wait(set(_unabandoned), timeout=seconds)
    return len(unfinished)


def start_periodic(
    what: str, seconds: float, job: Callable[[], Awaitable[int]], *, level: int = logging.INFO
) -> None:
    """Runs `job` every `seconds` for the process's life, logging how many things it did
    (`what` at `level`, when any); a failure is logged and the job runs again at its next
    turn."""

    async def turns() -> None:
        while True:
            try:
                done = await job()
                if done:
                    log.log(level, what, extra={"count": done})
            except Exception:
                log.warning("%s: failed; retrying", what, exc_info=True, extra=repeating())
            await asyncio.sleep(seconds)

    start_background(turns())


Builder = Callable[[Resources], Awaitable[Sequence[Registration]]]


@dataclass(frozen=True)
class ServiceProcess:
    """How to start one service: its gRPC services and what it needs."""

    name: str
    build: Builder | None = None
    # (schema, migrations folder) applied before the server starts.
    migrations: Sequence[tuple[str, Any]] = field(default_factory=tuple)
    # Called once at the start, before the process is ready (mirror rebuilds, background
    # loops): after a lone process starts listening, before worker processes do.
    on_start: Callable[[Resources], Awaitable[None]] | None = None
    # The service reports SERVING itself (Resources.report_health) once what it serves from
    # is loaded, instead of the runtime doing so when on_start returns.
    reports_readiness: bool = False
    # The largest request message accepted (gRPC's default is 4 MiB).
    max_request_bytes: int = 4 * 1024 * 1024


async def _open_resources(settings: ServiceSettings, process: ServiceProcess) -> Resources:
    resources = Resources(settings=settings)
    # Only services that own a schema talk to Postgres (their migrations create the role).
    if settings.postgres_dsn and process.migrations:
        resources.postgres = await create_pool(
            settings.postgres_dsn, max_size=settings.postgres_pool_max
        )
    if settings.redis_url:
        resources.redis = create_redis(settings.redis_url)
        resources.redis_wire = WireRedis(settings.redis_url)
    return resources


@dataclass
class _Serving:
    resources: Resources
    servers: list[grpc.aio.Server]
    health: Any  # grpc_health's aio HealthServicer (untyped)


async def run_server(settings: ServiceSettings, process: ServiceProcess) -> None:
    """Serves until SIGTERM/SIGINT, then shuts down gracefully. A stop signal while the
    process is still starting (migrating, loading) ends the start there."""
    stop = stop_signals.stop_requested()
    start_background(write_last_repeats_every(REPEATS_WRITTEN_EVERY_SECONDS))
    starting = asyncio.create_task(_start(settings, process))
    signalled = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        write_last_repeats(at_once=True)
        log.info("stopped before serving")
        return
    serving = starting.result()
    await signalled
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await serving.health.enter_graceful_shutdown()
    grace = settings.shutdown_grace_seconds
    await asyncio.gather(*(server.stop(grace) for server in serving.servers))
    unfinished = await finish_unabandoned(grace)
    if unfinished:
        log.warning("work unfinished at shutdown", extra={"count": unfinished})
    await serving.resources.close()
    write_last_repeats(at_once=True)
    log.info("stopped")


async def _start(settings: ServiceSettings, process: ServiceProcess) -> _Serving:
    """Migrates, opens the pools, starts the servers and the service's own start; what was
    opened is closed again if this fails or is cancelled."""
    from cxmesh_server.runtime.migrations import migrate

    if settings.postgres_dsn:
        for schema, folder in process.migrations:
            applied = await migrate(settings.postgres_dsn, schema, folder)
            if applied:
                log.info("applied migrations", extra={"schema": schema, "migrations": applied})
    async with contextlib.AsyncExitStack() as opened:
        resources = await _open_resources(settings, process)
        opened.push_async_callback(resources.close)
        auth_settings = AuthSettings()
        verifier = (
            JwtVerifier(auth_settings)
            if auth_settings.jwks_file or auth_settings.jwks_url
            else None
        )
        # Every service registers through the runtime, which wraps its handlers.
        runtime = Runtime(Authenticator(verifier, resources.redis))
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        served = ["", *api.service_names_of(process.name)]
        # Not serving until on_start is done (the servicer starts out SERVING): a readiness
        # probe must not send calls to a process still loading what they need.
        for name in served:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        registrations: list[Registration] = [
            (health_pb2_grpc.add_HealthServicer_to_server, health_servicer),
            *(await process.build(resources) if process.build else []),
            # What enable_server_reflection does for an aio server (it cannot tell the
            # wrapper is one).
            (
                reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                    [*api.all_service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME]
                ),
            ),
        ]
        ready = asyncio.Event()

        async def set_serving(serving: bool) -> None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in served:
                await health_servicer.set(name, status)
            if serving:
                ready.set()

        resources.set_serving = set_serving

        async def listen() -> tuple[list[grpc.aio.Server], int]:
            servers, port = await start_servers(
                host=settings.grpc_host,
                port=settings.grpc_port,
                count=settings.accept_loops,
                # Worker processes share the port; a single process must fail on a taken one.
                shared_with_other_processes=settings.workers > 1,
                runtime=runtime,
                registrations=registrations,
                max_request_bytes=process.max_request_bytes,
            )
            opened.push_async_callback(_stop_at_once, servers)
            return servers, port

        # A lone process listens before it is ready, so that probes are answered
        # NOT_SERVING meanwhile. Workers share the port, and the kernel hands a new
        # connection to any worker listening: one still loading would take a share of the
        # callers (and compliance would deny their calls as "data unavailable") while the
        # others are ready. So a worker joins the port once it is ready.
        joins_when_ready = settings.workers > 1
        if not joins_when_ready:
            servers, port = await listen()
        if process.on_start is not None:
            await process.on_start(resources)
        if not process.reports_readiness:
            await set_serving(True)
        if joins_when_ready:
            await ready.wait()
            servers, port = await listen()
        opened.pop_all()  # started: from here the shutdown closes them, in its order
    # Everything alive now (modules, descriptors, phone metadata, zone data) lives as long
    # as the process: out of the cyclic collector's sight, a full collection no longer
    # walks it (gc.callbacks under load showed 36-50 ms pauses every 10-30 s before).
    # What caches add later is frozen as it comes (`collector`).
    gc.collect()
    gc.freeze()
    long_lived.install()
    log.info("serving", extra={"address": f"{settings.grpc_host}:{port}", "pid": os.getpid()})
    return _Serving(resources, servers, health_servicer)


async def _stop_at_once(servers: Sequence[grpc.aio.Server]) -> None:
    await asyncio.gather(*(server.stop(None) for server in servers))


def _worker_main(process: ServiceProcess) -> None:
    stop_signals.remember()
    stop_signals.with_parent(signal.SIGTERM)  # a supervisor killed -9: drain and stop
    settings = ServiceSettings(metrics_port=0)
    configure_logging(settings.service, settings.log_level, settings.log_repeat_seconds)
    configure_tracing(settings.service, settings.otlp_endpoint)
    uvloop.run(run_server(settings, process))


def serve(process: ServiceProcess) -> None:
    """Entry point of a service process: one server, or N workers on one port. Processes
    run on uvloop (measured: GES creates +20 % against the stdlib loop)."""
    stop_signals.remember()  # if `python -m cxmesh_server` has not already
    settings = ServiceSettings()
    configure_logging(settings.service, settings.log_level, settings.log_repeat_seconds)
    if settings.workers == 1:
        configure_tracing(settings.service, settings.otlp_endpoint)
        if settings.metrics_port:
            serve_metrics(settings.metrics_port)
        uvloop.run(run_server(settings, process))
        return
    # Workers share the gRPC port (SO_REUSEPORT: the kernel spreads connections) and write
    # their metrics to a shared folder that this parent serves summed, and removes at exit
    # if it made it.
    made_metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        made_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="cxmesh-metrics-"
        )
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    try:
        status = WorkerSupervisor(process, settings).run()
    finally:
        if made_metrics_dir is not None:
            shutil.rmtree(made_metrics_dir, ignore_errors=True)
    sys.exit(status)


class WorkerSupervisor:
    """Keeps `settings.workers` worker processes running until a stop signal, which it
    passes on to them.

    A worker that dies unasked (killed for memory, crashed) is replaced at once: the port
    it shared stays open in the others, so nothing outside (a probe, the kubelet) would
    ever notice the lost capacity. Workers that die too often
    (`MAX_DEATHS` within `DEATHS_WINDOW_SECONDS`) stop the whole process with status 1, for
    its supervisor to see and restart. Workers still running `shutdown_grace_seconds` × 2
    + 10 s after the stop are killed, and named in the log."""

    MAX_DEATHS = 5
    DEATHS_WINDOW_SECONDS = 60.0

    def __init__(self, process: ServiceProcess, settings: ServiceSettings) -> None:
        self._process = process
        self._settings = settings
        self._spawn = multiprocessing.get_context("spawn")
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._stop_signal: int | None = None
        self._deaths: list[float] = []
        self._failed = False
        # When workers still running after a stop signal are killed.
        self._kill_deadline: float | None = None

    def run(self) -> int:
        """Supervises until every worker has ended; the process's exit status."""
        for signum in stop_signals.STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        if stop_signals.received():
            return 0  # asked to stop before any worker started
        for _ in range(self._settings.workers):
            self._start_worker()
        while self._workers:
            # At most a second: a signal handled meanwhile does not shorten the wait.
            ended = multiprocessing.connection.wait(
                [worker.sentinel for worker in self._workers], timeout=1.0
            )
            for worker in [w for w in self._workers if w.sentinel in ended]:
                self._ended(worker)
            if self._kill_deadline is not None and time.monotonic() > self._kill_deadline:
                self._kill_stragglers()
        return 1 if self._failed else 0

    def _start_worker(self) -> None:
        worker = self._spawn.Process(target=_worker_main, args=(self._process,))
        worker.start()
        self._workers.append(worker)
        if self._stop_signal is not None:  # the signal came while it was being started
            self._signal(worker, self._stop_signal)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        if self._stop_signal is None:
            grace = self._settings.shutdown_grace_seconds
            self._kill_deadline = time.monotonic() + 2 * grace + 10
        self._stop_signal = signum
        for worker in self._workers:
            self._signal(worker, signum)

    @staticmethod
    def _signal(worker: multiprocessing.process.BaseProcess, signum: int) -> None:
        if worker.pid is not None and worker.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _ended(self, worker: multiprocessing.process.BaseProcess) -> None:
        worker.join()
        self._workers.remove(worker)
        if worker.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
        if self._stop_signal is not None:
            return
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < self.DEATHS_WINDOW_SECONDS]
        self._deaths.append(now)
        if len(self._deaths) >= self.MAX_DEATHS:
            log.error(
                "workers keep exiting; stopping",
                extra={
                    "pid": worker.pid,
                    "exit_code": worker.exitcode,
                    "deaths": len(self._deaths),
                },
            )
            self._failed = True
            self._on_stop_signal(signal.SIGTERM, None)
            return
        log.error(
            "worker exited; starting another",
            extra={"pid": worker.pid, "exit_code": worker.exitcode},
        )
        self._start_worker()

    def _kill_stragglers(self) -> None:
        for worker in self._workers:
            log.error(
                "worker still running after the shutdown grace; killing it",
                extra={"pid": worker.pid},
            )
            self._signal(worker, signal.SIGKILL)
        self._failed = True
        self._kill_deadline = None
