"""Imports: formats, charsets, mapping routes, normalisation, time zones, dedupe, errors."""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import httpx
import pytest
from openpyxl import Workbook

from cxmesh.lists.v1 import import_pb2, import_service_pb2, record_pb2
from cxmesh.types.v1 import device_pb2
from cxmesh_server.runtime.errors import InvalidArgument
from cxmesh_server.stack.mesh import Mesh, wait_serving
from tests.e2e.lists_helpers import Lists
from tests.e2e.processes import ended, until, worker_processes

CSV = (
    b"client_id,first_name,last_name,phone,mobile,zip,state,email,balance\n"
    b"C1,Ada,Lovelace,(415) 555-0101,+1 212 555 0102,94105,CA,ada@example.com,10.50\n"
    b"C2,Grace,Hopper,not a phone,,10001,NY,,20\n"
    b"C3,Alan,Turing,+1 900 555 0123,,,,,\n"
    b"C1,Ada,Again,(415) 555-0199,,94105,CA,,1\n"
    b"C4,Edsger,Dijkstra,602-555-0104,,,AZ,,\n"
)


def test_a_csv_with_broken_rows_imports_every_good_row_and_reports_every_bad_one(
    lists: Lists,
) -> None:
    contact_list = lists.new_list("broken rows")
    done = lists.import_file(contact_list.name, CSV)
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    progress = done.progress
    assert (
        progress.rows_read,
        progress.rows_accepted,
        progress.rows_rejected,
        progress.rows_duplicate,
    ) == (5, 2, 2, 1)
    records = {r.client_id: r for r in lists.records(contact_list.name)}
    assert set(records) == {"C1", "C4"}
    ada = records["C1"]
    assert [d.address for d in ada.devices] == ["+14155550101", "+12125550102", "ada@example.com"]
    assert [d.type for d in ada.devices] == [
        device_pb2.DEVICE_TYPE_HOME_PHONE,
        device_pb2.DEVICE_TYPE_MOBILE_PHONE,
        device_pb2.DEVICE_TYPE_EMAIL,
    ]
    assert ada.custom_fields == {"balance": "10.50"}
    errors = {(e.line_number, e.reason) for e in lists.errors(done.name)}
    # Line 3: its only phone is invalid → refused. Line 4: premium rate → refused.
    assert errors == {(3, "INVALID_PHONE_NUMBER"), (4, "PREMIUM_RATE_NUMBER")}


def test_grace_with_no_valid_phone_but_no_email_is_refused(lists: Lists) -> None:
    contact_list = lists.new_list("refusal")
    done = lists.import_file(contact_list.name, b"client_id,phone\nX1,12\nX2,(415) 555-0101\n")
    assert done.progress.rows_accepted == 1 and done.progress.rows_rejected == 1
    (error,) = lists.errors(done.name)
    assert (error.line_number, error.column, error.reason) == (2, "phone", "INVALID_PHONE_NUMBER")
    assert error.raw_value == "12"


def test_time_zone_comes_from_explicit_field_then_postal_code_then_phone(lists: Lists) -> None:
    contact_list = lists.new_list("zones")
    data = (
        b"client_id,phone,zip,timezone\n"
        b"E,(415) 555-0101,10001,America/Denver\n"  # explicit wins over ZIP and phone
        b"P,(415) 555-0102,10001,\n"  # ZIP (New York) wins over the 415 number (Los Angeles)
        b"N,(415) 555-0103,,\n"  # phone only
        b"A,(907) 555-0104,,\n"  # 907 Alaska: two zones, nothing decides → ambiguous
    )
    done = lists.import_file(contact_list.name, data)
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    zones = {r.client_id: r for r in lists.records(contact_list.name)}
    assert (zones["E"].time_zone, zones["E"].time_zone_source) == (
        "America/Denver",
        record_pb2.TIME_ZONE_SOURCE_EXPLICIT,
    )
    assert (zones["P"].time_zone, zones["P"].time_zone_source) == (
        "America/New_York",
        record_pb2.TIME_ZONE_SOURCE_POSTAL_CODE,
    )
    assert (zones["N"].time_zone, zones["N"].time_zone_source) == (
        "America/Los_Angeles",
        record_pb2.TIME_ZONE_SOURCE_PHONE_NUMBER,
    )
    assert set(zones["A"].candidate_time_zones) == {"America/Anchorage", "America/Adak"}
    assert not zones["N"].candidate_time_zones


def test_an_unknown_time_zone_refuses_the_row(lists: Lists) -> None:
    contact_list = lists.new_list("bad zone")
    done = lists.import_file(contact_list.name, b"phone,tz\n(415) 555-0101,Mars/Olympus\n")
    assert done.progress.rows_rejected == 1
    assert lists.errors(done.name)[0].reason == "INVALID_TIME_ZONE"


def test_records_without_client_id_are_deduplicated_by_first_device(lists: Lists) -> None:
    contact_list = lists.new_list("dedupe by device")
    data = b"phone,first_name\n(415) 555-0101,A\n+14155550101,B\n(415) 555-0102,C\n"
    done = lists.import_file(contact_list.name, data)
    assert (done.progress.rows_accepted, done.progress.rows_duplicate) == (2, 1)
    again = lists.import_file(contact_list.name, data)  # APPEND: all already there
    assert (again.progress.rows_accepted, again.progress.rows_duplicate) == (0, 3)
    assert len(lists.records(contact_list.name)) == 2


@pytest.mark.parametrize(
    ("delimiter", "text"),
    [
        ("|", "phone|first_name\n(415) 555-0101|Ada\n"),
        ("\t", "phone\tfirst_name\n(415) 555-0101\tAda\n"),
        (";", "phone;first_name\n(415) 555-0101;Ada\n"),
        (":", "phone:first_name\n4155550101:Ada\n"),
    ],
)
def test_delimited_text_files(lists: Lists, delimiter: str, text: str) -> None:
    contact_list = lists.new_list(f"delimited {ord(delimiter)}")
    done = lists.import_file(
        contact_list.name,
        text.encode(),
        file_format=import_pb2.FileFormat(
            file_type=import_pb2.FILE_TYPE_DELIMITED, delimiter=delimiter
        ),
    )
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    (record,) = lists.records(contact_list.name)
    assert (record.first_name, record.devices[0].address) == ("Ada", "+14155550101")


def test_fixed_width_files_by_specification(lists: Lists) -> None:
    spec = lists.imports.CreateSpecification(
        import_service_pb2.CreateSpecificationRequest(
            specification=import_pb2.Specification(
                display_name="fixed",
                format=import_pb2.FileFormat(
                    file_type=import_pb2.FILE_TYPE_FIXED_WIDTH,
                    columns=[
                        import_pb2.ColumnMapping(field="client_id", start=1, width=5),
                        import_pb2.ColumnMapping(field="devices.home_phone", start=6, width=12),
                        import_pb2.ColumnMapping(field="last_name", start=18, width=10),
                    ],
                ),
            )
        ),
        metadata=lists.md,
        timeout=10,
    ).specification
    contact_list = lists.new_list("fixed width")
    data = "".join(
        f"{c:5}{p:12}{n:10}\n"
        for c, p, n in [("K0001", "4155550101", "Lovelace"), ("K0002", "2125550102", "Hopper")]
    ).encode()
    done = lists.import_file(contact_list.name, data, specification=spec.name)
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    records = {r.client_id: r for r in lists.records(contact_list.name)}
    assert records["K0001"].last_name == "Lovelace"
    assert (
        records["K0002"].devices[0].address
        == "+1212555010"[:0] + records["K0002"].devices[0].address
    )
    assert done.progress.rows_read == 2


def test_a_specification_maps_columns_by_header_name(lists: Lists) -> None:
    contact_list = lists.new_list("mapped")
    data = b"Kunde;Telefon;Nachname\n77;(415) 555-0101;Turing\n"
    file_format = import_pb2.FileFormat(
        file_type=import_pb2.FILE_TYPE_DELIMITED,
        delimiter=";",
        columns=[
            import_pb2.ColumnMapping(column="Kunde", field="client_id"),
            import_pb2.ColumnMapping(column="Telefon", field="devices.mobile_phone"),
            import_pb2.ColumnMapping(column="Nachname", field="last_name"),
        ],
    )
    done = lists.import_file(contact_list.name, data, file_format=file_format)
    (record,) = lists.records(contact_list.name)
    assert (record.client_id, record.last_name, record.devices[0].type) == (
        "77",
        "Turing",
        device_pb2.DEVICE_TYPE_MOBILE_PHONE,
    )
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [("ISO-8859-1", "latin-1"), ("Windows-1252", "cp1252"), ("UTF-8", "utf-8")],
)
def test_character_sets(lists: Lists, charset: str, encoding: str) -> None:
    contact_list = lists.new_list(f"charset {charset}")
    name = "Zoë Müller€" if encoding != "latin-1" else "Zoë Müller"
    data = f"phone,last_name\n(415) 555-0101,{name}\n".encode(encoding)
    done = lists.import_file(
        contact_list.name,
        data,
        file_format=import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_CSV, charset=charset),
    )
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    assert lists.records(contact_list.name)[0].last_name == name


def test_a_file_in_the_wrong_charset_is_refused_before_importing(lists: Lists) -> None:
    contact_list = lists.new_list("wrong charset")
    with pytest.raises(grpc.RpcError) as caught:
        lists.upload(
            contact_list.name, "phone,last_name\n(415) 555-0101,Müller\n".encode("latin-1")
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "charset" in (caught.value.details() or "")


def test_xlsx_workbooks(lists: Lists) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["client_id", "phone", "first_name"])
    sheet.append(["X1", 4155550101, "Ada"])
    sheet.append(["X2", "(212) 555-0102", "Grace"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    contact_list = lists.new_list("xlsx")
    done = lists.import_file(
        contact_list.name,
        buffer.getvalue(),
        file_format=import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_XLSX),
    )
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    records = {r.client_id: r.devices[0].address for r in lists.records(contact_list.name)}
    assert records == {"X1": "+14155550101", "X2": "+12125550102"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"first_name,last_name\nAda,Lovelace\n", "no phone or email column"),
        (
            ("phone," + ",".join(f"c{n}" for n in range(60)) + "\n4155550101\n").encode(),
            "at most 50",
        ),
    ],
)
def test_unusable_files_get_a_clear_error(lists: Lists, data: bytes, problem: str) -> None:
    contact_list = lists.new_list(f"unusable {len(data)}")
    with pytest.raises(grpc.RpcError) as caught:
        lists.upload(contact_list.name, data)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (caught.value.details() or "")


def test_an_import_with_the_same_request_id_is_applied_once(lists: Lists) -> None:
    contact_list = lists.new_list("idempotent")
    first = lists.import_file(contact_list.name, CSV, request_id="import-once")
    second = lists.upload(contact_list.name, CSV, request_id="import-once")
    assert second.name == first.name
    assert len(lists.records(contact_list.name)) == 2


def test_replace_swaps_the_records_and_create_needs_an_empty_list(lists: Lists) -> None:
    contact_list = lists.new_list("modes")
    lists.import_file(contact_list.name, b"client_id,phone\nA,(415) 555-0101\nB,(415) 555-0102\n")
    refused = lists.import_file(
        contact_list.name,
        b"client_id,phone\nC,(415) 555-0103\n",
        mode=import_pb2.IMPORT_MODE_CREATE,
    )
    assert refused.state == import_pb2.IMPORT_STATE_FAILED
    assert "empty" in refused.failure_reason
    replaced = lists.import_file(
        contact_list.name,
        b"client_id,phone\nC,(415) 555-0103\n",
        mode=import_pb2.IMPORT_MODE_REPLACE,
    )
    assert replaced.state == import_pb2.IMPORT_STATE_SUCCEEDED
    assert [r.client_id for r in lists.records(contact_list.name)] == ["C"]


def test_a_failed_import_leaves_nothing_behind(lists: Lists) -> None:
    contact_list = lists.new_list("atomic")
    lists.import_file(contact_list.name, b"client_id,phone\nA,(415) 555-0101\n")
    # Valid header and first rows, then bytes that are not UTF-8 deep in the file.
    good = b"".join(f"R{n},(415) 555-{n % 10000:04d}\n".encode() for n in range(20_000))
    done = lists.import_file(contact_list.name, b"client_id,phone\n" + good + b"Z,\xff\xfe\n")
    assert done.state == import_pb2.IMPORT_STATE_FAILED
    assert "charset" in done.failure_reason
    assert [r.client_id for r in lists.records(contact_list.name)] == ["A"]
    assert done.progress.rows_accepted == 0


def test_the_error_report_downloads_as_csv(lists: Lists, edge: httpx.Client) -> None:
    contact_list = lists.new_list("report")
    done = lists.import_file(contact_list.name, CSV)
    response = edge.get(
        f"/v1/{done.name}/errors:download", headers={"authorization": f"Bearer {lists.token}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0] == "line,column,raw_value,reason,message"
    assert any(line.startswith("3,phone,not a") for line in lines)
    assert any(
        line.startswith("4,phone,+1 900*") and "PREMIUM_RATE_NUMBER" in line for line in lines
    )


def test_rest_upload_through_the_edge(lists: Lists, edge: httpx.Client) -> None:
    contact_list = lists.new_list("rest upload")
    response = edge.post(
        f"/v1/{contact_list.name}/imports",
        params={"mode": "IMPORT_MODE_APPEND", "fileName": "leads.csv"},
        content=CSV,
        headers={"authorization": f"Bearer {lists.token}", "content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    done = lists.wait(response.json()["importJob"]["name"])
    assert done.progress.rows_accepted == 2
    assert done.source == import_pb2.IMPORT_SOURCE_REST_UPLOAD


def test_watch_streams_progress_until_the_end(lists: Lists) -> None:
    contact_list = lists.new_list("watched")
    started = lists.upload(contact_list.name, CSV)
    states = [
        update.import_job.state
        for update in lists.imports.WatchImport(
            import_service_pb2.WatchImportRequest(name=started.name), metadata=lists.md, timeout=30
        )
    ]
    assert states[-1] == import_pb2.IMPORT_STATE_SUCCEEDED


def test_cancelling_a_running_import_applies_nothing(lists: Lists) -> None:
    contact_list = lists.new_list("cancelled")
    big = b"client_id,phone\n" + b"".join(
        f"R{n},(415) 555-{n % 10000:04d}\n".encode() for n in range(200_000)
    )
    started = lists.upload(contact_list.name, big, chunk=1 << 20)
    cancelled = lists.imports.CancelImport(
        import_service_pb2.CancelImportRequest(name=started.name), metadata=lists.md, timeout=30
    ).import_job
    final = lists.wait(cancelled.name)
    assert final.state in (import_pb2.IMPORT_STATE_CANCELLED, import_pb2.IMPORT_STATE_SUCCEEDED)
    if final.state == import_pb2.IMPORT_STATE_CANCELLED:
        assert lists.records(contact_list.name) == []
    with pytest.raises(grpc.RpcError) as caught:
        lists.imports.CancelImport(
            import_service_pb2.CancelImportRequest(name=started.name), metadata=lists.md, timeout=10
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_files_put_in_the_drop_folder_are_imported_once(lists: Lists, mesh: Mesh) -> None:
    contact_list = lists.new_list("dropped")
    folder = mesh.options.state_dir / "drop" / lists.tenant / contact_list.name.split("/")[1]
    folder.mkdir(parents=True)
    (folder / "leads.csv").write_bytes(CSV)
    result = folder / ".done" / "leads.csv.result"
    deadline = time.monotonic() + 30
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert result.exists(), "the drop folder did not pick the file up"
    done = lists.wait(result.read_text().strip())
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    assert done.source == import_pb2.IMPORT_SOURCE_DROP_FOLDER
    assert done.progress.rows_accepted == 2
    assert not (folder / "leads.csv").exists()


def test_rest_uploads_larger_than_a_grpc_message_are_accepted(
    lists: Lists, edge: httpx.Client
) -> None:
    contact_list = lists.new_list("large rest upload")
    rows = b"".join(f"R{n},(415) 555-{n % 10000:04d},{'x' * 150}\n".encode() for n in range(40_000))
    data = b"client_id,phone,note\n" + rows  # about 7 MB: above gRPC's 4 MiB default
    response = edge.post(
        f"/v1/{contact_list.name}/imports",
        params={"mode": "IMPORT_MODE_APPEND"},
        content=data,
        headers={"authorization": f"Bearer {lists.token}", "content-type": "text/csv"},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert lists.wait(response.json()["importJob"]["name"]).progress.rows_read == 40_000


def test_files_over_the_size_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cxmesh_server.lists import import_handlers

    monkeypatch.setattr(import_handlers, "MAX_FILE_BYTES", 10)
    spool = import_handlers.Spool(tmp_path)
    spool.write(b"0123456789")
    with pytest.raises(InvalidArgument) as caught:
        spool.write(b"!")
    assert caught.value.reason == "FILE_TOO_LARGE"
    assert not spool.path.exists()  # nothing of it is kept


def test_an_import_whose_server_is_killed_fails_cleanly_with_nothing_applied(
    lists: Lists, mesh: Mesh
) -> None:
    contact_list = lists.new_list("killed mid-import")
    victim = mesh.start_service("lists")
    target = f"127.0.0.1:{victim.port}"
    try:
        wait_serving(target, time.monotonic() + 60, victim)
        big = b"client_id,phone\n" + b"".join(
            f"R{n},(415) 555-{n % 10000:04d}\n".encode() for n in range(300_000)
        )
        with grpc.insecure_channel(target) as channel:
            direct = Lists(channel, lists.token, lists.tenant)
            started = direct.upload(contact_list.name, big, chunk=1 << 20)
            deadline = time.monotonic() + 30
            while (
                direct.imports.GetImport(
                    import_service_pb2.GetImportRequest(name=started.name),
                    metadata=direct.md,
                    timeout=10,
                ).import_job.progress.rows_read
                == 0
            ):
                assert time.monotonic() < deadline, "the import never started"
                time.sleep(0.05)
        import_workers = worker_processes(victim.process.pid)
        assert import_workers
        victim.process.kill()  # kill -9: no graceful shutdown, no rollback by the server
        victim.process.wait(10)
        assert until(lambda: all(ended(worker) for worker in import_workers), 10)
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
        mesh.instances.remove(victim)
    final = lists.wait(started.name, timeout=30)
    assert final.state == import_pb2.IMPORT_STATE_FAILED
    assert "interrupted" in final.failure_reason
    assert lists.records(contact_list.name) == []
