"""`python -m cxmesh_server`: runs the service named by CXMESH_SERVICE."""

from __future__ import annotations

import os
import sys

from cxmesh_server.runtime import stop_signals
from cxmesh_server.runtime.grpc_core import prefer_legacy_io

# Before the imports, which take a second or more: a stop signal meanwhile is kept.
stop_signals.remember()
# Before anything imports grpc: gRPC core reads its experiments once, at import.
prefer_legacy_io(os.environ)

from cxmesh_server.runtime.server import serve  # noqa: E402
from cxmesh_server.services import PROCESSES  # noqa: E402


def main() -> None:
    name = os.environ.get("CXMESH_SERVICE", "")
    if name not in PROCESSES:
        sys.exit(f"CXMESH_SERVICE must be one of {sorted(PROCESSES)}, not {name!r}")
    serve(PROCESSES[name])


if __name__ == "__main__":
    main()
