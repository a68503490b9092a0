"""A callback service's settings: validation, defaults, and the compiled form that
create, availability and dispatch read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import phonenumbers

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.domain.capacity import BUCKET_MINUTES, Capacity
from cxmesh_server.callbacks.domain.hours import OfficeHours, seconds_of
from cxmesh_server.contacts.phones import Phone, PhoneError, normalize_phone
from cxmesh_server.contacts.timezones import valid_zones
from cxmesh_server.runtime.errors import Validator

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TTL = timedelta(hours=24)
DEFAULT_MAX_AHEAD = timedelta(days=30)
DEFAULT_THROTTLE_PER_DAY = 6
DEFAULT_MAX_DIAL_ATTEMPTS = 3
DEFAULT_RETRY_TIMEOUT = timedelta(seconds=300)
# Active callbacks one number may have per service, by in-queue check.
DUPLICATE_LIMITS = {
    callback_pb2.IN_QUEUE_CHECK_UNSPECIFIED: 2,
    callback_pb2.IN_QUEUE_CHECK_ON: 2,
    callback_pb2.IN_QUEUE_CHECK_STRICT: 1,
    callback_pb2.IN_QUEUE_CHECK_OFF: 0,
}


def validate_service(
    config: callback_pb2.CallbackServiceConfig, check: Validator, prefix: str = "callback_service"
) -> None:
    check.require(
        bool(NAME.match(config.virtual_queue.removeprefix("virtualQueues/")))
        and config.virtual_queue.startswith("virtualQueues/"),
        f"{prefix}.virtual_queue",
        "must be virtualQueues/<1-64 letters, digits, _ or ->",
    )
    hours = config.office_hours
    check.require(
        not hours.time_zone or hours.time_zone in valid_zones(),
        f"{prefix}.office_hours.time_zone",
        "must be an IANA zone",
    )
    for n, weekly in enumerate(hours.weekly_hours):
        opens, closes = seconds_of(weekly.open_time), seconds_of(weekly.close_time, end=True)
        check.require(
            opens < closes, f"{prefix}.office_hours.weekly_hours[{n}]", "opens before it closes"
        )
    capacity = config.capacity
    check.require(
        capacity.bucket_minutes in (0, *BUCKET_MINUTES),
        f"{prefix}.capacity.bucket_minutes",
        f"one of {', '.join(map(str, BUCKET_MINUTES))}",
    )
    check.require(
        capacity.default_per_bucket >= 0, f"{prefix}.capacity.default_per_bucket", "at least 0"
    )
    for n, rule in enumerate(capacity.rules):
        check.require(rule.per_bucket >= 0, f"{prefix}.capacity.rules[{n}].per_bucket", ">= 0")
        start, end = seconds_of(rule.start_time), seconds_of(rule.end_time, end=True)
        minutes = (start // 60, end // 60)
        check.require(
            start < end and all(m % 30 == 0 for m in minutes),
            f"{prefix}.capacity.rules[{n}]",
            "a span of whole 30-minute slots",
        )
    check.require(config.throttle_per_day >= 0, f"{prefix}.throttle_per_day", "at least 0")
    for n, pattern in enumerate(config.phone_validation.blocked_patterns):
        try:
            re.compile(pattern)
        except re.error as error:
            check.require(False, f"{prefix}.phone_validation.blocked_patterns[{n}]", str(error))
    for field, value in (
        ("callback_ttl", config.callback_ttl),
        ("max_schedule_ahead", config.max_schedule_ahead),
    ):
        check.require(value.seconds >= 0, f"{prefix}.{field}", "must not be negative")


def with_defaults(config: callback_pb2.CallbackServiceConfig) -> callback_pb2.CallbackServiceConfig:
    """The settings as stored: every default written out, so readers see what applies."""
    stored = callback_pb2.CallbackServiceConfig()
    stored.CopyFrom(config)
    if not stored.office_hours.time_zone:
        stored.office_hours.time_zone = "UTC"
    if not stored.capacity.bucket_minutes:
        stored.capacity.bucket_minutes = 5
    if not stored.capacity.default_per_bucket:
        stored.capacity.default_per_bucket = 100
    if not stored.in_queue_check:
        stored.in_queue_check = callback_pb2.IN_QUEUE_CHECK_ON
    if not stored.HasField("throttle_per_day"):
        stored.throttle_per_day = DEFAULT_THROTTLE_PER_DAY
    if not stored.HasField("immediate_callbacks_enabled"):
        stored.immediate_callbacks_enabled = True
    if not stored.HasField("scheduled_callbacks_enabled"):
        stored.scheduled_callbacks_enabled = True
    if not stored.HasField("max_dial_attempts"):
        stored.max_dial_attempts = DEFAULT_MAX_DIAL_ATTEMPTS
    if not stored.HasField("retry_timeout"):
        stored.retry_timeout.FromTimedelta(DEFAULT_RETRY_TIMEOUT)
    if not stored.HasField("callback_ttl"):
        stored.callback_ttl.FromTimedelta(DEFAULT_TTL)
    if not stored.HasField("max_schedule_ahead"):
        stored.max_schedule_ahead.FromTimedelta(DEFAULT_MAX_AHEAD)
    return stored


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """A stored service, compiled for requests."""

    service_id: str
    version: int  # of the stored settings; a create names it, so it never uses stale ones
    queue_id: str
    config: callback_pb2.CallbackServiceConfig
    hours: OfficeHours
    capacity: Capacity
    ttl: timedelta
    max_ahead: timedelta
    duplicate_limit: int
    throttle_per_day: int  # 0: no throttle
    immediate_enabled: bool
    scheduled_enabled: bool
    max_queued: int  # 0: no limit
    min_lead: timedelta
    max_dial_attempts: int
    retry_timeout: timedelta

    @classmethod
    def compile(
        cls, service_id: str, config: callback_pb2.CallbackServiceConfig, version: int = 0
    ) -> ServiceRules:
        config = with_defaults(config)
        hours = OfficeHours.compile(config.office_hours)
        return cls(
            service_id=service_id,
            version=version,
            queue_id=config.virtual_queue.removeprefix("virtualQueues/"),
            config=config,
            hours=hours,
            capacity=Capacity.compile(config.capacity, hours.time_zone),
            ttl=config.callback_ttl.ToTimedelta() or DEFAULT_TTL,
            max_ahead=config.max_schedule_ahead.ToTimedelta() or DEFAULT_MAX_AHEAD,
            duplicate_limit=DUPLICATE_LIMITS[config.in_queue_check],
            throttle_per_day=config.throttle_per_day,
            immediate_enabled=config.immediate_callbacks_enabled,
            scheduled_enabled=config.scheduled_callbacks_enabled,
            max_queued=config.max_queued,
            min_lead=config.min_lead_time.ToTimedelta(),
            max_dial_attempts=config.max_dial_attempts,
            retry_timeout=config.retry_timeout.ToTimedelta(),
        )

    def phone(self, raw: str, tenant_region: str) -> Phone:
        """The number in E.164, or PhoneError with the reason it is refused."""
        rules = self.config.phone_validation
        region = (rules.default_region or tenant_region).upper()
        phone = normalize_phone(raw, region)
        if rules.allowed_regions:
            number_region = phonenumbers.region_code_for_number(phonenumbers.parse(phone.e164))
            if number_region not in {r.upper() for r in rules.allowed_regions}:
                raise PhoneError(
                    "COUNTRY_NOT_ALLOWED", f"numbers of {number_region} are not accepted"
                )
        for pattern in rules.blocked_patterns:
            if re.search(pattern, phone.e164):
                raise PhoneError("BLOCKED_NUMBER", "the number is blocked for this service")
        return phone
