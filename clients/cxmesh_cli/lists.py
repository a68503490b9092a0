"""`cxmesh lists …` and `cxmesh suppression …`: imports with a live progress bar."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from cxmesh_cli.connection import Connection, connect

CHUNK = 1 << 20
console = Console()
lists_app = typer.Typer(help="Contact lists.", no_args_is_help=True)
suppression_app = typer.Typer(help="Suppression (do-not-contact) lists.", no_args_is_help=True)

EdgeOption = Annotated[
    str | None, typer.Option("--edge", envvar="CXMESH_EDGE_URL", help="edge URL")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="CXMESH_TOKEN", help="bearer token")
]
StateOption = Annotated[
    Path, typer.Option("--state-dir", envvar="CXMESH_STATE_DIR", help="make run's state")
]
FORMATS = {
    ".csv": import_pb2.FILE_TYPE_CSV,
    ".xlsx": import_pb2.FILE_TYPE_XLSX,
    ".txt": import_pb2.FILE_TYPE_DELIMITED,
}


def _find_or_create_list(
    connection: Connection, channel: grpc.Channel, name: str
) -> contact_list_pb2.ContactList:
    stub = contact_list_service_pb2_grpc.ContactListServiceStub(channel)
    if name.startswith("contactLists/"):
        return stub.GetContactList(
            contact_list_service_pb2.GetContactListRequest(name=name), metadata=connection.metadata
        ).contact_list
    token = ""
    while True:
        page = stub.ListContactLists(
            contact_list_service_pb2.ListContactListsRequest(page_size=1000, page_token=token),
            metadata=connection.metadata,
        )
        for contact_list in page.contact_lists:
            if contact_list.display_name == name:
                return contact_list
        token = page.next_page_token
        if not token:
            break
    return stub.CreateContactList(
        contact_list_service_pb2.CreateContactListRequest(
            contact_list=contact_list_pb2.ContactList(display_name=name)
        ),
        metadata=connection.metadata,
    ).contact_list


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            yield data


@lists_app.command("import")
def import_file(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="CSV, TXT (|-delimited) or XLSX file"),
    ],
    list_name: Annotated[
        str,
        typer.Option(
            "--list", help="the list's display name (created if missing) or resource name"
        ),
    ],
    mode: Annotated[str, typer.Option(help="APPEND, CREATE or REPLACE")] = "APPEND",
    charset: Annotated[str, typer.Option(help="UTF-8, ISO-8859-1 or Windows-1252")] = "UTF-8",
    delimiter: Annotated[str, typer.Option(help="for .txt files")] = "|",
    specification: Annotated[
        str, typer.Option(help="a stored specification, specifications/{id}")
    ] = "",
    edge: EdgeOption = None,
    token: TokenOption = None,
    state_dir: StateOption = Path(".cxmesh"),
) -> None:
    """Imports a file into a contact list, with live progress and a summary."""
    connection = connect(edge, token, state_dir)
    job = import_pb2.Import(
        mode=import_pb2.ImportMode.Value(f"IMPORT_MODE_{mode.upper()}"), file_name=file.name
    )
    if specification:
        job.specification = specification
    else:
        file_type = FORMATS.get(file.suffix.lower(), import_pb2.FILE_TYPE_CSV)
        job.inline_format.CopyFrom(
            import_pb2.FileFormat(
                file_type=file_type,
                charset=charset,
                delimiter=delimiter if file_type == import_pb2.FILE_TYPE_DELIMITED else "",
            )
        )
    with connection.channel() as channel:
        contact_list = _find_or_create_list(connection, channel, list_name)
        imports = import_service_pb2_grpc.ImportServiceStub(channel)

        def messages() -> Iterator[import_service_pb2.UploadImportRequest]:
            yield import_service_pb2.UploadImportRequest(
                start=import_service_pb2.UploadImportStart(parent=contact_list.name, import_job=job)
            )
            for data in _chunks(file):
                yield import_service_pb2.UploadImportRequest(chunk=data)

        started = time.monotonic()
        try:
            current = imports.UploadImport(messages(), metadata=connection.metadata).import_job
        except grpc.RpcError as error:
            console.print(f"[red]refused:[/red] {error.details()}")
            raise typer.Exit(2) from error
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(
                "{task.fields[rate]:>8,.0f} rows/s  accepted {task.fields[accepted]:,}  rejected {task.fields[rejected]:,}"
            ),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(file.name, total=None, rate=0.0, accepted=0, rejected=0)
            for update in imports.WatchImport(
                import_service_pb2.WatchImportRequest(name=current.name),
                metadata=connection.metadata,
            ):
                current = update.import_job
                counters = current.progress
                progress.update(
                    task,
                    completed=counters.rows_read,
                    rate=counters.rows_read / max(time.monotonic() - started, 1e-6),
                    accepted=counters.rows_accepted,
                    rejected=counters.rows_rejected,
                )
    _summary(current, time.monotonic() - started)
    if current.state != import_pb2.IMPORT_STATE_SUCCEEDED:
        raise typer.Exit(1)


def _summary(job: import_pb2.Import, seconds: float) -> None:
    table = Table(
        title=f"{job.name} — {import_pb2.ImportState.Name(job.state).removeprefix('IMPORT_STATE_')}"
    )
    table.add_column("rows read", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("duplicates", justify="right")
    table.add_column("suppressed", justify="right")
    table.add_column("seconds", justify="right")
    p = job.progress
    table.add_row(
        *(
            f"{v:,}"
            for v in (
                p.rows_read,
                p.rows_accepted,
                p.rows_rejected,
                p.rows_duplicate,
                p.rows_suppressed,
            )
        ),
        f"{seconds:.1f}",
    )
    console.print(table)
    if job.failure_reason:
        console.print(f"[red]{job.failure_reason}[/red]")
    if p.rows_rejected:
        console.print(f"error report: GET /v1/{job.name}/errors:download")


@suppression_app.command("import")
def import_suppression(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="one target per line")],
    list_name: Annotated[
        str, typer.Option("--list", help="the suppression list's display name (created if missing)")
    ],
    target: Annotated[str, typer.Option(help="phone, email or client")] = "phone",
    dnc: Annotated[
        str, typer.Option(help="a US National DNC file: full, additions or deletions")
    ] = "",
    edge: EdgeOption = None,
    token: TokenOption = None,
    state_dir: StateOption = Path(".cxmesh"),
) -> None:
    """Loads entries (or a national DNC file) into a suppression list."""
    connection = connect(edge, token, state_dir)
    with connection.channel() as channel:
        stub = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        existing = [
            s
            for s in stub.ListSuppressionLists(
                suppression_service_pb2.ListSuppressionListsRequest(page_size=1000),
                metadata=connection.metadata,
            ).suppression_lists
            if s.display_name == list_name or s.name == list_name
        ]
        suppression_list = (
            existing[0]
            if existing
            else stub.CreateSuppressionList(
                suppression_service_pb2.CreateSuppressionListRequest(
                    suppression_list=suppression_pb2.SuppressionList(display_name=list_name)
                ),
                metadata=connection.metadata,
            ).suppression_list
        )
        started = time.monotonic()
        with console.status(f"loading {file.name} into {suppression_list.display_name}…"):
            if dnc:
                options = suppression_service_pb2.ImportDncFileOptions(
                    parent=suppression_list.name,
                    provider=suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC,
                    kind=suppression_service_pb2.DncFileKind.Value(f"DNC_FILE_KIND_{dnc.upper()}"),
                )
                dnc_messages = iter(
                    [suppression_service_pb2.ImportDncFileRequest(options=options)]
                    + [suppression_service_pb2.ImportDncFileRequest(chunk=c) for c in _chunks(file)]
                )
                result = stub.ImportDncFile(dnc_messages, metadata=connection.metadata).result
            else:
                entry_options = suppression_service_pb2.ImportSuppressionEntriesOptions(
                    parent=suppression_list.name,
                    target_type=suppression_service_pb2.SuppressionTargetType.Value(
                        {
                            "phone": "SUPPRESSION_TARGET_TYPE_PHONE_NUMBER",
                            "email": "SUPPRESSION_TARGET_TYPE_EMAIL",
                            "client": "SUPPRESSION_TARGET_TYPE_CLIENT_ID",
                        }[target]
                    ),
                )
                entry_messages = iter(
                    [suppression_service_pb2.ImportSuppressionEntriesRequest(options=entry_options)]
                    + [
                        suppression_service_pb2.ImportSuppressionEntriesRequest(chunk=c)
                        for c in _chunks(file)
                    ]
                )
                result = stub.ImportSuppressionEntries(entry_messages, metadata=connection.metadata)
    console.print(
        f"{suppression_list.name}: read {result.lines_read:,} lines, added {result.entries_added:,}, "
        f"removed {result.entries_removed:,}, rejected {result.lines_rejected:,} in {time.monotonic() - started:.1f} s"
    )
    for line in result.errors[:10]:
        console.print(f"  [yellow]{line}[/yellow]")
