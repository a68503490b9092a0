"""The Redis key layout: every key carries its tenant as a cluster hash tag."""

from __future__ import annotations

import pytest

from cxmesh_server.runtime.redis import tenant_key


def test_tenant_keys_carry_the_tenant_as_a_hash_tag() -> None:
    assert tenant_key("acme", "lists", "suppr", "phone") == "cx:{acme}:lists:suppr:phone"


@pytest.mark.parametrize("tenant", ["", "a}b"])
def test_a_key_without_a_proper_tenant_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError):
        tenant_key(tenant, "lists")
