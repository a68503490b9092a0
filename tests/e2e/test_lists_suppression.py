"""Suppression lists: entries, expiry, emergency adds, the Redis mirror, DNC files, marking."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from cxmesh.lists.v1 import import_pb2, suppression_pb2, suppression_service_pb2
from cxmesh.types.v1 import channel_pb2
from cxmesh_server.mirrors.suppression import (
    LOADED_KEY,
    WRITERS_KEY,
    is_active,
    list_key,
    rebuilding_key,
)
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.datastores import EmbeddedRedis
from cxmesh_server.stack.mesh import Mesh
from tests.e2e.lists_helpers import Lists


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _add(
    lists: Lists, list_name: str, *entries: suppression_pb2.SuppressionEntry
) -> list[suppression_pb2.SuppressionEntry]:
    return list(
        lists.suppression.CreateSuppressionEntries(
            suppression_service_pb2.CreateSuppressionEntriesRequest(
                parent=list_name, entries=entries
            ),
            metadata=lists.md,
            timeout=10,
        ).entries
    )


def _remove_phones(lists: Lists, list_name: str, *numbers: str) -> int:
    """Deletes the numbers' entries; how many there were."""
    return lists.suppression.DeleteSuppressionEntries(
        suppression_service_pb2.DeleteSuppressionEntriesRequest(
            parent=list_name, phone_numbers=numbers
        ),
        metadata=lists.md,
        timeout=10,
    ).deleted_count


def _eventually(condition: Callable[[], object], seconds: float = 15) -> bool:
    """Whether `condition` comes to hold within `seconds` (the lists service checks its
    mirror every 2 s)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _mirror_value(
    redis_server: EmbeddedRedis, tenant: str, list_name: str, kind: str, target: str
) -> str | None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        return client.hget(list_key(tenant, list_name.split("/")[1], kind), target)  # type: ignore[return-value]
    finally:
        client.close()


def test_entries_are_normalised_stored_and_mirrored_before_the_call_returns(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("do not call")
    stored = _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(
            phone_number="(415) 555-0101", channels=[channel_pb2.CHANNEL_VOICE]
        ),
        suppression_pb2.SuppressionEntry(email="Ada@Example.com"),
        suppression_pb2.SuppressionEntry(client_id="C-9"),
    )
    assert [e.phone_number or e.email or e.client_id for e in stored] == [
        "+14155550101",
        "ada@example.com",
        "C-9",
    ]
    now_ms = int(time.time() * 1000)
    phone = _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550101")
    assert phone is not None and is_active(phone, now_ms, channel_pb2.CHANNEL_VOICE)
    assert not is_active(phone, now_ms, channel_pb2.CHANNEL_SMS)  # voice only
    assert (
        _mirror_value(redis_server, lists.tenant, dnc.name, "email", "ada@example.com") is not None
    )
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "client", "C-9") is not None


def test_national_numbers_are_read_in_the_tenants_region_by_entries_lists_and_deletions(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str], redis_server: EmbeddedRedis
) -> None:
    tenant = new_tenant(default_region="GB")
    with grpc.insecure_channel(mesh.edge_target) as channel:
        uk = Lists(channel, key.mint(tenant=tenant, roles=["admin"]), tenant)
        dnc = uk.new_suppression_list("uk do not call")
        (entry,) = _add(
            uk, dnc.name, suppression_pb2.SuppressionEntry(phone_number="020 7946 0000")
        )
        assert entry.phone_number == "+442079460000"
        assert _mirror_value(redis_server, tenant, dnc.name, "phone", "+442079460000") is not None
        assert _remove_phones(uk, dnc.name, "020 7946 0000") == 1
        # A contact list without a region of its own takes the tenant's.
        assert uk.new_list("uk customers").default_region == "GB"
        assert uk.new_list("us customers", default_region="US").default_region == "US"


def test_invalid_entries_are_refused_with_every_field_violation(lists: Lists) -> None:
    dnc = lists.new_suppression_list("strict")
    with pytest.raises(grpc.RpcError) as caught:
        _add(
            lists,
            dnc.name,
            suppression_pb2.SuppressionEntry(phone_number="12"),
            suppression_pb2.SuppressionEntry(email="nope"),
            # A channel no decision is for: the entry would suppress nothing.
            suppression_pb2.SuppressionEntry(
                email="ada@example.com", channels=[channel_pb2.CHANNEL_UNSPECIFIED]
            ),
            suppression_pb2.SuppressionEntry(client_id="C-1", channels=[99]),  # type: ignore[list-item]
            # Postgres refuses NUL; the calls were 500s.
            suppression_pb2.SuppressionEntry(client_id="C\x00-2"),
            suppression_pb2.SuppressionEntry(client_id="C-3", reason="bad\x00reason"),
            # No one's expiry (year 1 was a 500).
            suppression_pb2.SuppressionEntry(client_id="C-4", expire_time=_ts(datetime(1, 1, 1))),
            suppression_pb2.SuppressionEntry(email="ada\x00@example.com"),
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "entries[0].phone_number" in details and "entries[1].email" in details
    assert "entries[2].channels" in details and "entries[3].channels" in details
    assert "entries[4].client_id" in details and "entries[5].reason" in details
    assert "entries[6].expire_time" in details and "entries[7].email" in details


def test_a_list_binds_at_most_1000_campaigns_of_ids_up_to_255_characters(
    lists: Lists, edge: httpx.Client
) -> None:
    headers = {"authorization": f"Bearer {lists.token}"}
    for campaigns, field in (
        (["campaigns/spring"] * 1001, "suppression_list.campaigns"),
        (["campaigns/" + "x" * 256], "suppression_list.campaigns[0]"),
    ):
        answer = edge.post(
            "/v1/suppressionLists",
            json={"displayName": "bound", "campaigns": campaigns},
            headers=headers,
        )
        assert answer.status_code == 400
        assert answer.json()["details"][1]["fieldViolations"][0]["field"] == field
    answer = edge.post(
        "/v1/suppressionLists",
        json={"displayName": "bound", "campaigns": ["campaigns/" + "x" * 255]},
        headers=headers,
    )
    assert answer.status_code == 200


def test_an_entry_stops_counting_at_its_expiry_without_a_sweep(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("expiring")
    expiry = datetime.now(UTC) + timedelta(seconds=1)
    _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(phone_number="+14155550102", expire_time=_ts(expiry)),
    )
    value = _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550102")
    assert value is not None
    expiry_ms = int(expiry.timestamp() * 1000)
    assert is_active(value, expiry_ms - 1)
    assert not is_active(value, expiry_ms)  # at the instant exactly
    listed = lists.suppression.ListSuppressionEntries(
        suppression_service_pb2.ListSuppressionEntriesRequest(parent=dnc.name),
        metadata=lists.md,
        timeout=10,
    ).entries
    assert len(listed) == 1
    time.sleep(1.2)
    listed = lists.suppression.ListSuppressionEntries(
        suppression_service_pb2.ListSuppressionEntriesRequest(parent=dnc.name),
        metadata=lists.md,
        timeout=10,
    ).entries
    assert len(listed) == 0


def test_adding_a_target_again_never_loosens_its_suppression(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("opt-outs")
    now = datetime.now(UTC)
    week, month = _ts(now + timedelta(days=7)), _ts(now + timedelta(days=30))
    # Opted out of calls for good, then of texts for a week: both, for good.
    _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(
            phone_number="+14155550104", channels=[channel_pb2.CHANNEL_VOICE]
        ),
    )
    (merged,) = _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(
            phone_number="+14155550104", channels=[channel_pb2.CHANNEL_SMS], expire_time=week
        ),
    )
    assert set(merged.channels) == {channel_pb2.CHANNEL_VOICE, channel_pb2.CHANNEL_SMS}
    assert not merged.HasField("expire_time")
    # The same target twice in one call: merged alike, the later expiry kept.
    merged_in_call = _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(email="ada@example.com", expire_time=month),
        suppression_pb2.SuppressionEntry(
            email="ada@example.com", channels=[channel_pb2.CHANNEL_EMAIL], expire_time=week
        ),
    )
    assert [(list(e.channels), e.expire_time.seconds) for e in merged_in_call] == [
        ([], month.seconds)
    ]
    later_ms = int((now + timedelta(days=20)).timestamp() * 1000)
    for kind, target, channel in (
        ("phone", "+14155550104", channel_pb2.CHANNEL_VOICE),
        ("phone", "+14155550104", channel_pb2.CHANNEL_SMS),
        ("email", "ada@example.com", channel_pb2.CHANNEL_EMAIL),
    ):
        value = _mirror_value(redis_server, lists.tenant, dnc.name, kind, target)
        assert value is not None and is_active(value, later_ms, channel)


def test_an_emergency_entry_is_in_the_mirror_when_the_call_returns(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("emergency")
    entry = lists.suppression.CreateEmergencySuppressionEntry(
        suppression_service_pb2.CreateEmergencySuppressionEntryRequest(
            parent=dnc.name,
            entry=suppression_pb2.SuppressionEntry(
                phone_number="+1 415 555 0103", reason="said stop"
            ),
        ),
        metadata=lists.md,
        timeout=10,
    ).entry
    assert entry.emergency
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550103") is not None


def test_removing_entries_removes_them_from_the_mirror(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("removal")
    _add(lists, dnc.name, suppression_pb2.SuppressionEntry(phone_number="+14155550104"))
    assert _remove_phones(lists, dnc.name, "(415) 555-0104") == 1
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550104") is None


def _redis_lost_everything(client: redis.Redis, tenant: str, list_id: str) -> Callable[[], object]:
    client.delete(list_key(tenant, list_id, "phone"), LOADED_KEY)
    return lambda: client.exists(LOADED_KEY)


def _a_rebuilds_process_died(
    client: redis.Redis, tenant: str, list_id: str
) -> Callable[[], object]:
    # The tenant marked unavailable, the list half gone, and the writer's lease lapsed.
    client.set(rebuilding_key(tenant), "1")
    client.delete(list_key(tenant, list_id, "phone"))
    client.zadd(WRITERS_KEY, {f"{tenant}|died": 1})
    return lambda: (
        not client.exists(rebuilding_key(tenant))
        and (client.zscore(WRITERS_KEY, f"{tenant}|died") is None)
    )


@pytest.mark.parametrize("loss", [_redis_lost_everything, _a_rebuilds_process_died])
def test_the_lists_service_rebuilds_a_mirror_left_unlike_postgres(
    lists: Lists,
    redis_server: EmbeddedRedis,
    loss: Callable[[redis.Redis, str, str], Callable[[], object]],
) -> None:
    dnc = lists.new_suppression_list("rebuilt")
    _add(lists, dnc.name, suppression_pb2.SuppressionEntry(phone_number="+14155550105"))
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        assert _eventually(loss(client, lists.tenant, dnc.name.split("/")[1]))
    finally:
        client.close()
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550105") is not None


def test_rebuild_on_request_restores_a_tenants_mirror_as_the_writes_left_it(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("rebuild rpc")
    _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(email="x@example.com"),
        suppression_pb2.SuppressionEntry(
            phone_number="+14155550106",
            channels=[channel_pb2.CHANNEL_SMS],
            expire_time=_ts(datetime.now(UTC) + timedelta(days=30)),
        ),
        suppression_pb2.SuppressionEntry(
            client_id="C-106", channels=[channel_pb2.CHANNEL_VOICE, channel_pb2.CHANNEL_EMAIL]
        ),
    )
    targets = [("email", "x@example.com"), ("phone", "+14155550106"), ("client", "C-106")]
    written = [_mirror_value(redis_server, lists.tenant, dnc.name, *t) for t in targets]
    assert None not in written
    redis.Redis(port=redis_server.port).delete(
        *(list_key(lists.tenant, dnc.name.split("/")[1], kind) for kind, _ in targets)
    )
    rebuilt = lists.suppression.RebuildSuppressionMirror(
        suppression_service_pb2.RebuildSuppressionMirrorRequest(), metadata=lists.md, timeout=30
    )
    assert rebuilt.entry_count == 3
    # Channels and expiry read back from Postgres exactly as the writes mirrored them.
    assert [_mirror_value(redis_server, lists.tenant, dnc.name, *t) for t in targets] == written


def _stream(
    options: suppression_service_pb2.ImportDncFileOptions, data: bytes
) -> Iterator[suppression_service_pb2.ImportDncFileRequest]:
    yield suppression_service_pb2.ImportDncFileRequest(options=options)
    for start in range(0, len(data), 1000):
        yield suppression_service_pb2.ImportDncFileRequest(chunk=data[start : start + 1000])


def _dnc(
    lists: Lists, list_name: str, kind: int, data: bytes
) -> suppression_service_pb2.ImportSuppressionEntriesResponse:
    options = suppression_service_pb2.ImportDncFileOptions(
        parent=list_name,
        provider=suppression_pb2.SUPPRESSION_SOURCE_US_NATIONAL_DNC,
        kind=kind,  # type: ignore[arg-type]
    )
    return lists.suppression.ImportDncFile(
        _stream(options, data), metadata=lists.md, timeout=60
    ).result


def test_national_dnc_full_file_then_additions_and_deletions(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("national dnc")
    full = b"2015550101\n2015550102\n201-555-0103\nnot a number\n1234567890\n"
    loaded = _dnc(lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_FULL, full)
    assert (loaded.lines_read, loaded.entries_added, loaded.lines_rejected) == (5, 3, 2)
    assert loaded.errors[0].startswith("line 4:")
    # A second full file replaces the list.
    replaced = _dnc(
        lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_FULL, b"2015550101\n2015550104\n"
    )
    assert replaced.entries_added == 2

    def phones() -> set[str]:
        entries = lists.suppression.ListSuppressionEntries(
            suppression_service_pb2.ListSuppressionEntriesRequest(parent=dnc.name),
            metadata=lists.md,
            timeout=10,
        ).entries
        return {e.phone_number for e in entries}

    assert phones() == {"+12015550101", "+12015550104"}
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+12015550102") is None
    _dnc(lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_ADDITIONS, b"2015550105\n")
    removed = _dnc(
        lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_DELETIONS, b"2015550101\n"
    )
    assert removed.entries_removed == 1
    assert phones() == {"+12015550104", "+12015550105"}
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+12015550105") is not None
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+12015550101") is None


def test_a_registry_file_never_lifts_an_emergency_entry(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("registry and opt-outs")
    lists.suppression.CreateEmergencySuppressionEntry(
        suppression_service_pb2.CreateEmergencySuppressionEntryRequest(
            parent=dnc.name,
            entry=suppression_pb2.SuppressionEntry(phone_number="+12015550199", reason="stop"),
        ),
        metadata=lists.md,
        timeout=10,
    )
    full = _dnc(lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_FULL, b"2015550101\n")
    assert full.entries_added == 1
    _dnc(lists, dnc.name, suppression_service_pb2.DNC_FILE_KIND_DELETIONS, b"2015550199\n")
    entries = lists.suppression.ListSuppressionEntries(
        suppression_service_pb2.ListSuppressionEntriesRequest(parent=dnc.name),
        metadata=lists.md,
        timeout=10,
    ).entries
    assert {(e.phone_number, e.emergency) for e in entries} == {
        ("+12015550101", False),
        ("+12015550199", True),
    }
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+12015550199") is not None


def test_imported_records_that_match_a_suppression_list_are_marked_not_dropped(
    lists: Lists,
) -> None:
    dnc = lists.new_suppression_list("marking")
    _add(
        lists,
        dnc.name,
        suppression_pb2.SuppressionEntry(phone_number="+14155550201"),
        suppression_pb2.SuppressionEntry(client_id="VIP"),
        suppression_pb2.SuppressionEntry(
            phone_number="+14155550203", expire_time=_ts(datetime.now(UTC) - timedelta(minutes=1))
        ),
    )
    contact_list = lists.new_list("to mark")
    done = lists.import_file(
        contact_list.name,
        b"client_id,phone\nA,(415) 555-0201\nVIP,(415) 555-0202\nB,(415) 555-0203\nC,(415) 555-0204\n",
    )
    assert done.state == import_pb2.IMPORT_STATE_SUCCEEDED, done.failure_reason
    assert (done.progress.rows_accepted, done.progress.rows_suppressed) == (4, 2)
    marked = {r.client_id: list(r.suppression_lists) for r in lists.records(contact_list.name)}
    assert marked == {"A": [dnc.name], "VIP": [dnc.name], "B": [], "C": []}
    assert {r.client_id for r in lists.records(contact_list.name, suppressed=True)} == {"A", "VIP"}


def test_bulk_import_of_entries_from_a_file(lists: Lists) -> None:
    dnc = lists.new_suppression_list("bulk")

    def messages(
        *channels: int,
    ) -> Iterator[suppression_service_pb2.ImportSuppressionEntriesRequest]:
        yield suppression_service_pb2.ImportSuppressionEntriesRequest(
            options=suppression_service_pb2.ImportSuppressionEntriesOptions(
                parent=dnc.name,
                target_type=suppression_service_pb2.SUPPRESSION_TARGET_TYPE_EMAIL,
                channels=channels,  # type: ignore[arg-type]
            )
        )
        yield suppression_service_pb2.ImportSuppressionEntriesRequest(
            chunk=b"a@example.com\nb@example.com,2099-01-01T00:00:00Z\nbroken\n"
            b"c@example.com,2099-01-01\nd@example.com,0001-01-01T00:00:00Z\n"
        )

    result = lists.suppression.ImportSuppressionEntries(messages(), metadata=lists.md, timeout=30)
    # An expiry without an offset is UTC.
    assert (result.lines_read, result.entries_added, result.lines_rejected) == (5, 3, 2)
    assert "line 5: an expiry is after 1970-01-01" in result.errors[1]
    with pytest.raises(grpc.RpcError) as refused:
        lists.suppression.ImportSuppressionEntries(
            messages(channel_pb2.CHANNEL_UNSPECIFIED), metadata=lists.md, timeout=30
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "options.channels" in (refused.value.details() or "")


def test_deleting_a_suppression_list_drops_its_mirror(
    lists: Lists, redis_server: EmbeddedRedis
) -> None:
    dnc = lists.new_suppression_list("short lived")
    _add(lists, dnc.name, suppression_pb2.SuppressionEntry(phone_number="+14155550301"))
    lists.suppression.DeleteSuppressionList(
        suppression_service_pb2.DeleteSuppressionListRequest(name=dnc.name),
        metadata=lists.md,
        timeout=10,
    )
    assert _mirror_value(redis_server, lists.tenant, dnc.name, "phone", "+14155550301") is None
    with pytest.raises(grpc.RpcError) as caught:
        lists.suppression.GetSuppressionList(
            suppression_service_pb2.GetSuppressionListRequest(name=dnc.name),
            metadata=lists.md,
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
