"""Contact lists: CRUD, records, filters, export and the List Builder."""

from __future__ import annotations

import csv
import io

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from cxmesh.lists.v1 import (
    contact_list_pb2,
    contact_list_service_pb2,
    contact_list_service_pb2_grpc,
    record_pb2,
)
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh
from tests.e2e.lists_helpers import Lists

PEOPLE = (
    b"client_id,first_name,phone,state,zip,segment\n"
    b"A,Ada,(415) 555-0101,CA,94105,gold\n"
    b"B,Bob,(212) 555-0102,NY,10001,silver\n"
    b"C,Cy,(212) 555-0103,NY,10001,gold\n"
    b"D,Di,(602) 555-0104,AZ,85001,bronze\n"
)


def test_create_get_rename_list_and_delete(lists: Lists) -> None:
    created = lists.new_list(
        "Spring leads", description="from the fair", custom_field_names=["segment"]
    )
    fetched = lists.contact_lists.GetContactList(
        contact_list_service_pb2.GetContactListRequest(name=created.name),
        metadata=lists.md,
        timeout=10,
    ).contact_list
    assert (fetched.display_name, fetched.description, list(fetched.custom_field_names)) == (
        "Spring leads",
        "from the fair",
        ["segment"],
    )
    renamed = lists.contact_lists.UpdateContactList(
        contact_list_service_pb2.UpdateContactListRequest(
            contact_list=contact_list_pb2.ContactList(
                name=created.name, display_name="Autumn leads", etag=fetched.etag
            ),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=lists.md,
        timeout=10,
    ).contact_list
    assert renamed.display_name == "Autumn leads" and renamed.etag != fetched.etag
    with pytest.raises(grpc.RpcError) as stale:
        lists.contact_lists.DeleteContactList(
            contact_list_service_pb2.DeleteContactListRequest(name=created.name, etag=fetched.etag),
            metadata=lists.md,
            timeout=10,
        )
    assert stale.value.code() is grpc.StatusCode.ABORTED
    lists.import_file(created.name, PEOPLE)
    lists.contact_lists.DeleteContactList(
        contact_list_service_pb2.DeleteContactListRequest(name=created.name),
        metadata=lists.md,
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as gone:
        lists.contact_lists.GetContactList(
            contact_list_service_pb2.GetContactListRequest(name=created.name),
            metadata=lists.md,
            timeout=10,
        )
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


def test_display_names_are_unique_within_a_tenant(lists: Lists) -> None:
    lists.new_list("unique")
    with pytest.raises(grpc.RpcError) as caught:
        lists.new_list("unique")
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_list_of_lists_pages_in_display_name_order(lists: Lists) -> None:
    for name in ["c", "a", "b"]:
        lists.new_list(name)
    names, token = [], ""
    while True:
        page = lists.contact_lists.ListContactLists(
            contact_list_service_pb2.ListContactListsRequest(page_size=2, page_token=token),
            metadata=lists.md,
            timeout=10,
        )
        names += [c.display_name for c in page.contact_lists]
        token = page.next_page_token
        if not token:
            break
    assert names == ["a", "b", "c"]


def test_records_filter_by_state_status_and_custom_field(lists: Lists) -> None:
    contact_list = lists.new_list("filtered")
    lists.import_file(contact_list.name, PEOPLE)
    assert {r.client_id for r in lists.records(contact_list.name, state_provinces=["NY"])} == {
        "B",
        "C",
    }
    gold = contact_list_service_pb2.CustomFieldCondition(field="segment", values=["gold"])
    assert {r.client_id for r in lists.records(contact_list.name, custom_fields=[gold])} == {
        "A",
        "C",
    }
    assert {
        r.client_id for r in lists.records(contact_list.name, time_zones=["America/Phoenix"])
    } == {"D"}
    a = next(r for r in lists.records(contact_list.name) if r.client_id == "A")
    lists.contact_lists.UpdateRecord(
        contact_list_service_pb2.UpdateRecordRequest(
            record=record_pb2.Record(name=a.name, status=record_pb2.RECORD_STATUS_DONE),
            update_mask=FieldMask(paths=["status"]),
        ),
        metadata=lists.md,
        timeout=10,
    )
    assert {
        r.client_id
        for r in lists.records(contact_list.name, statuses=[record_pb2.RECORD_STATUS_DONE])
    } == {"A"}


def test_export_streams_a_csv_of_the_matching_records_with_statuses(lists: Lists) -> None:
    contact_list = lists.new_list("exported", custom_field_names=["segment"])
    lists.import_file(contact_list.name, PEOPLE)
    chunks = lists.contact_lists.ExportRecords(
        contact_list_service_pb2.ExportRecordsRequest(
            parent=contact_list.name,
            filter=contact_list_service_pb2.RecordFilter(state_provinces=["NY"]),
        ),
        metadata=lists.md,
        timeout=30,
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(c.csv_chunk for c in chunks).decode())))
    assert [(r["client_id"], r["devices.home_phone"], r["segment"], r["status"]) for r in rows] == [
        ("B", "+12125550102", "silver", "READY"),
        ("C", "+12125550103", "gold", "READY"),
    ]


def test_rest_download_of_records(lists: Lists, edge: httpx.Client) -> None:
    contact_list = lists.new_list("downloaded")
    lists.import_file(contact_list.name, PEOPLE)
    response = edge.get(
        f"/v1/{contact_list.name}/records:download",
        params={"filter.stateProvinces": "AZ"},
        headers={"authorization": f"Bearer {lists.token}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["client_id"] for r in rows] == ["D"]


def test_list_builder_makes_a_list_from_matching_records_of_several_lists(lists: Lists) -> None:
    first, second = lists.new_list("source one"), lists.new_list("source two")
    lists.import_file(first.name, PEOPLE)
    lists.import_file(
        second.name, b"client_id,phone,state\nC,(212) 555-0103,NY\nE,(212) 555-0105,NY\n"
    )
    built = lists.contact_lists.BuildContactList(
        contact_list_service_pb2.BuildContactListRequest(
            contact_list=contact_list_pb2.ContactList(display_name="New Yorkers"),
            source_contact_lists=[first.name, second.name],
            filter=contact_list_service_pb2.RecordFilter(state_provinces=["NY"]),
            request_id="build-ny",
        ),
        metadata=lists.md,
        timeout=30,
    ).contact_list
    assert built.record_count == 3  # B, C (once), E
    again = lists.contact_lists.BuildContactList(
        contact_list_service_pb2.BuildContactListRequest(
            contact_list=contact_list_pb2.ContactList(display_name="New Yorkers"),
            source_contact_lists=[first.name],
            request_id="build-ny",
        ),
        metadata=lists.md,
        timeout=30,
    ).contact_list
    assert again.name == built.name
    assert len(lists.records(first.name)) == 4  # sources unchanged


def test_split_evenly_and_by_field(lists: Lists) -> None:
    contact_list = lists.new_list("to split")
    lists.import_file(contact_list.name, PEOPLE)
    even = lists.contact_lists.SplitContactList(
        contact_list_service_pb2.SplitContactListRequest(name=contact_list.name, part_count=3),
        metadata=lists.md,
        timeout=30,
    ).contact_lists
    assert sorted(p.record_count for p in even) == [1, 1, 2]
    by_state = lists.contact_lists.SplitContactList(
        contact_list_service_pb2.SplitContactListRequest(
            name=contact_list.name, field="state_province"
        ),
        metadata=lists.md,
        timeout=30,
    ).contact_lists
    assert {p.display_name: p.record_count for p in by_state} == {
        "to split state_province=AZ": 1,
        "to split state_province=CA": 1,
        "to split state_province=NY": 2,
    }
    with pytest.raises(grpc.RpcError) as caught:
        lists.contact_lists.SplitContactList(
            contact_list_service_pb2.SplitContactListRequest(
                name=contact_list.name, field="first_name; drop table"
            ),
            metadata=lists.md,
            timeout=30,
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_another_tenant_cannot_see_a_list(lists: Lists, key: SigningKey, mesh: Mesh) -> None:
    contact_list = lists.new_list("private")
    other = key.mint(tenant="someone-else", roles=["admin"])
    with grpc.insecure_channel(mesh.edge_target) as channel, pytest.raises(grpc.RpcError) as caught:
        contact_list_service_pb2_grpc.ContactListServiceStub(channel).GetContactList(
            contact_list_service_pb2.GetContactListRequest(name=contact_list.name),
            metadata=(("authorization", f"Bearer {other}"),),
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
