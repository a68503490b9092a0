"""Concurrent live decisions share one read: each caller gets exactly its own answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import uvloop

from cxmesh_server.compliance.coalescer import NO_WAIT, Coalescer, Wait


class Fixed:
    """A loop that is saturated or not, as the test says; it counts the calls it is told of."""

    def __init__(self, saturated: bool) -> None:
        self.is_saturated = saturated
        self.calls = 0

    def count(self, calls: int = 1) -> None:
        self.calls += calls

    def saturated(self) -> bool:
        return self.is_saturated


class Recorder:
    def __init__(self, fail_on: str | None = None, round_trip: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.round_trip = round_trip

    async def run(self, key: str, requests: Sequence[str]) -> list[str]:
        self.batches.append(list(requests))
        await asyncio.sleep(self.round_trip)  # during which more callers arrive
        if self.fail_on in requests:
            raise RuntimeError("redis exploded")
        return [f"{key}:{r}" for r in requests]


async def test_callers_arriving_during_a_read_share_the_next_one() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run)
    first = asyncio.create_task(coalescer.submit("t", ["a"]))
    await asyncio.sleep(0)  # the first read is now in flight
    rest = [asyncio.create_task(coalescer.submit("t", [name])) for name in "bcd"]
    answers = await asyncio.gather(first, *rest)
    assert answers == [["t:a"], ["t:b"], ["t:c"], ["t:d"]]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_each_caller_gets_its_own_slice_of_a_batch() -> None:
    coalescer = Coalescer(Recorder().run)
    answers = await asyncio.gather(
        coalescer.submit("t", ["a", "b"]), coalescer.submit("t", ["c"]), coalescer.submit("t", [])
    )
    assert list(answers) == [["t:a", "t:b"], ["t:c"], []]


async def test_tenants_are_never_mixed_in_one_read() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run)
    answers = await asyncio.gather(coalescer.submit("t1", ["a"]), coalescer.submit("t2", ["b"]))
    assert list(answers) == [["t1:a"], ["t2:b"]]
    assert sorted(recorder.batches) == [["a"], ["b"]]


async def test_a_batch_never_exceeds_the_maximum_and_never_splits_a_caller() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run, max_batch=4)
    calls = [coalescer.submit("t", [f"{n}a", f"{n}b", f"{n}c"]) for n in range(5)]
    calls.append(coalescer.submit("t", [f"big{n}" for n in range(6)]))  # a batch of its own
    answers = await asyncio.gather(*calls)
    assert answers[2] == ["t:2a", "t:2b", "t:2c"]
    assert len(answers[5]) == 6
    assert all(len(batch) <= 4 for batch in recorder.batches if not batch[0].startswith("big"))


async def test_a_failed_read_fails_its_callers_only() -> None:
    coalescer = Coalescer(Recorder(fail_on="bad").run)
    first = asyncio.create_task(coalescer.submit("t", ["x"]))
    await asyncio.sleep(0)
    bad = asyncio.create_task(coalescer.submit("t", ["bad"]))
    await first
    with pytest.raises(RuntimeError, match="redis exploded"):
        await bad
    assert await coalescer.submit("t", ["later"]) == ["t:later"]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    coalescer = Coalescer(Recorder().run)
    first = asyncio.create_task(coalescer.submit("t", ["a"]))
    await asyncio.sleep(0)
    gone = asyncio.create_task(coalescer.submit("t", ["b"]))
    kept = asyncio.create_task(coalescer.submit("t", ["c"]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == ["t:a"]
    assert await kept == ["t:c"]
    assert gone.cancelled()


async def test_a_lone_caller_never_lingers_even_when_the_loop_is_saturated() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, max_linger=0.004, load=Fixed(True))
    for name in "abc":
        assert coalescer.wait("t") == NO_WAIT
        assert await coalescer.submit("t", [name]) == [f"t:{name}"]
        await asyncio.sleep(0.02)  # callers far apart
    assert recorder.batches == [["a"], ["b"], ["c"]]


async def called_often(coalescer: Coalescer[str, str], recorder: Recorder) -> None:
    """Many callers at once: the key's callers come often from now on."""
    await asyncio.gather(*(coalescer.submit("t", [f"w{n}"]) for n in range(50)))
    recorder.batches.clear()


async def read_together(coalescer: Coalescer[str, str], recorder: Recorder) -> bool:
    """Whether a caller and one 50 ms after it share a read."""
    first = asyncio.create_task(coalescer.submit("t", ["x"]))
    await asyncio.sleep(0.05)  # without a wait, "x" would have been read alone by now
    second = asyncio.create_task(coalescer.submit("t", ["y"]))
    assert list(await asyncio.gather(first, second)) == [["t:x"], ["t:y"]]
    return recorder.batches == [["x", "y"]]


async def test_below_saturation_frequent_callers_wait_only_passes_of_the_loop() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, max_linger=30.0, steady_passes=2, load=Fixed(False))
    await called_often(coalescer, recorder)
    assert coalescer.wait("t") == Wait(passes=2)  # never the saturated loop's 30 s for 16
    # Callers the loop already holds join the batch: no timer, so the read goes at once.
    answers = await asyncio.wait_for(
        asyncio.gather(*(coalescer.submit("t", [name]) for name in "abc")), 5
    )
    assert list(answers) == [["t:a"], ["t:b"], ["t:c"]]
    assert recorder.batches == [["a", "b", "c"]]


async def test_below_saturation_a_caller_a_moment_later_is_not_waited_for() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, max_linger=30.0, load=Fixed(False))
    await called_often(coalescer, recorder)
    assert not await read_together(coalescer, recorder)
    assert recorder.batches == [["x"], ["y"]]


async def test_below_saturation_callers_further_apart_than_the_steady_gap_never_wait() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, steady_gap=0.005, load=Fixed(False))
    for name in "abcdef":
        assert await coalescer.submit("t", [name]) == [f"t:{name}"]
        await asyncio.sleep(0.02)  # 50 callers a second: nobody to wait for
    assert coalescer.wait("t") == NO_WAIT
    assert recorder.batches == [[name] for name in "abcdef"]


async def test_when_saturated_a_batch_waits_for_the_callers_about_to_arrive() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, max_linger=0.2, load=Fixed(True))
    await called_often(coalescer, recorder)
    assert coalescer.wait("t").linger == 0.2
    assert await read_together(coalescer, recorder)
    assert coalescer.wait("other") == NO_WAIT  # each tenant's callers are counted on their own


async def test_when_saturated_callers_already_waiting_are_read_at_once() -> None:
    recorder = Recorder(round_trip=0)
    coalescer = Coalescer(recorder.run, max_linger=30.0, batch_target=4, load=Fixed(True))
    await asyncio.gather(*(coalescer.submit("t", [f"w{n}"]) for n in range(50)))
    assert coalescer.wait("t").linger == 30.0  # a short batch would wait up to 30 s
    recorder.batches.clear()
    answers = await asyncio.wait_for(
        asyncio.gather(*(coalescer.submit("t", [name]) for name in "abcd")), 5
    )
    assert list(answers) == [["t:a"], ["t:b"], ["t:c"], ["t:d"]]
    assert recorder.batches == [["a", "b", "c", "d"]]


async def test_a_caller_with_nobody_reading_reads_in_its_own_task() -> None:
    readers: list[asyncio.Task[object] | None] = []

    async def run(key: str, requests: Sequence[str]) -> list[str]:
        readers.append(asyncio.current_task())
        await asyncio.sleep(0.01)
        return list(requests)

    coalescer = Coalescer(run, load=Fixed(False))
    first = asyncio.create_task(coalescer.submit("t", ["a"]))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.submit("t", [name])) for name in "bc"]
    assert await asyncio.gather(first, *later) == [["a"], ["b"], ["c"]]
    # The first read ran in the caller's task; the two that came meanwhile were read
    # together, by a task of the coalescer's own.
    assert readers[0] is first
    assert len(readers) == 2 and readers[1] not in (first, *later)


async def test_a_cancelled_lone_reader_hands_the_callers_behind_it_on() -> None:
    coalescer = Coalescer(Recorder().run, load=Fixed(False))
    first = asyncio.create_task(coalescer.submit("t", ["a"]))
    await asyncio.sleep(0)
    behind = asyncio.create_task(coalescer.submit("t", ["b"]))
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.wait_for(behind, 5) == ["t:b"]
    assert first.cancelled()


async def test_the_load_is_told_of_every_call_so_it_knows_what_a_call_costs() -> None:
    load = Fixed(False)
    coalescer = Coalescer(Recorder(round_trip=0).run, max_batch=10, load=load)
    await asyncio.gather(*(coalescer.submit("t", [f"w{n}"]) for n in range(7)))
    await coalescer.submit("t", ["a", "b"])  # a call of two requests is one call
    assert load.calls == 8


def test_the_steady_wait_is_the_same_on_uvloop_as_in_these_tests() -> None:
    """Services run uvloop, whose timers count whole milliseconds: a sub-millisecond timer
    there fires at once. The steady wait uses no timer, so it means the same on both."""

    async def scenario() -> list[list[str]]:
        recorder = Recorder(round_trip=0)
        coalescer = Coalescer(recorder.run, max_linger=30.0, load=Fixed(False))
        await called_often(coalescer, recorder)
        await asyncio.gather(*(coalescer.submit("t", [name]) for name in "abc"))
        assert not await read_together(coalescer, recorder)
        return recorder.batches

    assert uvloop.run(scenario()) == [["a", "b", "c"], ["x"], ["y"]]
