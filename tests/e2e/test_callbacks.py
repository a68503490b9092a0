"""Callbacks through the edge: the GES Engagement API v3 wire format (envelopes, status
codes, dates, quirks of generated clients), capacity under concurrent creates, throttles,
dispatch at the desired time, the routing side (claims, leases, states), wait estimates and
Click-to-Call-In."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from cxmesh.callbacks.v1 import (
    callback_pb2,
    callback_service_pb2,
    callback_service_pb2_grpc,
    engagement_service_pb2,
    engagement_service_pb2_grpc,
)
from cxmesh.iam.v1 import api_key_pb2, api_key_service_pb2, api_key_service_pb2_grpc
from cxmesh_server.callbacks.bootstrap import DISPATCH_SECONDS
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.datastores import EmbeddedPostgres
from cxmesh_server.stack.mesh import Mesh, wait_serving
from tests.conftest import grpc_bearer
from tests.e2e.fake_google import GOOD_TOKEN, SECRET, FakeGoogle
from tests.e2e.scrape import metric

S = callback_pb2
M = callback_service_pb2
E = engagement_service_pb2
GES_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# What clients generated from the published spec send with every create.
SPEC_DEFAULTS = {
    "language": "en-US",
    "cbOfferType": "ASAP if the request does not include the desiredTime parameter and "
    "SCHEDULED if the request includes the desiredTime parameter.",
}


@dataclass
class Tenant:
    tenant: str
    admin: tuple[tuple[str, str], ...]
    routing: tuple[tuple[str, str], ...]
    api_key: str
    config: callback_service_pb2_grpc.CallbackConfigServiceStub
    callbacks: callback_service_pb2_grpc.CallbackServiceStub
    router: callback_service_pb2_grpc.RoutingServiceStub
    edge: httpx.Client

    def service(self, name: str, queue: str = "", **settings: object) -> str:
        queue = queue or f"{name}-vq"
        try:
            self.config.CreateVirtualQueue(
                M.CreateVirtualQueueRequest(virtual_queue_id=queue), metadata=self.admin, timeout=10
            )
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
        self.config.CreateCallbackService(
            M.CreateCallbackServiceRequest(
                callback_service_id=name,
                callback_service=S.CallbackServiceConfig(
                    virtual_queue=f"virtualQueues/{queue}",
                    **settings,  # type: ignore[arg-type]
                ),
            ),
            metadata=self.admin,
            timeout=10,
        )
        return name

    def ges(self, method: str, path: str, body: object = None, **options: object) -> httpx.Response:
        headers = {
            "x-api-key": self.api_key,
            "content-type": "application/json",
            "accept": "application/json",
        }
        headers.update(options.pop("headers", {}))  # type: ignore[call-overload]
        return self.edge.request(
            method,
            f"/engagement/v3{path}",
            headers=headers,
            content=body
            if isinstance(body, str)
            else json.dumps(body)
            if body is not None
            else None,
            **options,  # type: ignore[arg-type]
        )

    def create(self, service: str, number: str, **fields: object) -> httpx.Response:
        return self.ges(
            "POST",
            "/callbacks/create",
            {"serviceName": service, "phoneNumber": number, **SPEC_DEFAULTS, **fields},
        )

    def retrieve(self, callback_id: str) -> dict[str, object]:
        response = self.ges("POST", "/callbacks/retrieve", {"id": callback_id})
        assert response.status_code == 200, response.text
        return response.json()["data"]  # type: ignore[no-any-return]


@pytest.fixture
def tenant(mesh: Mesh, key: SigningKey, new_tenant: Callable[[], str]) -> Iterator[Tenant]:
    with _tenant_of(mesh, key, new_tenant()) as tenant:
        yield tenant


@contextmanager
def _tenant_of(mesh: Mesh, key: SigningKey, tenant_id: str) -> Iterator[Tenant]:
    admin = grpc_bearer(key.mint(tenant=tenant_id, roles=["admin"]))
    with (
        grpc.insecure_channel(mesh.edge_target) as channel,
        httpx.Client(base_url=mesh.edge_url, timeout=10) as edge,
    ):
        api_key = (
            api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
            .CreateApiKey(
                api_key_service_pb2.CreateApiKeyRequest(
                    api_key=api_key_pb2.ApiKey(display_name="widget", roles=["engagement"])
                ),
                metadata=admin,
                timeout=10,
            )
            .key
        )
        yield Tenant(
            tenant_id,
            admin,
            grpc_bearer(key.mint(tenant=tenant_id, roles=["routing"])),
            api_key,
            callback_service_pb2_grpc.CallbackConfigServiceStub(channel),
            callback_service_pb2_grpc.CallbackServiceStub(channel),
            callback_service_pb2_grpc.RoutingServiceStub(channel),
            edge,
        )


def in_minutes(minutes: float) -> str:
    moment = datetime.now(UTC) + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def wait_for_state(tenant: Tenant, callback_id: str, state: str, seconds: float = 10) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    while True:
        data = tenant.retrieve(callback_id)
        if data["callbackState"] == state:
            return data
        assert time.monotonic() < deadline, f"still {data['callbackState']}, not {state}"
        time.sleep(0.2)


def test_ges_create_retrieve_and_cancel_in_the_ges_envelope(tenant: Tenant) -> None:
    service = tenant.service("sales")
    created = tenant.create(service, "(212) 555-0142", desiredTime=in_minutes(60))
    assert created.status_code == 200, created.text
    assert created.headers["content-type"].startswith("application/json")
    body = created.json()
    assert body["status"]["code"] == 0 and body["status"]["corrId"]
    callback_id = body["data"]["id"]

    data = tenant.retrieve(callback_id)
    assert data["id"] == callback_id
    assert data["callbackState"] == "SCHEDULED"
    assert data["phoneNumber"] == "+12125550142"
    assert GES_DATE.match(str(data["desiredTime"]))
    assert "callbackReason" not in data and "positionInQueue" not in data

    cancelled = tenant.ges("POST", "/callbacks/cancel", {"id": callback_id})
    assert cancelled.status_code == 200 and cancelled.json()["data"] == {"id": callback_id}
    data = tenant.retrieve(callback_id)
    assert (data["callbackState"], data["callbackReason"]) == ("COMPLETED", "CANCELLED")
    again = tenant.ges("POST", "/callbacks/cancel", {"id": callback_id})
    assert again.status_code == 400 and again.json()["status"]["code"] == 400


def test_generated_clients_quirks_are_accepted(tenant: Tenant) -> None:
    service = tenant.service("quirks")
    response = tenant.ges(
        "POST",
        "/callbacks/create?_=1732400000000",
        {
            "serviceName": service,
            "phoneNumber": "+12125550143",
            **SPEC_DEFAULTS,
            "userData": {"account": "A-1", "not an identifier": "dropped"},
            "pushChannel": "FCM",
            "pushTarget": "device-token",
            "somethingNew": {"ignored": True},
        },
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"phoneNumber": "+12125550100"}, 400, "serviceName"),
        ({"serviceName": "{service}", "phoneNumber": "12"}, 400, "phoneNumber"),
        ({"serviceName": "{service}", "phoneNumber": "+19005550100"}, 400, "premium"),
        ({"serviceName": "nope", "phoneNumber": "+12125550100"}, 400, "no such callback service"),
        (
            {"serviceName": "{service}", "phoneNumber": "+12125550100", "desiredTime": "{past}"},
            400,
            "in the past",
        ),
        (
            {"serviceName": "{service}", "phoneNumber": "+12125550100", "desiredTime": "{far}"},
            400,
            "days ahead",
        ),
        (
            {"serviceName": "{service}", "phoneNumber": "+12125550100", "desiredTime": "soon"},
            400,
            "ISO-8601",
        ),
        ({"serviceName": "{service}", "phoneNumber": 42}, 400, ""),
    ],
)
def test_bad_creates_get_a_clear_error_in_the_envelope(
    tenant: Tenant, body: dict[str, object], status: int, words: str
) -> None:
    service = tenant.service("strict")
    filled = json.loads(
        json.dumps(body)
        .replace("{service}", service)
        .replace("{past}", in_minutes(-60))
        .replace("{far}", in_minutes(60 * 24 * 45))
    )
    response = tenant.ges("POST", "/callbacks/create", filled)
    assert response.status_code == status, response.text
    envelope = response.json()
    assert envelope["status"]["code"] == status
    assert words in envelope["status"]["message"]
    assert envelope["status"]["corrId"]
    assert "data" not in envelope


def test_transport_errors_keep_the_envelope_too(tenant: Tenant) -> None:
    malformed = tenant.ges("POST", "/callbacks/create", "{not json")
    assert malformed.status_code == 400
    assert malformed.json()["status"]["code"] == 400
    unknown = tenant.ges("POST", "/callbacks/retrieve", {"id": "0123456789abcdef"})
    assert unknown.status_code == 404 and unknown.json()["status"]["code"] == 404
    anonymous = tenant.edge.post(
        "/engagement/v3/callbacks/retrieve",
        json={"id": "x"},
        headers={"x-api-key": "cxk_not-a-key"},
    )
    assert anonymous.status_code == 401 and anonymous.json()["status"]["code"] == 401


def test_capacity_is_never_oversold_under_concurrent_creates(tenant: Tenant) -> None:
    service = tenant.service("tight", capacity=S.Capacity(bucket_minutes=60, default_per_bucket=3))
    desired = (
        (datetime.now(UTC) + timedelta(days=2))
        .replace(minute=10, second=0, microsecond=0)
        .strftime("%Y-%m-%dT%H:%M:%S.000Z")
    )
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(
            pool.map(
                lambda n: tenant.create(service, f"+1212555{n:04d}", desiredTime=desired),
                range(12),
            )
        )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [429] * 9, [a.text for a in answers]
    full = next(a for a in answers if a.status_code == 429).json()
    assert full["status"]["code"] == 429
    assert full["data"]["slots"], "a full slot proposes alternatives"


def test_throttle_and_duplicate_prevention(tenant: Tenant) -> None:
    strict = tenant.service("once", in_queue_check=S.IN_QUEUE_CHECK_STRICT, throttle_per_day=5)
    assert tenant.create(strict, "+12125550150").status_code == 200
    duplicate = tenant.create(strict, "+12125550150", desiredTime=in_minutes(30))
    assert duplicate.status_code == 400 and "active" in duplicate.json()["status"]["message"]

    throttled = tenant.service("throttled", in_queue_check=S.IN_QUEUE_CHECK_OFF, throttle_per_day=2)
    codes = [tenant.create(throttled, "+12125550151").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert tenant.create(throttled, "+12125550152").status_code == 200  # another number


def test_a_scheduled_callback_is_queued_at_its_time_claimed_and_completed(tenant: Tenant) -> None:
    service = tenant.service("flow", queue="flow-vq")
    soon = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    callback_id = tenant.create(service, "+12125550160", desiredTime=soon).json()["data"]["id"]
    queued = wait_for_state(tenant, callback_id, "QUEUED")
    assert queued["positionInQueue"] == 1 and queued["estimatedWaitTime"] == -1

    claimed = tenant.router.ClaimCallback(
        M.ClaimCallbackRequest(virtual_queue="virtualQueues/flow-vq"),
        metadata=tenant.routing,
        timeout=10,
    ).callback
    assert claimed.name == f"callbacks/{callback_id}" and claimed.state == S.CALLBACK_STATE_ROUTING
    with pytest.raises(grpc.RpcError) as illegal:
        tenant.router.ReportCallbackState(
            M.ReportCallbackStateRequest(name=claimed.name, state=S.CALLBACK_STATE_SCHEDULED),
            metadata=tenant.routing,
            timeout=10,
        )
    assert illegal.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    for state, reason in (
        (S.CALLBACK_STATE_PROCESSING, 0),
        (S.CALLBACK_STATE_COMPLETED, S.CALLBACK_REASON_AGENT_CONNECTED),
    ):
        tenant.router.ReportCallbackState(
            M.ReportCallbackStateRequest(name=claimed.name, state=state, reason=reason),  # type: ignore[arg-type]
            metadata=tenant.routing,
            timeout=10,
        )
    done = tenant.retrieve(callback_id)
    assert (done["callbackState"], done["callbackReason"]) == ("COMPLETED", "AGENT_CONNECTED")
    empty = tenant.router.ClaimCallback(
        M.ClaimCallbackRequest(virtual_queue="virtualQueues/flow-vq"),
        metadata=tenant.routing,
        timeout=10,
    )
    assert not empty.HasField("callback")


def test_an_unreported_lease_returns_the_callback_to_its_queue(tenant: Tenant) -> None:
    service = tenant.service("lease", queue="lease-vq")
    callback_id = tenant.create(service, "+12125550170").json()["data"]["id"]
    wait_for_state(tenant, callback_id, "QUEUED")
    tenant.router.ClaimCallback(
        M.ClaimCallbackRequest(
            virtual_queue="virtualQueues/lease-vq", lease_duration=Duration(seconds=1)
        ),
        metadata=tenant.routing,
        timeout=10,
    )
    assert tenant.retrieve(callback_id)["callbackState"] == "ROUTING"
    wait_for_state(tenant, callback_id, "QUEUED", seconds=6)


def test_availability_and_open_for_follow_office_hours_and_bookings(tenant: Tenant) -> None:
    hours = S.OfficeHours(time_zone="America/New_York")
    week = hours.weekly_hours.add(days=[1, 2, 3, 4, 5])
    week.open_time.hours, week.close_time.hours = 9, 17
    service = tenant.service(
        "hours", office_hours=hours, capacity=S.Capacity(bucket_minutes=60, default_per_bucket=2)
    )
    # Next Monday 10:00–12:00 New York: 10:00 and 11:00 (EST, UTC−5).
    today = datetime.now(UTC).date()
    monday = today + timedelta(days=(7 - today.weekday()) % 7 or 7)
    start = f"{monday}T15:00:00.000Z"
    booked = tenant.create(service, "+12125550180", desiredTime=start)
    assert booked.status_code == 200, booked.text
    response = tenant.ges(
        "GET",
        f"/callbacks/availability/{service}",
        params={"start": start, "end": f"{monday}T17:00:00.000Z", "timezone": "Europe/Paris"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["durationMin"] == 60 and data["timezone"] == "Europe/Paris"
    assert [(s["utcTime"], s["capacity"], s["total"]) for s in data["slots"]] == [
        (f"{monday}T15:00:00.000Z", 1, 2),
        (f"{monday}T16:00:00.000Z", 2, 2),
    ]
    assert data["slots"][0]["localTime"].startswith(f"{monday}T16:00:00.000+01:00")
    open_for = tenant.ges(
        "GET", f"/callbacks/open-for/{service}", params={"start": f"{monday}T21:00:00.000Z"}
    )
    assert open_for.json()["data"]["openFor"] == 3600
    closed = tenant.ges(
        "GET", f"/callbacks/open-for/{service}", params={"start": f"{monday}T23:00:00.000Z"}
    )
    assert closed.json()["data"]["openFor"] == 0


def test_wait_estimates_from_routing_statistics(tenant: Tenant) -> None:
    tenant.service("ewt", queue="ewt-vq")
    before = tenant.ges("GET", "/estimated-wait-time", params={"virtual-queues": "ewt-vq"})
    assert before.status_code == 200, before.text
    assert before.json()["data"][0]["resultCode"] == -2  # no agents logged in yet
    status = tenant.ges("GET", "/callbacks/queue-status/ewt-vq").json()["data"]
    assert status == {"ewt": -1, "offerImmediateCallback": False, "offerScheduledCallback": True}

    tenant.router.ReportQueueStatistics(
        M.ReportQueueStatisticsRequest(
            virtual_queue="virtualQueues/ewt-vq",
            agents_logged_in=2,
            agents_ready=1,
            handled_interactions=[
                M.HandledInteraction(
                    wait_time=Duration(seconds=30), handle_time=Duration(seconds=120)
                )
            ]
            * 4,
        ),
        metadata=tenant.routing,
        timeout=10,
    )
    estimates = tenant.ges(
        "GET", "/estimated-wait-time", params={"virtual-queues": "ewt-vq", "mode": "mode2"}
    ).json()["data"]
    assert estimates == [
        {
            "virtualQueue": "ewt-vq",
            "estimatedWaitTime": 60,
            "message": "mode2: from agents",
            "resultCode": 0,
        }
    ]
    status = tenant.ges("GET", "/callbacks/queue-status/ewt-vq").json()["data"]
    assert status["ewt"] == 60 and status["offerImmediateCallback"] is True


def test_call_in_codes_match_once_within_their_expiry(tenant: Tenant) -> None:
    tenant.config.CreateCallInGroup(
        M.CreateCallInGroupRequest(
            call_in_group_id="support",
            call_in_group=S.CallInGroup(phone_numbers=["+18005550100", "+18005550101"]),
        ),
        metadata=tenant.admin,
        timeout=10,
    )
    response = tenant.ges(
        "POST",
        "/call-in/requests/create",
        {"groupName": "support", "fromPhoneNumber": "+12125550190"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["toPhoneNumber"] in ("+18005550100", "+18005550101")
    assert 100000 <= data["accessCode"] <= 999999
    assert int(data["expirationTime"]) > time.time() * 1000
    match = M.MatchCallInCodeRequest(
        to_phone_number=data["toPhoneNumber"], access_code=str(data["accessCode"])
    )
    matched = tenant.router.MatchCallInCode(match, metadata=tenant.routing, timeout=10)
    assert matched.from_phone_number == "+12125550190"
    with pytest.raises(grpc.RpcError) as second:
        tenant.router.MatchCallInCode(match, metadata=tenant.routing, timeout=10)
    assert second.value.code() is grpc.StatusCode.NOT_FOUND


def test_two_replicas_dispatch_every_due_callback_exactly_once(
    tenant: Tenant, mesh: Mesh, postgres: EmbeddedPostgres
) -> None:
    replica = mesh.start_service("callbacks")
    try:
        wait_serving(f"127.0.0.1:{replica.port}", time.monotonic() + 60, replica)
        service = tenant.service("burst", in_queue_check=S.IN_QUEUE_CHECK_OFF)
        due = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        with ThreadPoolExecutor(max_workers=8) as pool:
            created = list(
                pool.map(
                    lambda n: tenant.create(service, f"+1646555{n:04d}", desiredTime=due),
                    range(60),
                )
            )
        assert all(c.status_code == 200 for c in created)
        deadline = time.monotonic() + 15
        while True:
            listed = tenant.callbacks.ListCallbacks(
                M.ListCallbacksRequest(
                    callback_service=f"callbackServices/{service}", page_size=100
                ),
                metadata=tenant.admin,
                timeout=10,
            ).callbacks
            if len(listed) == 60 and all(c.state == S.CALLBACK_STATE_QUEUED for c in listed):
                break
            assert time.monotonic() < deadline, "not every callback was queued in time"
            time.sleep(0.3)
        time.sleep(2 * DISPATCH_SECONDS)  # both replicas have had more turns since
        counts = asyncio.run(_dispatch_counts(postgres.dsn, tenant.tenant, service))
        assert counts == [1] * 60
    finally:
        replica.process.terminate()
        replica.process.wait(timeout=30)
        mesh.instances.remove(replica)


async def _dispatch_counts(dsn: str, tenant: str, service: str) -> list[int]:
    """How many times each callback was queued, read as the database owner."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT dispatch_count FROM callbacks.callbacks WHERE tenant_id = $1 AND service_id = $2",
            tenant,
            service,
        )
    finally:
        await connection.close()
    return [r["dispatch_count"] for r in rows]


def test_the_demo_seed_serves_callbacks_at_once(mesh: Mesh, key: SigningKey) -> None:
    from cxmesh_server.stack.demo import seed_demo

    first = seed_demo(mesh, key)
    second = seed_demo(mesh, key, first)
    assert second["CXMESH_API_KEY"] == first["CXMESH_API_KEY"]  # the key is reused
    headers = {"x-api-key": first["CXMESH_API_KEY"], "content-type": "application/json"}
    with httpx.Client(base_url=first["CXMESH_GES_URL"], headers=headers, timeout=10) as ges:
        created = ges.post(
            "/callbacks/create",
            json={"serviceName": first["CXMESH_CALLBACK_SERVICE"], "phoneNumber": "+12125550111"},
        )
        assert created.status_code == 200, created.text
        callback_id = created.json()["data"]["id"]
        data = ges.post("/callbacks/retrieve", json={"id": callback_id}).json()["data"]
        assert data["callbackState"] in ("SCHEDULED", "QUEUED")
        status = ges.get(f"/callbacks/queue-status/{first['CXMESH_VIRTUAL_QUEUE']}")
        assert status.status_code == 200, status.text
        call_in = ges.post(
            "/call-in/requests/create", json={"groupName": first["CXMESH_CALLIN_GROUP"]}
        )
        assert call_in.status_code == 200, call_in.text
        assert ges.post("/callbacks/cancel", json={"id": callback_id}).status_code == 200


def test_a_settings_change_applies_to_the_next_create_on_every_replica(tenant: Tenant) -> None:
    service = tenant.service("changing", in_queue_check=S.IN_QUEUE_CHECK_OFF)
    for _ in range(4):  # both replicas behind the edge have read (and kept) the settings
        assert tenant.create(service, "+12125550200", desiredTime=in_minutes(90)).status_code == 200
    tenant.config.UpdateCallbackService(
        M.UpdateCallbackServiceRequest(
            callback_service=S.CallbackServiceConfig(
                name=f"callbackServices/{service}", in_queue_check=S.IN_QUEUE_CHECK_STRICT
            ),
            update_mask=FieldMask(paths=["in_queue_check"]),
        ),
        metadata=tenant.admin,
        timeout=10,
    )
    for _ in range(4):
        refused = tenant.create(service, "+12125550200", desiredTime=in_minutes(90))
        assert refused.status_code == 400, refused.text


def test_kill_9_of_a_replica_under_load_loses_no_accepted_callback_and_queues_none_twice(
    tenant: Tenant, mesh: Mesh, postgres: EmbeddedPostgres
) -> None:
    service = tenant.service("survivor", in_queue_check=S.IN_QUEUE_CHECK_OFF)
    victim = next(i for i in mesh.instances if i.name == "callbacks")
    due = (datetime.now(UTC) + timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    accepted: list[str] = []
    stop_at = time.monotonic() + 3

    def load(worker: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            try:
                answer = tenant.create(
                    service, f"+1347555{worker:02d}{n % 100:02d}", desiredTime=due
                )
            except httpx.HTTPError:
                continue  # the connection itself broke: the caller would retry
            if answer.status_code == 200:
                accepted.append(answer.json()["data"]["id"])

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            running = [pool.submit(load, w) for w in range(8)]
            time.sleep(1)
            victim.process.kill()  # kill -9: whatever it was doing is cut short
            for future in running:
                future.result()
        assert len(accepted) > 20
        for callback_id in accepted:
            assert tenant.retrieve(callback_id)["id"] == callback_id
        deadline = time.monotonic() + 20
        while True:
            counts = asyncio.run(_dispatch_counts(postgres.dsn, tenant.tenant, service))
            if len(counts) >= len(accepted) and all(c >= 1 for c in counts):
                break
            assert time.monotonic() < deadline, "due callbacks were not all queued"
            time.sleep(0.5)
        time.sleep(2 * DISPATCH_SECONDS)
        assert set(asyncio.run(_dispatch_counts(postgres.dsn, tenant.tenant, service))) == {1}
    finally:
        victim.process.wait(timeout=10)
        mesh.instances.remove(victim)
        replacement = mesh.start_service("callbacks", port=victim.port)
        wait_serving(f"127.0.0.1:{replacement.port}", time.monotonic() + 60, replacement)


def test_publishing_replaces_the_whole_table_with_a_new_version(tenant: Tenant) -> None:
    tenant.service("seed", queue="pub-vq")
    active = tenant.create("seed", "+12125550211").json()["data"]["id"]

    def publish(*services: S.CallbackServiceConfig) -> M.PublishCallbackServicesResponse:
        return tenant.config.PublishCallbackServices(
            M.PublishCallbackServicesRequest(callback_services=services),
            metadata=tenant.admin,
            timeout=10,
        )

    def config(name: str, **settings: object) -> S.CallbackServiceConfig:
        return S.CallbackServiceConfig(
            name=f"callbackServices/{name}",
            virtual_queue="virtualQueues/pub-vq",
            **settings,  # type: ignore[arg-type]
        )

    with pytest.raises(grpc.RpcError) as busy:
        publish(config("alpha"), config("beta"))  # would drop seed, which has a callback
    assert busy.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "seed" in (busy.value.details() or "")
    assert tenant.create("seed", "+12125550212").status_code == 200  # nothing changed

    for callback in tenant.callbacks.ListCallbacks(
        M.ListCallbacksRequest(callback_service="callbackServices/seed"),
        metadata=tenant.admin,
        timeout=10,
    ).callbacks:
        tenant.callbacks.CancelCallback(
            M.CancelCallbackRequest(name=callback.name), metadata=tenant.admin, timeout=10
        )
    first = publish(config("alpha"), config("beta"))
    assert first.version == 1
    assert [s.name for s in first.callback_services] == [
        "callbackServices/alpha",
        "callbackServices/beta",
    ]
    assert tenant.create("alpha", "+12125550210").status_code == 200
    assert tenant.create("seed", "+12125550213").status_code == 400
    assert tenant.retrieve(active)["callbackReason"] == "CANCELLED"

    second = publish(config("alpha", reject_outside_office_hours=True), config("gamma"))
    assert second.version == 2
    assert second.callback_services[0].reject_outside_office_hours
    gone = tenant.create("beta", "+12125550214")
    assert (
        gone.status_code == 400 and "no such callback service" in gone.json()["status"]["message"]
    )
    assert tenant.create("gamma", "+12125550215").status_code == 200
    with pytest.raises(grpc.RpcError) as invalid:
        publish(config("twice"), config("twice"))
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_rescheduling_moves_a_callback_and_its_place_in_capacity(tenant: Tenant) -> None:
    service = tenant.service("moving", capacity=S.Capacity(bucket_minutes=60, default_per_bucket=1))
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    first, second = f"{day}T10:00:00.000Z", f"{day}T14:00:00.000Z"
    callback_id = tenant.create(service, "+12125550220", desiredTime=first).json()["data"]["id"]
    assert tenant.create(service, "+12125550221", desiredTime=first).status_code == 429

    moved = tenant.callbacks.RescheduleCallback(
        M.RescheduleCallbackRequest(
            name=f"callbacks/{callback_id}",
            desired_time=Timestamp(seconds=int(datetime.fromisoformat(second).timestamp())),
        ),
        metadata=tenant.admin,
        timeout=10,
    ).callback
    assert moved.desired_time.ToDatetime(tzinfo=UTC) == datetime.fromisoformat(second)
    assert tenant.create(service, "+12125550221", desiredTime=first).status_code == 200
    with pytest.raises(grpc.RpcError) as full:
        tenant.callbacks.RescheduleCallback(
            M.RescheduleCallbackRequest(
                name=f"callbacks/{callback_id}",
                desired_time=Timestamp(seconds=int(datetime.fromisoformat(first).timestamp())),
            ),
            metadata=tenant.admin,
            timeout=10,
        )
    assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_national_number_is_read_in_the_tenants_region(
    mesh: Mesh, key: SigningKey, new_tenant: Callable[..., str]
) -> None:
    """347 555 1234 is an Italian mobile number and a New York one: an Italian tenant's
    customer is called in Italy."""
    with _tenant_of(mesh, key, new_tenant(default_region="IT")) as italian:
        service = italian.service("italia", in_queue_check=S.IN_QUEUE_CHECK_OFF)
        created = italian.create(service, "347 555 1234", desiredTime=in_minutes(60))
        assert created.status_code == 200, created.text
        assert italian.retrieve(created.json()["data"]["id"])["phoneNumber"] == "+393475551234"
        found = italian.callbacks.ListCallbacks(
            M.ListCallbacksRequest(phone_number="347 555 1234"), metadata=italian.admin, timeout=10
        ).callbacks
        assert [c.phone_number for c in found] == ["+393475551234"]


def test_callbacks_are_listed_by_number_and_desired_time_and_counted(tenant: Tenant) -> None:
    service = tenant.service("listed", in_queue_check=S.IN_QUEUE_CHECK_OFF)
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    for number, hour in (("+12125550230", 9), ("+12125550230", 15), ("+12125550231", 9)):
        created = tenant.create(service, number, desiredTime=f"{day}T{hour:02d}:00:00.000Z")
        assert created.status_code == 200, created.text
    morning = M.ListCallbacksRequest(
        callback_service=f"callbackServices/{service}",
        phone_number="(212) 555-0230",
        desired_after=Timestamp(
            seconds=int(datetime.fromisoformat(f"{day}T08:00:00+00:00").timestamp())
        ),
        desired_before=Timestamp(
            seconds=int(datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp())
        ),
    )
    found = tenant.callbacks.ListCallbacks(morning, metadata=tenant.admin, timeout=10).callbacks
    assert [(c.phone_number, c.desired_time.ToDatetime().hour) for c in found] == [
        ("+12125550230", 9)
    ]
    counts = tenant.callbacks.GetCallbackStatistics(
        M.GetCallbackStatisticsRequest(), metadata=tenant.admin, timeout=10
    ).counts
    assert [(c.callback_service, c.state, c.count) for c in counts] == [
        (f"callbackServices/{service}", S.CALLBACK_STATE_SCHEDULED, 3)
    ]


def test_metrics_count_callbacks_by_tenant_service_and_reason_and_show_queues(
    tenant: Tenant, mesh: Mesh
) -> None:
    service = tenant.service("metered", queue="metered-vq")
    callback_id = tenant.create(service, "+12125550240").json()["data"]["id"]
    labels = {"tenant": tenant.tenant, "callback_service": service}
    assert metric(mesh, "callbacks", "cxmesh_callbacks_created_total", **labels) == 1
    wait_for_state(tenant, callback_id, "QUEUED")
    deadline = time.monotonic() + 10
    while (
        metric(
            mesh,
            "callbacks",
            "cxmesh_callbacks_queued",
            tenant=tenant.tenant,
            virtual_queue="metered-vq",
        )
        < 1
    ):
        assert time.monotonic() < deadline, "the queue length never showed"
        time.sleep(0.5)
    tenant.ges("GET", "/callbacks/queue-status/metered-vq")
    assert (
        metric(
            mesh,
            "callbacks",
            "cxmesh_callbacks_estimated_wait_seconds",
            tenant=tenant.tenant,
            virtual_queue="metered-vq",
        )
        == -1
    )
    tenant.ges("POST", "/callbacks/cancel", {"id": callback_id})
    assert (
        metric(mesh, "callbacks", "cxmesh_callbacks_completed_total", reason="CANCELLED", **labels)
        == 1
    )


def test_captcha_and_push_notifications_speak_to_googles_endpoints(
    tenant: Tenant, mesh: Mesh, tmp_path: Path
) -> None:
    google = FakeGoogle(tmp_path)
    replica = mesh.start_service(
        "callbacks",
        env={
            "CXMESH_CALLBACKS_RECAPTCHA_VERIFY_URL": f"{google.url}/siteverify",
            "CXMESH_CALLBACKS_RECAPTCHA_SECRET": SECRET,
            "CXMESH_CALLBACKS_FCM_SERVICE_ACCOUNT_FILE": str(google.account_file),
            "CXMESH_CALLBACKS_FCM_URL": google.url,
            "CXMESH_CALLBACKS_PUSH_BACKOFF_SECONDS": "0.1",
        },
    )
    try:
        wait_serving(f"127.0.0.1:{replica.port}", time.monotonic() + 60, replica)
        service = tenant.service(
            "guarded",
            queue="guarded-vq",
            captcha_required=True,
            # States this replica itself moves to (the dispatcher may run on another one).
            push_states=[S.CALLBACK_STATE_SCHEDULED, S.CALLBACK_STATE_COMPLETED],
        )
        key = (("x-api-key", tenant.api_key),)
        with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            ges = engagement_service_pb2_grpc.EngagementServiceStub(channel)

            def create(token: str) -> str:
                return ges.GesCreateCallback(
                    E.GesCreateCallbackRequest(
                        service_name=service,
                        phone_number="+12125550250",
                        captcha_token=token,
                        push_targets=[E.GesPushTarget(channel="FCM", target="device-1")],
                    ),
                    metadata=key,
                    timeout=10,
                ).data.id

            for bad in ("", "forged"):
                with pytest.raises(grpc.RpcError) as refused:
                    create(bad)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            callback_id = create(GOOD_TOKEN)
            routing = callback_service_pb2_grpc.RoutingServiceStub(channel)
            deadline = time.monotonic() + 10
            while not google.messages:
                assert time.monotonic() < deadline, "no notification of SCHEDULED"
                time.sleep(0.2)
            wait_for_state(tenant, callback_id, "QUEUED")
            claimed = routing.ClaimCallback(
                M.ClaimCallbackRequest(virtual_queue="virtualQueues/guarded-vq"),
                metadata=tenant.routing,
                timeout=10,
            ).callback
            routing.ReportCallbackState(
                M.ReportCallbackStateRequest(
                    name=claimed.name,
                    state=S.CALLBACK_STATE_COMPLETED,
                    reason=S.CALLBACK_REASON_AGENT_CONNECTED,
                ),
                metadata=tenant.routing,
                timeout=10,
            )
            deadline = time.monotonic() + 10
            while len(google.messages) < 2:
                assert time.monotonic() < deadline, "no notification of COMPLETED"
                time.sleep(0.2)
        assert google.messages == [
            {"token": "device-1", "data": {"id": callback_id, "callbackState": "SCHEDULED"}},
            {
                "token": "device-1",
                "data": {
                    "id": callback_id,
                    "callbackState": "COMPLETED",
                    "callbackReason": "AGENT_CONNECTED",
                },
            },
        ]
        assert google.failures_left == 0  # the first send failed and was retried
    finally:
        replica.process.terminate()
        replica.process.wait(timeout=30)
        mesh.instances.remove(replica)
        google.close()


def test_service_limits_scheduled_flag_lead_time_and_max_queued(tenant: Tenant) -> None:
    service = tenant.service(
        "limited",
        in_queue_check=S.IN_QUEUE_CHECK_OFF,
        scheduled_callbacks_enabled=False,
        max_queued=2,
    )
    no_scheduled = tenant.create(service, "+12125550260", desiredTime=in_minutes(90))
    assert no_scheduled.status_code == 400
    assert "scheduled callbacks are disabled" in no_scheduled.json()["status"]["message"]
    assert [tenant.create(service, f"+1212555026{n}").status_code for n in range(3)] == [
        200,
        200,
        429,
    ]
    lead = tenant.service("lead", min_lead_time=Duration(seconds=3600))
    early = tenant.create(lead, "+12125550270", desiredTime=in_minutes(30))
    assert early.status_code == 400 and "at least 60 min ahead" in early.json()["status"]["message"]
    assert tenant.create(lead, "+12125550270", desiredTime=in_minutes(90)).status_code == 200


def test_a_customer_not_reached_is_retried_until_the_last_dial_attempt(tenant: Tenant) -> None:
    service = tenant.service(
        "retries", queue="retries-vq", max_dial_attempts=2, retry_timeout=Duration(seconds=1)
    )
    callback_id = tenant.create(service, "+12125550280").json()["data"]["id"]
    for attempt in (1, 2):
        wait_for_state(tenant, callback_id, "QUEUED", seconds=15)
        claimed = tenant.router.ClaimCallback(
            M.ClaimCallbackRequest(virtual_queue="virtualQueues/retries-vq"),
            metadata=tenant.routing,
            timeout=10,
        ).callback
        for state, reason in (
            (S.CALLBACK_STATE_PROCESSING, 0),
            (S.CALLBACK_STATE_COMPLETED, S.CALLBACK_REASON_NOT_AVAILABLE),
        ):
            moved = tenant.router.ReportCallbackState(
                M.ReportCallbackStateRequest(name=claimed.name, state=state, reason=reason),  # type: ignore[arg-type]
                metadata=tenant.routing,
                timeout=10,
            ).callback
        if attempt == 1:
            assert moved.state == S.CALLBACK_STATE_SCHEDULED and moved.attempt_count == 1
    done = tenant.retrieve(callback_id)
    assert (done["callbackState"], done["callbackReason"]) == ("COMPLETED", "FAIL_MAX_ATTEMPTS")


def test_offices_are_closed_on_public_holidays(tenant: Tenant) -> None:
    hours = S.OfficeHours(time_zone="America/New_York")
    hours.holiday_calendars.add(country="US")
    service = tenant.service(
        "holidays",
        office_hours=hours,
        reject_outside_office_hours=True,
        max_schedule_ahead=Duration(seconds=400 * 86400),
    )
    christmas = datetime(datetime.now(UTC).year + 1, 12, 25, 17, tzinfo=UTC)  # noon in New York
    refused = tenant.create(
        service, "+12125550290", desiredTime=christmas.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    )
    assert refused.status_code == 400, refused.text
    assert "outside office hours" in refused.json()["status"]["message"]
    assert (
        tenant.ges(
            "GET",
            f"/callbacks/open-for/{service}",
            params={"start": christmas.strftime("%Y-%m-%dT%H:%M:%S.000Z")},
        ).json()["data"]["openFor"]
        == 0
    )


def test_the_throttle_can_count_by_a_request_header_instead_of_the_number(
    tenant: Tenant,
) -> None:
    service = tenant.service("by-ip", throttle_header="X-Client-IP", throttle_per_day=1)

    def create(number: str, client_ip: str) -> int:
        return tenant.ges(
            "POST",
            "/callbacks/create",
            {"serviceName": service, "phoneNumber": number},
            headers={"x-client-ip": client_ip},
        ).status_code

    assert create("+12125550300", "203.0.113.7") == 200
    assert create("+12125550301", "203.0.113.7") == 429  # another number, the same client
    assert create("+12125550302", "203.0.113.8") == 200


def test_statistics_are_served_from_a_cache_as_ges_does(tenant: Tenant, mesh: Mesh) -> None:
    service = tenant.service("counted", in_queue_check=S.IN_QUEUE_CHECK_OFF)
    assert tenant.create(service, "+12125550310", desiredTime=in_minutes(60)).status_code == 200
    replica = next(i for i in mesh.instances if i.name == "callbacks")
    key = (("x-api-key", tenant.api_key), ("cache-control", "max-age=1"))  # below 15 s: 15 s
    with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        ges = engagement_service_pb2_grpc.EngagementServiceStub(channel)

        def scheduled() -> float:
            data = ges.GesGetStatistics(E.GesGetStatisticsRequest(), metadata=key, timeout=10).data
            return float(data["callbacks"][service]["SCHEDULED"])  # type: ignore[index,arg-type]

        assert scheduled() == 1
        assert tenant.create(service, "+12125550311", desiredTime=in_minutes(60)).status_code == 200
        assert scheduled() == 1  # the same figures until they are 15 s old
