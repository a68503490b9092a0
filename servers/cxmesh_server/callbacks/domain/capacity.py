"""Scheduled-callback capacity: buckets of the service's local day, each with a size from
the weekly rules (or the default), and the slots offered from them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.domain.hours import OfficeHours, seconds_of, zone

BUCKET_MINUTES = (5, 10, 15, 20, 30, 60, 120)
DEFAULT_BUCKET_MINUTES = 5
DEFAULT_PER_BUCKET = 100


@dataclass(frozen=True, slots=True)
class CapacityRule:
    weekdays: frozenset[int]  # Monday = 0
    start: int
    end: int
    per_bucket: int


@dataclass(frozen=True, slots=True)
class Capacity:
    bucket: timedelta
    default_per_bucket: int
    rules: tuple[CapacityRule, ...]
    time_zone: str

    @classmethod
    def compile(cls, message: callback_pb2.Capacity, time_zone: str) -> Capacity:
        rules = tuple(
            CapacityRule(
                frozenset(int(d) - 1 for d in (rule.days or range(1, 8))),
                seconds_of(rule.start_time),
                seconds_of(rule.end_time, end=True),
                rule.per_bucket,
            )
            for rule in message.rules
        )
        return cls(
            timedelta(minutes=message.bucket_minutes or DEFAULT_BUCKET_MINUTES),
            message.default_per_bucket or DEFAULT_PER_BUCKET,
            rules,
            time_zone or "UTC",
        )

    def bucket_start(self, moment: datetime) -> datetime:
        """The start of the bucket holding `moment`; buckets are aligned on the local clock."""
        local = moment.astimezone(zone(self.time_zone))
        into = (local.hour * 3600 + local.minute * 60 + local.second) % int(
            self.bucket.total_seconds()
        )
        return (moment - timedelta(seconds=into, microseconds=local.microsecond)).astimezone(UTC)

    def size_at(self, bucket_start: datetime) -> int:
        local = bucket_start.astimezone(zone(self.time_zone))
        second = local.hour * 3600 + local.minute * 60 + local.second
        for rule in self.rules:
            if local.weekday() in rule.weekdays and rule.start <= second < rule.end:
                return rule.per_bucket
        return self.default_per_bucket


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime
    size: int
    booked: int

    @property
    def free(self) -> int:
        return max(0, self.size - self.booked)


def slot_starts(
    hours: OfficeHours, capacity: Capacity, start: datetime, end: datetime
) -> Iterator[datetime]:
    """The starts of the buckets that overlap an opening in [start, end), the bucket holding
    `start` included (a callback booked now goes into the current bucket). Lazy: an
    immediate callback usually needs only the first."""
    last: datetime | None = None
    for begin, finish in hours.intervals(start, end):
        moment = capacity.bucket_start(begin)
        while moment < finish:
            if last is None or moment > last:
                last = moment
                yield moment
            following = capacity.bucket_start(moment + capacity.bucket)
            # A DST change can pull the realigned start back; never step backwards.
            moment = following if following > moment else moment + capacity.bucket
