"""An OCS record's fields, and the errors of what is read from them, by the record's names."""

from __future__ import annotations

from google.protobuf import struct_pb2

from cxmesh_server.compliance.ocs_records import OcsRecord
from cxmesh_server.runtime.errors import FieldViolation


def _record(**fields: str | int) -> OcsRecord:
    attributes = struct_pb2.Struct()
    attributes.update(fields)
    return OcsRecord(attributes)


def test_a_violation_names_the_field_the_value_came_from() -> None:
    record = _record(GSW_PHONE="4155550100", CLIENT_ID="", GSW_CLIENT_ID="c" * 256, zip=2134)
    named = record.violations(
        "attempts[0]",
        [
            FieldViolation("attempts[0].contact.client_id", "too long"),
            FieldViolation("attempts[0].contact.address", "not a number"),
            FieldViolation("attempts[0].contact.postal_code", "unknown"),
        ],
    )
    assert [v.field for v in named] == ["GSW_CLIENT_ID", "GSW_PHONE", "ZIP"]
    assert record.contact().postal_code == "02134"  # a JSON number lost its leading zero


def test_a_field_not_read_from_the_record_keeps_its_path() -> None:
    named = _record(GSW_PHONE="4155550100").violations(
        "record",
        [
            FieldViolation("record.contact.client_id", "too long"),  # none sent: the first
            FieldViolation("record.contact.country", "unknown"),
            FieldViolation("attempts", "1-1000 attempts"),
        ],
    )
    assert [v.field for v in named] == ["CLIENT_ID", "record.contact.country", "attempts"]


def test_a_start_report_is_in_progress_whatever_result_the_record_still_carries() -> None:
    started = _record(GSW_CALL_ATTEMPT_GUID="g", GSW_OCS_SEQUENCE_NO=0, GSW_CALL_RESULT=33)
    ended = _record(GSW_CALL_ATTEMPT_GUID="g", GSW_OCS_SEQUENCE_NO=1, GSW_CALL_RESULT=33)
    assert started.attempt().call_result == 0
    assert ended.attempt().call_result != 0
