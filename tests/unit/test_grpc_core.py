"""gRPC core's I/O engine: services run on its legacy I/O manager unless the operator
chose GRPC_EXPERIMENTS, and the choice is in the environment before grpc is imported (gRPC
core reads it once, at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from cxmesh_server.runtime.grpc_core import LEGACY_IO_EXPERIMENTS, prefer_legacy_io


def test_without_an_operators_choice_the_event_engine_io_is_turned_off() -> None:
    environ: dict[str, str] = {}
    prefer_legacy_io(environ)
    assert environ["GRPC_EXPERIMENTS"].split(",") == list(LEGACY_IO_EXPERIMENTS)
    assert all(name.startswith("-") for name in LEGACY_IO_EXPERIMENTS)


def test_an_operators_choice_is_kept_even_an_empty_one() -> None:
    for chosen in ("event_engine_listener", ""):
        environ = {"GRPC_EXPERIMENTS": chosen}
        prefer_legacy_io(environ)
        assert environ == {"GRPC_EXPERIMENTS": chosen}


# Records GRPC_EXPERIMENTS at the moment anything first imports grpc.
_WATCH_GRPC_IMPORT = textwrap.dedent(
    """
    import importlib.abc, json, os, sys

    seen = {}

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "grpc" and "at_import" not in seen:
                seen["at_import"] = os.environ.get("GRPC_EXPERIMENTS")
            return None

    sys.meta_path.insert(0, Watch())
    import cxmesh_server.__main__
    print(json.dumps(seen))
    """
)


def test_the_service_entry_point_chooses_before_grpc_is_imported() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    output = subprocess.run(
        [sys.executable, "-c", _WATCH_GRPC_IMPORT],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(output) == {"at_import": ",".join(LEGACY_IO_EXPERIMENTS)}
