"""Every service process of the mesh, by name.

Services that later issues implement run with health and reflection only until then:
their RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations

from cxmesh_server.callbacks.bootstrap import PROCESS as CALLBACKS
from cxmesh_server.compliance.bootstrap import PROCESS as COMPLIANCE
from cxmesh_server.iam.bootstrap import PROCESS as IAM
from cxmesh_server.lists.bootstrap import PROCESS as LISTS
from cxmesh_server.runtime.api import PACKAGES_BY_PROCESS
from cxmesh_server.runtime.server import ServiceProcess

PROCESSES: dict[str, ServiceProcess] = {
    name: ServiceProcess(name=name) for name in PACKAGES_BY_PROCESS
} | {"iam": IAM, "lists": LISTS, "compliance": COMPLIANCE, "callbacks": CALLBACKS}
