"""JSON logs that carry the trace id, never a full phone number, and do not flood."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# Runs of 7+ digits, optionally with a leading + and separators: phone numbers, mostly.
_PHONE_LIKE = re.compile(r"\+?\d(?:[\d\s().-]{5,}\d)")


def mask_phone(text: str) -> str:
    """Keeps the first 4 characters of each phone-like run, masks the rest."""
    return _PHONE_LIKE.sub(lambda m: m.group()[:4] + "*" * (len(m.group()) - 4), text)


class RedactingFilter(logging.Filter):
    """Masks phone-like values in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_phone(str(record.getMessage()))
        record.args = None
        return True


class TraceContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


_REPEATING = "repeating"  # the LogRecord attribute `repeating()` sets
_MOST_LOGS = 1_000


def repeating(**fields: object) -> dict[str, object]:
    """`extra` for a log a request, or every turn of a retry loop, can cause: while it
    repeats, one a period is written, carrying in `not_logged` how many like it were not.
    Postgres down under a busy dialer is thousands of identical warnings a second."""
    return {**fields, _REPEATING: True}


class RepeatLimitFilter(logging.Filter):
    """Lets through one record a period for each repeating log (its logger and message),
    and for each of grpc's own (its logger and message template), which we cannot mark;
    the last of a run is written once its period is over (`write_last`). Hand-written: the
    log-rate-limit package appends its counts to the message text, and to unrelated
    records when it forgets a stream, where a JSON field is what a log pipeline needs."""

    def __init__(self, period_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._period_seconds = period_seconds
        self._clock = clock
        # (logger, message) -> (when the next one may be written, how many were not since)
        self._logs: dict[tuple[str, object], tuple[float, int]] = {}
        # (logger, message) -> the last one not written
        self._last: dict[tuple[str, object], logging.LogRecord] = {}

    def write_last(self, handler: logging.Handler, *, at_once: bool = False) -> None:
        """Writes the last record of each run of repeats whose period is over (`at_once`:
        every one, as the process stops), so that the log shows when a run ended and how
        big it was, though nothing like it came after."""
        now = self._clock()
        for key, record in list(self._last.items()):
            next_at, not_logged = self._logs.get(key, (0.0, 0))
            if at_once or now >= next_at:
                del self._last[key]
                self._logs[key] = (0.0, not_logged - 1)  # itself, written now
                handler.handle(record)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _REPEATING, False):
            key = (record.name, record.getMessage())
        elif record.name.startswith("grpc"):
            key = (record.name, record.msg)  # the template: its arguments are the call's
        else:
            return True
        now = self._clock()
        if len(self._logs) > _MOST_LOGS and key not in self._logs:
            self._logs.clear()  # templates are few; an f-string logged by a library is not
            self._last.clear()
        next_at, not_logged = self._logs.get(key, (0.0, 0))
        if now < next_at:
            self._logs[key] = (next_at, not_logged + 1)
            self._last[key] = record
            return False
        self._last.pop(key, None)
        self._logs[key] = (now + self._period_seconds, 0)
        if not_logged:
            record.not_logged = not_logged
        return True


def write_last_repeats(*, at_once: bool = False) -> None:
    """`RepeatLimitFilter.write_last` for the process's log."""
    for handler in logging.getLogger().handlers:
        for limit in handler.filters:
            if isinstance(limit, RepeatLimitFilter):
                limit.write_last(handler, at_once=at_once)


async def write_last_repeats_every(seconds: float) -> None:
    """For the process's life (`start_background`)."""
    while True:
        await asyncio.sleep(seconds)
        write_last_repeats()


def configure_logging(
    service: str, level: str = "INFO", repeat_period_seconds: float = 10.0
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
            reserved_attrs=[*RESERVED_ATTRS, _REPEATING],
        )
    )
    # First: it keys on the message template, which RedactingFilter replaces.
    handler.addFilter(RepeatLimitFilter(repeat_period_seconds))
    handler.addFilter(RedactingFilter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
