"""Group `lists`: a 1,000,000-row import and a 1,000,000-entry DNC load, end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import redis

from bench.baselines import GROUP as BASELINE
from bench.data import contacts_csv, dnc_file
from bench.environment import Environment
from bench.harness import Figure, Run
from cxmesh.iam.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from cxmesh.lists.v1 import (
    contact_list_pb2,
    contact_list_service_pb2,
    contact_list_service_pb2_grpc,
    import_pb2,
    import_service_pb2,
    import_service_pb2_grpc,
    suppression_pb2,
    suppression_service_pb2,
    suppression_service_pb2_grpc,
)
from cxmesh_server.mirrors.suppression import list_key

GROUP = "lists"
TENANT = "bench-lists"
CHUNK = 1 << 20


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(")")[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _file_messages(first: object, path: Path, chunk_field: type) -> Iterator[object]:
    yield first
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            yield chunk_field(chunk=data)


def measure(run: Run, env: Environment) -> None:
    admin = (("authorization", f"Bearer {env.token(TENANT)}"),)
    operator = (
        ("authorization", f"Bearer {env.key.mint(tenant=TENANT, roles=['platform-admin'])}"),
    )
    contacts, numbers = contacts_csv(), dnc_file()
    lists_pid = next(i.process.pid for i in env.mesh.instances if i.name == "lists")
    with grpc.insecure_channel(
        env.mesh.edge_target, options=[("grpc.max_send_message_length", 8 << 20)]
    ) as channel:
        tenant_service_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenant_service_pb2.CreateTenantRequest(
                tenant_id=TENANT, tenant=tenant_pb2.Tenant(display_name="bench")
            ),
            metadata=operator,
        )
        suppression = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        dnc = suppression.CreateSuppressionList(
            suppression_service_pb2.CreateSuppressionListRequest(
                suppression_list=suppression_pb2.SuppressionList(display_name="national dnc")
            ),
            metadata=admin,
        ).suppression_list
        started = time.perf_counter()
        loaded = suppression.ImportDncFile(
            _file_messages(  # type: ignore[arg-type]
                suppression_service_pb2.ImportDncFileRequest(
                    options=suppression_service_pb2.ImportDncFileOptions(
                        parent=dnc.name,
                        provider=suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC,
                        kind=suppression_service_pb2.DNC_FILE_KIND_FULL,
                    )
                ),
                numbers,
                suppression_service_pb2.ImportDncFileRequest,
            ),
            metadata=admin,
            timeout=600,
        ).result
        dnc_seconds = time.perf_counter() - started
        mirrored = redis.Redis(port=env.redis.port).hlen(
            list_key(TENANT, dnc.name.split("/")[1], "phone")
        )
        assert mirrored == loaded.entries_added == 1_000_000, (mirrored, loaded)
        how = "ImportDncFile (FULL) of 1,000,000 numbers over gRPC until all are in Postgres and the Redis mirror"
        run.record(Figure(GROUP, "dnc_1m_seconds", dnc_seconds, "s", note=how))
        run.record(
            Figure(
                GROUP,
                "dnc_1m_entries_per_s",
                1_000_000 / dnc_seconds,
                "entries/s",
                f"{BASELINE}.redis_pipelined_set_ops",
                note=how,
            )
        )

        contact_list = (
            contact_list_service_pb2_grpc.ContactListServiceStub(channel)
            .CreateContactList(
                contact_list_service_pb2.CreateContactListRequest(
                    contact_list=contact_list_pb2.ContactList(
                        display_name="one million", custom_field_names=["balance"]
                    )
                ),
                metadata=admin,
            )
            .contact_list
        )
        imports = import_service_pb2_grpc.ImportServiceStub(channel)
        started = time.perf_counter()
        job = imports.UploadImport(
            _file_messages(  # type: ignore[arg-type]
                import_service_pb2.UploadImportRequest(
                    start=import_service_pb2.UploadImportStart(
                        parent=contact_list.name,
                        import_job=import_pb2.Import(mode=import_pb2.IMPORT_MODE_CREATE),
                    )
                ),
                contacts,
                import_service_pb2.UploadImportRequest,
            ),
            metadata=admin,
            timeout=600,
        ).import_job
        for update in imports.WatchImport(
            import_service_pb2.WatchImportRequest(name=job.name), metadata=admin, timeout=900
        ):
            job = update.import_job
        seconds = time.perf_counter() - started
    if job.state != import_pb2.IMPORT_STATE_SUCCEEDED:
        raise RuntimeError(f"the benchmark import failed: {job.failure_reason}")
    progress = job.progress
    rows = progress.rows_read
    how = (
        f"UploadImport of a {rows:,}-row CSV (2 phones/row, 5 % bad, 10 % duplicate) into a new list with "
        f"1,000,000 suppression entries loaded; upload start → SUCCEEDED; accepted {progress.rows_accepted:,}, "
        f"rejected {progress.rows_rejected:,}, duplicates {progress.rows_duplicate:,}, suppressed {progress.rows_suppressed:,}"
    )
    run.record(
        Figure(
            GROUP, "import_1m_seconds", seconds, "s", f"{BASELINE}.postgres_copy_seconds", note=how
        )
    )
    run.record(
        Figure(
            GROUP,
            "import_1m_rows_per_s",
            rows / seconds,
            "rows/s",
            f"{BASELINE}.postgres_copy_rows_per_s",
            note=how,
        )
    )
    run.record(
        Figure(
            GROUP,
            "import_peak_rss_main_mb",
            _peak_rss_mb(lists_pid),
            "MB",
            note="VmHWM of the lists process",
        )
    )
    workers = [_peak_rss_mb(pid) for pid in _children(lists_pid)]
    run.record(
        Figure(
            GROUP,
            "import_peak_rss_workers_mb",
            sum(workers),
            "MB",
            note=f"VmHWM summed over {len(workers)} import worker processes",
        )
    )
