"""`make run`: the whole mesh on this machine, ready to call.

Starts Postgres and Redis (embedded, data under .cxmesh/, or external ones from
CXMESH_POSTGRES_DSN / CXMESH_REDIS_URL), every service and Envoy; waits until all are
healthy; seeds the demo tenant (unless CXMESH_DEMO=0); prints the edge URL and a
development token and writes them to .cxmesh/demo.env; stops everything on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cxmesh_server.runtime.devkeys import ensure_dev_key
from cxmesh_server.stack.datastores import start_postgres, start_redis
from cxmesh_server.stack.demo import read_env_file, seed_demo, write_env_file
from cxmesh_server.stack.mesh import REPO_ROOT, Mesh, MeshOptions
from cxmesh_server.stack.ports import is_listening


def state_dir() -> Path:
    return Path(os.environ.get("CXMESH_STATE_DIR", REPO_ROOT / ".cxmesh")).resolve()


@contextmanager
def datastores(state: Path) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        dsn = os.environ.get("CXMESH_POSTGRES_DSN")
        if not dsn:
            postgres = start_postgres(state / "postgres")
            stack.callback(postgres.stop)
            dsn = postgres.dsn
        url = os.environ.get("CXMESH_REDIS_URL")
        if not url:
            port = int(os.environ.get("CXMESH_REDIS_PORT", "6380"))
            if is_listening("127.0.0.1", port):
                sys.exit(f"port {port} is taken: set CXMESH_REDIS_PORT or CXMESH_REDIS_URL")
            redis = start_redis(state / "redis", port)
            stack.callback(redis.stop)
            url = redis.url
        yield dsn, url


def main() -> None:
    started = time.monotonic()
    state = state_dir()
    edge_port = int(os.environ.get("CXMESH_EDGE_PORT", "8080"))
    if is_listening("127.0.0.1", edge_port):
        sys.exit(f"port {edge_port} is taken: stop what uses it or set CXMESH_EDGE_PORT")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    key, jwks = ensure_dev_key(state / "keys")
    with datastores(state) as (dsn, redis_url):
        mesh = Mesh(
            MeshOptions(
                state_dir=state,
                postgres_dsn=dsn,
                redis_url=redis_url,
                jwks_file=jwks,
                edge_port=edge_port,
                edge_admin_port=int(os.environ.get("CXMESH_EDGE_ADMIN_PORT", "9901")),
                base_port=int(os.environ.get("CXMESH_BASE_PORT", "50051")),
                extra_env={
                    "CXMESH_DROP_DIR": os.environ.get("CXMESH_DROP_DIR", str(state / "drop"))
                },
            )
        )
        try:
            mesh.start(timeout=90)
            lines = {"CXMESH_EDGE_URL": mesh.edge_url}
            if os.environ.get("CXMESH_DEMO", "1") != "0":
                lines |= seed_demo(mesh, key, read_env_file(state / "demo.env"))
            env_file = write_env_file(state / "demo.env", lines)
            print(f"cxmesh ready in {time.monotonic() - started:.1f} s")
            for name, value in lines.items():
                print(f"  {name}={value}")
            print(f"  (written to {env_file}; logs in {mesh.logs})")
            print("Ctrl-C stops everything.", flush=True)
            while not stop.is_set():
                stop.wait(1.0)
                mesh.raise_if_exited()
        finally:
            print("stopping…", flush=True)
            mesh.stop()


if __name__ == "__main__":
    main()
