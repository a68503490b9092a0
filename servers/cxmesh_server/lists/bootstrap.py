"""Composition root of the lists process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

from cxmesh.lists.v1 import (
    contact_list_service_pb2_grpc,
    import_service_pb2_grpc,
    suppression_service_pb2_grpc,
)
from cxmesh_edge.config import REST_BODY_LIMIT_BYTES
from cxmesh_server.lists.domain.records import warm_up_worker
from cxmesh_server.lists.drop_folder import DropFolder
from cxmesh_server.lists.import_handlers import ImportHandlers
from cxmesh_server.lists.importer import Importer
from cxmesh_server.lists.imports_store import ImportsStore
from cxmesh_server.lists.list_handlers import ContactListHandlers
from cxmesh_server.lists.store import ListsStore
from cxmesh_server.lists.suppression_handlers import SuppressionHandlers
from cxmesh_server.lists.suppression_store import SuppressionStore
from cxmesh_server.mirrors.suppression import SuppressionMirror
from cxmesh_server.mirrors.tenant_regions import TenantRegions
from cxmesh_server.runtime import stop_signals
from cxmesh_server.runtime.accept_loops import Registration
from cxmesh_server.runtime.mirror_keeper import keep_loaded
from cxmesh_server.runtime.server import (
    Resources,
    ServiceProcess,
    start_background,
    start_periodic,
)

log = logging.getLogger(__name__)

MIRROR_CHECK_SECONDS = 2.0


def _suppression(resources: Resources) -> SuppressionStore:
    return SuppressionStore(
        resources.require_postgres(), SuppressionMirror(resources.require_redis())
    )


def _start_import_worker() -> None:
    # Its rows go to its parent's transaction, which ends with the parent.
    stop_signals.with_parent(signal.SIGKILL)
    warm_up_worker()


async def build(resources: Resources) -> Sequence[Registration]:
    pool = resources.require_postgres()
    settings = resources.settings
    workers = settings.import_workers or os.cpu_count() or 1
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_import_worker,
    )
    lists = ListsStore(pool)
    regions = TenantRegions(resources.require_redis())
    importer = Importer(pool, SuppressionMirror(resources.require_redis()), executor)
    import_handlers = ImportHandlers(lists, ImportsStore(pool), importer, Path(settings.spool_dir))
    if settings.drop_dir is not None:
        start_background(
            DropFolder(Path(settings.drop_dir), import_handlers, Path(settings.spool_dir)).run()
        )
    return [
        (
            contact_list_service_pb2_grpc.add_ContactListServiceServicer_to_server,
            ContactListHandlers(lists, regions),
        ),
        (import_service_pb2_grpc.add_ImportServiceServicer_to_server, import_handlers),
        (
            suppression_service_pb2_grpc.add_SuppressionServiceServicer_to_server,
            SuppressionHandlers(_suppression(resources), regions),
        ),
    ]


async def rebuild_all_mirrors(store: SuppressionStore) -> None:
    dataset = await store.mirror.begin_load()
    tenants = await store.tenants_with_lists()
    for tenant in tenants:
        await store.rebuild_mirror(tenant)
    await store.mirror.mark_loaded(dataset)
    log.info("suppression mirror loaded", extra={"tenants": len(tenants)})


async def on_start(resources: Resources) -> None:
    store = _suppression(resources)
    await rebuild_all_mirrors(store)
    start_background(
        keep_loaded(
            "suppression",
            store.mirror.is_loaded,
            lambda: rebuild_all_mirrors(store),
            MIRROR_CHECK_SECONDS,
            repair=store.repair_abandoned,
        )
    )
    imports = ImportsStore(resources.require_postgres())
    every = resources.settings.import_sweep_seconds
    # Imports whose process died (no one holds their advisory lock) are marked failed.
    start_periodic(
        "interrupted imports failed",
        every,
        lambda: imports.fail_interrupted(timedelta(seconds=every)),
        level=logging.WARNING,
    )


PROCESS = ServiceProcess(
    name="lists",
    build=build,
    migrations=[("lists", Path(__file__).parent / "migrations")],
    on_start=on_start,
    # A REST upload arrives as one message (the edge's REST body limit, plus the envelope).
    max_request_bytes=REST_BODY_LIMIT_BYTES + 1024 * 1024,
)
