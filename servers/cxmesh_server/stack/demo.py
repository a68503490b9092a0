"""The demo tenant of `make run`, seeded idempotently through the public API: the tenant,
the default rule set (US TCPA window + Regulation F 7-in-7), a demo suppression list, a
dialer API key for the OCS pre-dial validation endpoints, and for callbacks a service open
around the clock with its virtual queue, a call-in group and an API key for the GES API."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from cxmesh.callbacks.v1 import callback_pb2, callback_service_pb2, callback_service_pb2_grpc
from cxmesh.compliance.v1 import rule_set_pb2, rule_set_service_pb2, rule_set_service_pb2_grpc
from cxmesh.iam.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from cxmesh.lists.v1 import suppression_pb2, suppression_service_pb2, suppression_service_pb2_grpc
from cxmesh_server.compliance.domain.rules import preset
from cxmesh_server.runtime.devkeys import SigningKey
from cxmesh_server.stack.mesh import Mesh

DEMO_TENANT = "demo"
DEMO_SUPPRESSED_NUMBER = "+12125550199"
DEMO_CALLBACK_SERVICE = "demo-callbacks"
DEMO_QUEUE = "demo-callbacks-vq"
DEMO_CALLIN_GROUP = "demo-call-in"
DEMO_CALLIN_NUMBERS = ["+18885550100", "+18885550101", "+18885550102"]


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def seed_demo(
    mesh: Mesh, key: SigningKey, previous: dict[str, str] | None = None
) -> dict[str, str]:
    """Creates what is missing; returns the KEY=VALUE lines to publish."""
    operator = key.mint(tenant=DEMO_TENANT, roles=["platform-admin"], subject="make-run")
    admin = key.mint(tenant=DEMO_TENANT, roles=["admin"], subject="demo-admin")
    with grpc.insecure_channel(mesh.edge_target) as channel:
        try:
            tenant_service_pb2_grpc.TenantServiceStub(channel).CreateTenant(
                tenant_service_pb2.CreateTenantRequest(
                    tenant_id=DEMO_TENANT,
                    tenant=tenant_pb2.Tenant(
                        display_name="Demo tenant",
                        default_time_zone="America/New_York",
                        default_region="US",
                    ),
                    request_id="cxmesh-demo-tenant",
                ),
                metadata=_metadata(operator),
                timeout=10,
            )
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
        rules = preset(rule_set_pb2.RULE_SET_PRESET_US_TCPA_REG_F)
        rules.ClearField("name")
        rule_set_service_pb2_grpc.RuleSetServiceStub(channel).CreateRuleSet(
            rule_set_service_pb2.CreateRuleSetRequest(
                rule_set=rules, request_id="cxmesh-demo-rules"
            ),
            metadata=_metadata(admin),
            timeout=10,
        )
        suppression = suppression_service_pb2_grpc.SuppressionServiceStub(channel)
        dnc = suppression.CreateSuppressionList(
            suppression_service_pb2.CreateSuppressionListRequest(
                suppression_list=suppression_pb2.SuppressionList(display_name="Demo do-not-call"),
                request_id="cxmesh-demo-suppression",
            ),
            metadata=_metadata(admin),
            timeout=10,
        ).suppression_list
        suppression.CreateSuppressionEntries(
            suppression_service_pb2.CreateSuppressionEntriesRequest(
                parent=dnc.name,
                entries=[
                    suppression_pb2.SuppressionEntry(
                        phone_number=DEMO_SUPPRESSED_NUMBER, reason="demo"
                    )
                ],
            ),
            metadata=_metadata(admin),
            timeout=10,
        )
        dialer_key = _reused_or_new_key(
            mesh,
            channel,
            _metadata(admin),
            (previous or {}).get("CXMESH_OCS_AUTH_HEADER", "").removeprefix("x-api-key: "),
            "demo dialer (OCS)",
            "dialer",
        )
        callbacks = _seed_callbacks(mesh, channel, _metadata(admin), previous or {})
    return {
        "CXMESH_TENANT": DEMO_TENANT,
        "CXMESH_TOKEN": admin,
        "CXMESH_OCS_VALIDATION_URL": f"{mesh.edge_url}/ocs/v1/validate",
        "CXMESH_OCS_HISTORY_URL": f"{mesh.edge_url}/ocs/v1/history",
        "CXMESH_OCS_AUTH_HEADER": f"x-api-key: {dialer_key}",
        "CXMESH_DEMO_SUPPRESSED_NUMBER": DEMO_SUPPRESSED_NUMBER,
        **callbacks,
    }


def _created_or_existing(create: Callable[[], object]) -> None:
    try:
        create()
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.ALREADY_EXISTS:
            raise


def _seed_callbacks(
    mesh: Mesh,
    channel: grpc.Channel,
    admin: tuple[tuple[str, str], ...],
    previous: dict[str, str],
) -> dict[str, str]:
    """A callback service open around the clock on its virtual queue, a call-in group with
    a pool of numbers, and an API key for the GES surface."""
    config = callback_service_pb2_grpc.CallbackConfigServiceStub(channel)
    _created_or_existing(
        lambda: config.CreateVirtualQueue(
            callback_service_pb2.CreateVirtualQueueRequest(virtual_queue_id=DEMO_QUEUE),
            metadata=admin,
            timeout=10,
        )
    )
    _created_or_existing(
        lambda: config.CreateCallbackService(
            callback_service_pb2.CreateCallbackServiceRequest(
                callback_service_id=DEMO_CALLBACK_SERVICE,
                callback_service=callback_pb2.CallbackServiceConfig(
                    virtual_queue=f"virtualQueues/{DEMO_QUEUE}",
                    office_hours=callback_pb2.OfficeHours(time_zone="America/New_York"),
                ),
            ),
            metadata=admin,
            timeout=10,
        )
    )
    _created_or_existing(
        lambda: config.CreateCallInGroup(
            callback_service_pb2.CreateCallInGroupRequest(
                call_in_group_id=DEMO_CALLIN_GROUP,
                call_in_group=callback_pb2.CallInGroup(phone_numbers=DEMO_CALLIN_NUMBERS),
            ),
            metadata=admin,
            timeout=10,
        )
    )
    api_key = _reused_or_new_key(
        mesh,
        channel,
        admin,
        previous.get("CXMESH_API_KEY", ""),
        "demo web widget (GES)",
        "engagement",
    )
    return {
        "CXMESH_API_KEY": api_key,
        "CXMESH_CALLBACK_SERVICE": DEMO_CALLBACK_SERVICE,
        "CXMESH_VIRTUAL_QUEUE": DEMO_QUEUE,
        "CXMESH_CALLIN_GROUP": DEMO_CALLIN_GROUP,
        "CXMESH_GES_URL": f"{mesh.edge_url}/engagement/v3",
    }


def _reused_or_new_key(
    mesh: Mesh,
    channel: grpc.Channel,
    admin: tuple[tuple[str, str], ...],
    previous: str,
    display_name: str,
    role: str,
) -> str:
    """The key of the previous run while it still works, else a new one with `role`."""
    if previous and _key_works(mesh, previous):
        return previous
    return (
        api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
        .CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name=display_name, roles=[role])
            ),
            metadata=admin,
            timeout=10,
        )
        .key
    )


def _key_works(mesh: Mesh, api_key: str) -> bool:
    response = httpx.post(
        f"{mesh.edge_url}/v1/echo",
        json={"message": "ping"},
        headers={"x-api-key": api_key},
        timeout=5,
    )
    return response.status_code == 200


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = " ".join(shlex.split(value)) if value.strip() else ""
    return values


def write_env_file(path: Path, lines: dict[str, str]) -> Path:
    """KEY=VALUE lines, quoted where needed, so the file can be sourced by a shell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{name}={shlex.quote(value)}\n" for name, value in lines.items()))
    return path
