"""JSON logs that carry the trace id and never a full phone number."""

from __future__ import annotations

import logging
import re
import sys

from opentelemetry import trace
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


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(RedactingFilter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
