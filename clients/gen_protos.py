"""Generates the Python client package and Envoy's descriptor set from protos/.

One step, one set of inputs: messages (`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`), type
stubs (`.pyi`, from mypy-protobuf) into clients/cxmesh/, and build/cxmesh.binpb for Envoy's
gRPC-JSON transcoder. The googleapis protos come from the googleapis-common-protos package
and are copied to build/googleapis/ so that buf can lint against them offline.

Generated files are never committed or edited: run `make gen`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
CLIENT_PACKAGE = ROOT / "clients" / "cxmesh"
BUILD = ROOT / "build"
GOOGLEAPIS = BUILD / "googleapis"
DESCRIPTOR_SET = BUILD / "cxmesh.binpb"
# The googleapis folders our protos import from, plus google/rpc for error details that
# Envoy renders only when their types are in the descriptor set.
GOOGLEAPIS_DIRS = ("google/api", "google/rpc", "google/type")
EXTRA_DESCRIPTOR_FILES = ("google/rpc/error_details.proto", "google/rpc/status.proto")


def googleapis_source() -> Path:
    import google.api.annotations_pb2 as annotations

    return Path(annotations.__file__).resolve().parent.parent.parent


def copy_googleapis() -> None:
    source = googleapis_source()
    if GOOGLEAPIS.exists():
        shutil.rmtree(GOOGLEAPIS)
    for folder in GOOGLEAPIS_DIRS:
        target = GOOGLEAPIS / folder
        target.mkdir(parents=True)
        for proto in (source / folder).glob("*.proto"):
            shutil.copy2(proto, target / proto.name)


def run_protoc(args: list[str]) -> None:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    command = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{GOOGLEAPIS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        *args,
    ]
    if protoc.main(command) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args[:3])} …")


def ensure_packages(root: Path) -> None:
    """Adds the __init__.py files protoc does not write (namespace dirs are not enough
    for setuptools' package discovery and for mypy)."""
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        if folder.name == "__pycache__":
            continue
        (folder / "__init__.py").touch()
    (root / "py.typed").touch()


def main() -> None:
    copy_googleapis()
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if CLIENT_PACKAGE.exists():
        shutil.rmtree(CLIENT_PACKAGE)
    out = CLIENT_PACKAGE.parent
    run_protoc(
        [
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *sources,
        ]
    )
    ensure_packages(CLIENT_PACKAGE)
    (CLIENT_PACKAGE / "__init__.py").write_text(
        '"""cxmesh API: generated messages and gRPC stubs. Do not edit; run `make gen`."""\n'
    )
    BUILD.mkdir(exist_ok=True)
    run_protoc(
        [
            "--include_imports",
            f"--descriptor_set_out={DESCRIPTOR_SET}",
            *sources,
            *EXTRA_DESCRIPTOR_FILES,
        ]
    )
    print(f"generated {len(sources)} protos into {CLIENT_PACKAGE} and {DESCRIPTOR_SET}")


if __name__ == "__main__":
    main()
