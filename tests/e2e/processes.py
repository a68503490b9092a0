"""A service's processes as /proc shows them (Linux)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def worker_processes(pid: int) -> list[int]:
    """The multiprocessing children of a process (service workers, import workers), not
    multiprocessing's resource tracker."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if not children.exists():
        return []
    return [
        int(child)
        for child in children.read_text().split()
        if b"spawn_main" in read_or_empty(Path(f"/proc/{child}/cmdline"))
    ]


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    stat = read_or_empty(Path(f"/proc/{pid}/stat"))
    return not stat or stat.rsplit(b")", 1)[1].split()[0] == b"Z"


def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # ended meanwhile
        return b""
