"""SIGTERM and SIGINT as a request to stop, from the first moment of the process.

Kubernetes stops a pod with SIGTERM to the container's PID 1, and the kernel drops a
signal PID 1 has no handler for: a service signalled while it was still importing,
migrating or loading would run on until the kubelet's SIGKILL, a whole grace period
later. So the handler is installed before anything heavy is imported (`remember`), and the
event loop takes over what it remembered (`stop_requested`).

Deliberately free of heavy imports: `python -m cxmesh_server` imports this first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []


def _note(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def remember() -> None:
    """Until an event loop takes over, a stop signal is only noted."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)


def received() -> bool:
    """Whether a stop signal came before the loop took over."""
    return bool(_received)


def stop_requested() -> asyncio.Event:
    """An event of the running loop, set by a stop signal from now on, or already set if
    one came before."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if _received:
        stop.set()
    return stop


def with_parent(signum: int) -> None:
    """In a child process (a service worker, an import worker): the kernel sends it
    `signum` when its parent ends, however it ends. A parent killed -9 (the OOM killer, a
    test) otherwise leaves its children running for good: service workers holding the
    port with old code, import workers stuck on a queue nobody reads. Linux only."""
    if sys.platform != "linux":
        return
    import multiprocessing

    import pyprctl

    pyprctl.set_pdeathsig(signum)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signum)  # the parent ended before the kernel was asked
