"""Work a caller stops waiting for (a recording of attempts whose dialer's deadline passed)
goes on to its end, and a shutdown waits for it before it closes the pools it uses."""

from __future__ import annotations

import asyncio

import pytest

from cxmesh_server.runtime.server import finish_unabandoned, run_to_completion


async def test_work_goes_on_when_its_caller_stops_waiting_and_shutdown_waits_for_it() -> None:
    done = asyncio.Event()

    async def recording() -> int:
        await asyncio.sleep(0.05)
        done.set()
        return 1

    caller = asyncio.create_task(run_to_completion(recording()))
    await asyncio.sleep(0)  # the work has begun
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not done.is_set()
    assert await finish_unabandoned(5) == 0
    assert done.is_set()


async def test_shutdown_waits_no_longer_than_it_is_given() -> None:
    caller = asyncio.create_task(run_to_completion(asyncio.sleep(60)))
    await asyncio.sleep(0)
    caller.cancel()
    assert await finish_unabandoned(0.05) == 1  # left unfinished, and said so


async def test_a_caller_still_waiting_gets_the_result_or_the_error() -> None:
    async def failing() -> None:
        raise ValueError("no")

    assert await run_to_completion(asyncio.sleep(0, result=7)) == 7
    with pytest.raises(ValueError):
        await run_to_completion(failing())
