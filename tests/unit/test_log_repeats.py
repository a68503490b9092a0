"""A log a request or a retry can cause is written once a period while it repeats, with
how many like it were not; every other log is written as it comes."""

from __future__ import annotations

import logging

from cxmesh_server.runtime.logging import RepeatLimitFilter, repeating


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _record(
    message: str,
    *args: object,
    extra: dict[str, object] | None = None,
    logger: str = "cxmesh_server.x",
) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra or {})
    return record


def test_a_repeating_log_is_written_once_a_period_and_then_says_how_many_were_not() -> None:
    clock = Clock()
    limit = RepeatLimitFilter(10.0, clock)
    down = "attempts not stored: Postgres failed"

    assert limit.filter(_record(down, extra=repeating(tenant="t1")))
    assert not any(limit.filter(_record(down, extra=repeating(tenant="t2"))) for _ in range(4_999))
    clock.now += 9.9
    assert not limit.filter(_record(down, extra=repeating()))
    clock.now += 0.1
    written = _record(down, extra=repeating())
    assert limit.filter(written)
    assert written.not_logged == 5_000  # type: ignore[attr-defined]


def test_logs_not_marked_repeating_are_all_written() -> None:
    limit = RepeatLimitFilter(10.0, Clock())
    changes = [
        _record("compliance health changed", extra={"serving": s}) for s in (False, True, False)
    ]
    assert all(limit.filter(record) for record in changes)


def test_each_message_of_a_repeating_log_has_its_own_period() -> None:
    limit = RepeatLimitFilter(10.0, Clock())
    assert limit.filter(_record("unhandled error in %s", "/a/A", extra=repeating()))
    assert limit.filter(_record("unhandled error in %s", "/b/B", extra=repeating()))
    assert not limit.filter(_record("unhandled error in %s", "/a/A", extra=repeating()))


def test_grpcs_own_logs_repeat_by_template_whatever_their_arguments() -> None:
    limit = RepeatLimitFilter(10.0, Clock())
    sent = "Failed sending error status from server: %s"
    assert limit.filter(_record(sent, "peer 1", logger="grpc._cython.cygrpc"))
    assert not limit.filter(_record(sent, "peer 2", logger="grpc._cython.cygrpc"))


def test_a_period_of_zero_writes_every_one() -> None:
    limit = RepeatLimitFilter(0.0, Clock())
    assert all(
        limit.filter(_record("push notification failed", extra=repeating())) for _ in range(3)
    )


class Kept(logging.Handler):
    def __init__(self, limit: RepeatLimitFilter) -> None:
        super().__init__()
        self.addFilter(limit)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_last_of_a_run_is_written_once_its_period_is_over_though_none_came_after() -> None:
    clock = Clock()
    limit = RepeatLimitFilter(10.0, clock)
    log = Kept(limit)
    for n in range(100):
        log.handle(_record("attempts not stored", extra=repeating(n=n)))
        clock.now += 0.01
    assert [r.n for r in log.records] == [0]  # type: ignore[attr-defined]
    limit.write_last(log)
    assert len(log.records) == 1  # its period is not over yet
    clock.now += 10.0
    limit.write_last(log)
    last = log.records[-1]
    assert (last.n, last.not_logged) == (99, 98)  # type: ignore[attr-defined]
    limit.write_last(log)
    assert len(log.records) == 2  # written once


def test_as_the_process_stops_the_last_of_every_run_is_written_at_once() -> None:
    clock = Clock()
    limit = RepeatLimitFilter(10.0, clock)
    log = Kept(limit)
    for message in ("push notification failed", "push notification failed", "mirror failed"):
        log.handle(_record(message, extra=repeating()))
    log.handle(_record("mirror failed", extra=repeating()))
    limit.write_last(log, at_once=True)
    assert [r.getMessage() for r in log.records] == [
        "push notification failed",
        "mirror failed",
        "push notification failed",
        "mirror failed",
    ]
    assert not any(hasattr(r, "not_logged") for r in log.records)  # none between
