"""Redis mirrors of Postgres data survive Redis losing them: a service checks its mirror's
loaded marker and rebuilds the mirror whenever the marker is gone (Redis flushed,
replaced, or restarted without persistence)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cxmesh_server.runtime.logging import repeating

log = logging.getLogger(__name__)


async def keep_loaded(
    mirror: str,
    is_loaded: Callable[[], Awaitable[bool]],
    rebuild: Callable[[], Awaitable[object]],
    every_seconds: float,
    repair: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Runs for the process's life (`start_background`); `mirror` names it in the logs.
    `repair`, when given, mends what a writer left half done, at each check."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            if not await is_loaded():
                log.warning("mirror missing; rebuilding from Postgres", extra={"mirror": mirror})
                await rebuild()
            elif repair is not None:
                await repair()
        except Exception:
            log.exception("mirror check failed; retrying", extra=repeating(mirror=mirror))
