"""The cxmesh API as generated from protos/: every service name, by package.

Importing this module loads every generated file into the default descriptor pool, which
reflection and the per-RPC auth rules read.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import cxmesh

# Which process serves which proto packages.
PACKAGES_BY_PROCESS: dict[str, tuple[str, ...]] = {
    "iam": ("cxmesh.iam.v1", "cxmesh.diagnostics.v1"),
    "lists": ("cxmesh.lists.v1",),
    "compliance": ("cxmesh.compliance.v1",),
    "campaigns": ("cxmesh.campaigns.v1",),
    "scheduler": ("cxmesh.scheduler.v1",),
    "messaging": ("cxmesh.messaging.v1",),
    "callbacks": ("cxmesh.callbacks.v1",),
}


@cache
def _service_names_by_package() -> dict[str, tuple[str, ...]]:
    names: dict[str, list[str]] = {}
    for module_info in pkgutil.walk_packages(cxmesh.__path__, prefix="cxmesh."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        descriptor = module.DESCRIPTOR
        for service in descriptor.services_by_name.values():
            names.setdefault(descriptor.package, []).append(service.full_name)
    return {package: tuple(sorted(services)) for package, services in names.items()}


def all_service_names() -> list[str]:
    return sorted(name for names in _service_names_by_package().values() for name in names)


def service_names_of(process: str) -> list[str]:
    by_package = _service_names_by_package()
    return [
        name for package in PACKAGES_BY_PROCESS[process] for name in by_package.get(package, ())
    ]
