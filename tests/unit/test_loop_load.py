"""The loop counts as saturated from its thread's demand for a CPU, and stays so until the
calls arriving would fit in the loop at what a call cost before."""

from __future__ import annotations

import time

import pytest

from cxmesh_server.runtime.loop_load import LoopLoad, thread_demand


class Clocks:
    """Wall and CPU time that the test advances by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0

    def run(self, seconds: float, share: float) -> None:
        self.wall += seconds
        self.cpu += seconds * share


def gauge(clocks: Clocks) -> LoopLoad:
    return LoopLoad(
        window=0.2,
        saturated_share=0.9,
        relieved_share=0.8,
        cpu=lambda: clocks.cpu,
        clock=lambda: clocks.wall,
    )


def serve(load: LoopLoad, clocks: Clocks, seconds: float, share: float, calls: int) -> None:
    """`calls` calls over `seconds` that keep the loop `share` busy."""
    clocks.run(seconds, share)
    load.count(calls)


def test_a_mostly_idle_loop_is_not_saturated() -> None:
    clocks = Clocks()
    load = gauge(clocks)
    clocks.run(0.2, share=0.5)
    assert not load.saturated()


def test_a_loop_busy_all_the_window_is_saturated_until_the_calls_would_fit_unbatched() -> None:
    clocks = Clocks()
    load = gauge(clocks)
    serve(load, clocks, 0.2, share=0.99, calls=1000)  # 198 µs of loop a call
    assert load.saturated()
    serve(load, clocks, 0.2, share=0.6, calls=1000)  # batched: cheaper a call, as many calls
    assert load.saturated()
    serve(load, clocks, 0.2, share=0.5, calls=800)  # 0.79 of the loop at 198 µs a call
    assert not load.saturated()
    serve(load, clocks, 0.2, share=0.85, calls=850)  # below the turn-on share: stays off
    assert not load.saturated()


def test_batching_that_idles_the_loop_does_not_switch_it_off_while_the_calls_keep_coming() -> None:
    # With batches of 16 the loop idled while a batch gathered: demand fell to ~0.6, and
    # a verdict taken from demand switched the batching off every other second.
    clocks = Clocks()
    load = defaults(clocks)
    serve(load, clocks, 1.0, share=0.97, calls=5000)
    assert load.saturated()
    for _ in range(10):
        serve(load, clocks, 1.0, share=0.6, calls=5000)
        assert load.saturated()
    serve(load, clocks, 1.0, share=0.4, calls=4300)  # the load fell: 0.83 unbatched
    assert not load.saturated()


def test_a_stutter_that_turned_it_on_at_half_load_does_not_keep_it_on() -> None:
    clocks = Clocks()
    load = defaults(clocks)
    for _ in range(5):
        serve(load, clocks, 1.0, share=0.84, calls=2000)  # half load: 420 µs a call
        assert not load.saturated()
    serve(load, clocks, 1.0, share=0.95, calls=2000)  # the machine stuttered
    assert load.saturated()
    serve(load, clocks, 1.0, share=0.7, calls=2000)  # 0.84 unbatched, as before the stutter
    assert not load.saturated()


def test_the_verdict_changes_at_most_once_per_window() -> None:
    clocks = Clocks()
    load = gauge(clocks)
    clocks.run(0.1, share=1.0)
    assert not load.saturated()  # half a window: too early to tell
    clocks.run(0.11, share=1.0)
    assert load.saturated()


def test_an_idle_pause_ends_saturation() -> None:
    clocks = Clocks()
    load = gauge(clocks)
    clocks.run(0.2, share=1.0)
    assert load.saturated()
    clocks.run(5.0, share=0.0)
    assert not load.saturated()


def defaults(clocks: Clocks) -> LoopLoad:
    return LoopLoad(cpu=lambda: clocks.cpu, clock=lambda: clocks.wall)


def asked_often(
    load: LoopLoad, clocks: Clocks, seconds: float, share: float, calls_per_ms: int = 1
) -> set[bool]:
    """The verdicts given when asked at every call, as the coalescer asks at load."""
    verdicts = set()
    for _ in range(round(seconds * 1000)):
        clocks.run(0.001, share)
        load.count(calls_per_ms)
        verdicts.add(load.saturated())
    return verdicts


def test_a_stutter_at_half_load_does_not_count_as_saturation() -> None:
    # Half the saturating rate keeps the loop ~0.8 busy; a stutter of the machine makes one
    # fifth of a second look fully busy. A linger switched on there lifts the p99 (measured).
    clocks = Clocks()
    load = defaults(clocks)
    for _ in range(10):
        assert asked_often(load, clocks, 0.8, share=0.8) == {False}
        assert asked_often(load, clocks, 0.2, share=1.0) == {False}


def test_sustained_saturation_turns_it_on_within_a_second_and_dips_do_not_end_it() -> None:
    clocks = Clocks()
    load = defaults(clocks)
    asked_often(load, clocks, 1.01, share=0.97)
    assert load.saturated()
    assert asked_often(load, clocks, 0.8, share=0.97) == {True}
    assert asked_often(load, clocks, 0.2, share=0.6) == {True}  # a slower fifth of a second
    asked_often(load, clocks, 1.01, share=0.97)
    assert load.saturated()
    asked_often(load, clocks, 2.01, share=0.75, calls_per_ms=0)  # the calls went away
    assert not load.saturated()


def test_a_window_without_calls_ends_saturation() -> None:
    clocks = Clocks()
    load = gauge(clocks)
    serve(load, clocks, 0.2, share=1.0, calls=0)  # busy with something else than calls
    assert load.saturated()
    serve(load, clocks, 0.2, share=1.0, calls=10)
    assert not load.saturated()  # nothing known of what a call costs: nothing to batch for


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        LoopLoad(saturated_share=0.5, relieved_share=0.8)


def test_a_spinning_thread_demands_all_of_the_wall_time_and_a_sleeping_one_none() -> None:
    start, began = thread_demand(), time.monotonic()
    while time.monotonic() - began < 0.2:
        pass
    spun = thread_demand() - start
    assert spun >= 0.15  # ran or waited for a core all along (other tests may share it)
    start = thread_demand()
    time.sleep(0.2)
    assert thread_demand() - start < 0.05


def test_it_reads_the_calling_threads_real_demand() -> None:
    # Windows of spinning, each read at its end. The kernel brings a running thread's
    # schedstat up to date at its ticks (4 ms here): a 0.05 s window read a spinning thread
    # as 0.96 or 1.04 busy, and 0.25 s ones read it at 0.98-1.01. Windows after a saturated
    # one are judged by the relief rule against the first one's cost per spin, which the
    # spins' own jitter can cross (both made this test fail 3 and 1 times in 15 runs). Time
    # the VM's host steals is neither run nor waited by the thread: a window with more than
    # 8 % stolen reads unsaturated (the test failed once in 4 full suites and once beside
    # the e2e tests on 12-04), so the spinning goes on until a window reads saturated.
    load = LoopLoad(window=0.25)
    deadline = time.monotonic() + 2.0
    saturated = False
    while not saturated and time.monotonic() < deadline:  # spins: all its wall time is CPU
        load.count()
        saturated = load.saturated()
    assert saturated
    time.sleep(0.3)  # and now it waits, with no calls
    assert not load.saturated()
