"""Pure rules of the runtime: roles, log redaction, method auth rules."""

from __future__ import annotations

import io
import json
import logging

from cxmesh_server.runtime.auth import method_rule
from cxmesh_server.runtime.logging import configure_logging, mask_phone
from cxmesh_server.runtime.roles import grants


def test_admin_gets_everything_in_the_tenant_but_not_tenant_creation() -> None:
    admin = frozenset({"admin"})
    assert grants(admin, "lists.contactLists.create")
    assert grants(admin, "iam.apiKeys.revoke")
    assert not grants(admin, "iam.tenants.create")


def test_viewer_reads_only() -> None:
    viewer = frozenset({"viewer"})
    assert grants(viewer, "lists.contactLists.get")
    assert grants(viewer, "campaigns.campaigns.list")
    assert not grants(viewer, "lists.contactLists.create")


def test_unknown_roles_grant_nothing() -> None:
    assert not grants(frozenset({"superuser"}), "lists.contactLists.get")


def test_every_rpc_of_the_contracts_has_an_auth_rule() -> None:
    from google.protobuf import descriptor_pool

    from cxmesh_server.runtime.api import all_service_names

    pool = descriptor_pool.Default()
    for service_name in all_service_names():
        for method in pool.FindServiceByName(service_name).methods:
            rule = method_rule(f"/{service_name}/{method.name}")
            assert rule.permission, f"{service_name}.{method.name} has no permission"


def test_methods_outside_the_contracts_are_denied() -> None:
    rule = method_rule("/cxmesh.nothing.v1.Nope/Call")
    assert not rule.public and not rule.permission


def test_phone_numbers_are_masked() -> None:
    assert mask_phone("calling +14155550123 now") == "calling +141******** now"
    assert "555-0123" not in mask_phone("(415) 555-0123")
    assert "5550123" not in mask_phone("dial 415-555-0123")


def test_logs_are_json_with_no_full_phone_number() -> None:
    stream = io.StringIO()
    configure_logging("test")
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("x").info("dialing %s", "+14155550123")
    record = json.loads(stream.getvalue())
    assert record["service"] == "test"
    assert "4155550123" not in record["message"]
