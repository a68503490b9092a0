"""Where the CLI sends its calls: the edge URL and a bearer token, from the environment or
the `.cxmesh/demo.env` that `make run` writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc


@dataclass(frozen=True)
class Connection:
    target: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", 8 << 20)]
        )


def _env_file(state_dir: Path) -> dict[str, str]:
    from cxmesh_server.stack.demo import read_env_file

    return read_env_file(state_dir / "demo.env")


def connect(edge_url: str | None, token: str | None, state_dir: Path) -> Connection:
    saved = _env_file(state_dir)
    url = (
        edge_url
        or os.environ.get("CXMESH_EDGE_URL")
        or saved.get("CXMESH_EDGE_URL")
        or "http://127.0.0.1:8080"
    )
    bearer = token or os.environ.get("CXMESH_TOKEN") or saved.get("CXMESH_TOKEN")
    if not bearer:
        raise SystemExit("no token: set CXMESH_TOKEN, pass --token, or run `make run` first")
    parsed = urlparse(url)
    return Connection(target=f"{parsed.hostname}:{parsed.port or 80}", token=bearer)
