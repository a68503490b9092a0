"""A service that needs a datastore its settings do not name fails at start, saying which."""

from __future__ import annotations

import pytest

from cxmesh_server.runtime.server import Resources
from cxmesh_server.runtime.settings import ServiceSettings


def test_a_missing_datastore_names_the_setting_to_give() -> None:
    settings = ServiceSettings(service="compliance", postgres_dsn=None, redis_url=None)
    resources = Resources(settings)
    with pytest.raises(RuntimeError, match="compliance needs CXMESH_POSTGRES_DSN"):
        resources.require_postgres()
    with pytest.raises(RuntimeError, match="compliance needs CXMESH_REDIS_URL"):
        resources.require_redis()
    with pytest.raises(RuntimeError, match="compliance needs CXMESH_REDIS_URL"):
        resources.require_redis_wire()


def test_a_configured_datastore_is_handed_out() -> None:
    pool = object()
    resources = Resources(ServiceSettings(service="lists"), postgres=pool)  # type: ignore[arg-type]
    assert resources.require_postgres() is pool
