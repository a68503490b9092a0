"""Callback rules without I/O: office hours across DST and exceptions, capacity buckets on
the local clock, the state machine, and the GES wait-time modes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from google.type import date_pb2

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.domain.capacity import Capacity, slot_starts
from cxmesh_server.callbacks.domain.hours import OfficeHours
from cxmesh_server.callbacks.domain.states import transition_problem
from cxmesh_server.callbacks.domain.wait import Handled, estimate

S = callback_pb2
NEW_YORK = "America/New_York"


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(NEW_YORK)).astimezone(UTC)


def weekdays_nine_to_five(*exceptions: callback_pb2.DateException) -> OfficeHours:
    message = S.OfficeHours(time_zone=NEW_YORK)
    hours = message.weekly_hours.add(days=[1, 2, 3, 4, 5])
    hours.open_time.hours, hours.close_time.hours = 9, 17
    message.exceptions.extend(exceptions)
    return OfficeHours.compile(message)


def test_office_hours_are_read_on_the_local_clock_and_close_exclusively() -> None:
    hours = weekdays_nine_to_five()
    assert hours.is_open(local(2026, 11, 24, 9))  # a Tuesday
    assert hours.is_open(local(2026, 11, 24, 16, 59))
    assert not hours.is_open(local(2026, 11, 24, 17))
    assert not hours.is_open(local(2026, 11, 28, 12))  # Saturday
    assert hours.open_for(local(2026, 11, 24, 16)) == timedelta(hours=1)
    assert hours.open_for(local(2026, 11, 24, 18)) == timedelta(0)


def test_office_hours_follow_dst_on_the_change_day() -> None:
    hours = weekdays_nine_to_five()
    # 2026-03-09 is the Monday after the spring-forward night: 09:00 EDT is 13:00 UTC.
    assert hours.is_open(datetime(2026, 3, 9, 13, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 3, 9, 12, 59, tzinfo=UTC))


def test_a_dated_closure_and_special_hours_replace_the_week() -> None:
    closed = S.DateException(date=date_pb2.Date(year=2026, month=11, day=26), closed=True)
    short = S.DateException(date=date_pb2.Date(year=2026, month=11, day=27))
    short.open_time.hours, short.close_time.hours = 10, 12
    hours = weekdays_nine_to_five(closed, short)
    assert not hours.is_open(local(2026, 11, 26, 12))  # Thanksgiving
    assert not hours.is_open(local(2026, 11, 27, 9, 30))
    assert hours.open_for(local(2026, 11, 27, 11)) == timedelta(hours=1)


def test_around_the_clock_when_no_weekly_hours_are_given() -> None:
    hours = OfficeHours.compile(S.OfficeHours(time_zone="UTC"))
    assert hours.is_open(datetime(2026, 11, 29, 3, tzinfo=UTC))
    assert hours.open_for(datetime(2026, 11, 29, 3, tzinfo=UTC)) >= timedelta(days=13)


def test_buckets_align_on_the_local_clock_and_take_weekly_rule_sizes() -> None:
    message = S.Capacity(bucket_minutes=30, default_per_bucket=10)
    rule = message.rules.add(days=[2], per_bucket=3)  # Tuesdays 12:00–13:00
    rule.start_time.hours, rule.end_time.hours = 12, 13
    capacity = Capacity.compile(message, NEW_YORK)
    assert capacity.bucket_start(local(2026, 11, 24, 12, 47)) == local(2026, 11, 24, 12, 30)
    assert capacity.size_at(local(2026, 11, 24, 12, 30)) == 3
    assert capacity.size_at(local(2026, 11, 24, 13, 0)) == 10
    assert capacity.size_at(local(2026, 11, 25, 12, 30)) == 10


def test_slots_cover_opening_hours_only_starting_with_the_current_bucket() -> None:
    capacity = Capacity.compile(S.Capacity(bucket_minutes=60), NEW_YORK)
    starts = list(
        slot_starts(
            weekdays_nine_to_five(), capacity, local(2026, 11, 24, 15, 20), local(2026, 11, 25, 11)
        )
    )
    assert starts == [
        local(2026, 11, 24, 15),
        local(2026, 11, 24, 16),
        local(2026, 11, 25, 9),
        local(2026, 11, 25, 10),
    ]


def test_the_state_machine_refuses_illegal_moves_and_reasons_out_of_place() -> None:
    assert transition_problem(S.CALLBACK_STATE_SCHEDULED, S.CALLBACK_STATE_QUEUED, 0) is None
    assert transition_problem(S.CALLBACK_STATE_SCHEDULED, S.CALLBACK_STATE_PROCESSING, 0)
    assert transition_problem(
        S.CALLBACK_STATE_COMPLETED, S.CALLBACK_STATE_COMPLETED, S.CALLBACK_REASON_CANCELLED
    )
    assert transition_problem(S.CALLBACK_STATE_QUEUED, S.CALLBACK_STATE_COMPLETED, 0)
    assert (
        transition_problem(
            S.CALLBACK_STATE_PROCESSING,
            S.CALLBACK_STATE_COMPLETED,
            S.CALLBACK_REASON_AGENT_CONNECTED,
        )
        is None
    )


def test_mode1_uses_throughput_and_mode2_agents() -> None:
    start = datetime(2026, 11, 24, 12, tzinfo=UTC)
    # 33 interactions a minute apart: only the newest 32 count, 31 intervals of 60 s.
    handled = [Handled(start + timedelta(minutes=n), 240.0) for n in range(33)]
    assert estimate("mode1", 3, handled, 0).seconds == 180
    assert estimate("mode2", 3, handled, 4).seconds == 180  # 3 × 240 s / 4 agents
    assert estimate("mode2", 3, handled, 0).result_code == -2
    assert estimate("mode1", 1, [], 5).result_code == -1
    assert "mode2" in estimate("mode3", 1, handled, 1).message
