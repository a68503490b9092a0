"""OCS records: the attached data a Genesys dialer posts to the validation-uri and the
history-uri, read as cxmesh's decision requests and attempts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2

from cxmesh.compliance.v1 import decision_pb2
from cxmesh.types.v1 import call_result_pb2, channel_pb2
from cxmesh_server.contacts.timezones import is_local_zone
from cxmesh_server.runtime.errors import FieldViolation

# GSW_CALL_RESULT is the calling list's call_result: Genesys' own enumeration (Busy is 6,
# Answer 33), or its name. Codes not here (SIT tones, errors, Unknown Call Result) stay
# "in progress", which counts wherever a rule counts anything.
_GENESYS_RESULTS: dict[int, int] = {
    3: call_result_pb2.CALL_RESULT_GENERAL_ERROR,
    6: call_result_pb2.CALL_RESULT_BUSY,
    7: call_result_pb2.CALL_RESULT_NO_ANSWER,
    9: call_result_pb2.CALL_RESULT_ANSWERING_MACHINE,  # Answering Machine Detected
    17: call_result_pb2.CALL_RESULT_FAX_DETECTED,
    20: call_result_pb2.CALL_RESULT_OVERFLOWED,
    21: call_result_pb2.CALL_RESULT_ABANDONED,
    26: call_result_pb2.CALL_RESULT_DROPPED,
    27: call_result_pb2.CALL_RESULT_DROPPED_NO_ANSWER,  # Dropped on No Answer
    32: call_result_pb2.CALL_RESULT_SILENCE,
    33: call_result_pb2.CALL_RESULT_ANSWER,
    40: call_result_pb2.CALL_RESULT_WRONG_PARTY,
    52: call_result_pb2.CALL_RESULT_CANCELLED,  # Cancel Record
    53: call_result_pb2.CALL_RESULT_WRONG_NUMBER,
}


def _result_key(name: str) -> str:
    return name.upper().replace("_", "").replace(" ", "")


_RESULT_NAMES = {
    **{
        _result_key(name.removeprefix("CALL_RESULT_")): value
        for name, value in call_result_pb2.CallResult.items()
    },
    # Genesys' names where they are not ours
    "ANSWERINGMACHINEDETECTED": call_result_pb2.CALL_RESULT_ANSWERING_MACHINE,
    "DROPPEDONNOANSWER": call_result_pb2.CALL_RESULT_DROPPED_NO_ANSWER,
    "CANCELRECORD": call_result_pb2.CALL_RESULT_CANCELLED,
}


def _call_result(value: Any) -> int:
    """Our result for an OCS GSW_CALL_RESULT: a Genesys code (a JSON number or digits) or a
    name, ours or Genesys'."""
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        return _GENESYS_RESULTS.get(int(value), call_result_pb2.CALL_RESULT_UNSPECIFIED)
    return _RESULT_NAMES.get(_result_key(text), call_result_pb2.CALL_RESULT_UNSPECIFIED)


def _postal_code(value: Any) -> str:
    """A US ZIP code sent as a JSON number has lost its leading zeros (02134 → 2134)."""
    if isinstance(value, int) and 0 <= value < 100_000:
        return f"{value:05d}"
    return str(value)


# GSW_TZ_NAME names the tenant's Genesys Time Zone object, usually a North American
# abbreviation whose DST rules are the tenant's own configuring. tzdata's EST, MST and HST
# are fixed offsets (in July EST's 20:30 is New York's 21:30), so such a name is not taken
# as the zone: it adds the zones it may mean as candidates beside the number's or ZIP
# code's, and a time must be allowed in all of them. Names not here add nothing.
_OCS_ZONE_NAMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("EST", "EDT", "ET", "EASTERN", "EST5EDT"), ("America/New_York",)),
    **dict.fromkeys(("CST", "CDT", "CT", "CENTRAL", "CST6CDT"), ("America/Chicago",)),
    # Mountain time with DST, or Arizona's without
    "MST": ("America/Denver", "America/Phoenix"),
    **dict.fromkeys(("MDT", "MT", "MOUNTAIN", "MST7MDT"), ("America/Denver",)),
    **dict.fromkeys(("PST", "PDT", "PT", "PACIFIC", "PST8PDT"), ("America/Los_Angeles",)),
    **dict.fromkeys(("AKST", "AKDT", "AKT", "ALASKA"), ("America/Anchorage",)),
    **dict.fromkeys(("HST", "HAST", "HAWAII"), ("Pacific/Honolulu",)),
    # Atlantic time with DST (Canada), or Puerto Rico's without
    **dict.fromkeys(("AST", "ADT", "ATLANTIC"), ("America/Halifax", "America/Puerto_Rico")),
    **dict.fromkeys(("NST", "NDT", "NEWFOUNDLAND"), ("America/St_Johns",)),
}


# Where each field of a decision request or attempt is read from: the first of the
# record's fields with a value.
_SOURCES: dict[str, tuple[str, ...]] = {
    "contact.address": ("GSW_PHONE",),
    "contact.client_id": ("CLIENT_ID", "GSW_CLIENT_ID"),
    "contact.time_zone": ("GSW_TZ_NAME",),
    "contact.candidate_time_zones": ("GSW_TZ_NAME",),
    "contact.postal_code": ("POSTAL_CODE", "ZIP"),
    "contact.state_province": ("STATE", "STATE_PROVINCE"),
    "campaign": ("GSW_CAMPAIGN_NAME",),
    "attempt_id": ("GSW_CALL_ATTEMPT_GUID",),
    "call_result": ("GSW_CALL_RESULT",),
}


class OcsRecord:
    """A record's attached data by upper-case name. Whole numbers become ints: a dialer
    that sends GSW_PHONE or a ZIP code as a JSON number means 2125550100, not 2125550100.0.
    A field sent as null or empty is one not sent: a CLIENT_ID of null read as "None"
    would put every such record under one client, and an empty CLIENT_ID must not hide
    GSW_CLIENT_ID."""

    def __init__(self, attributes: struct_pb2.Struct) -> None:
        self._values: dict[str, Any] = {}
        for name, value in attributes.fields.items():
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                self._values[name.upper()] = value.string_value
            elif kind == "number_value":
                number = value.number_value
                self._values[name.upper()] = int(number) if number.is_integer() else number
            elif kind == "bool_value":
                self._values[name.upper()] = value.bool_value
            elif kind == "null_value":
                self._values[name.upper()] = None
            else:
                self._values[name.upper()] = json_format.MessageToDict(value)

    def value(self, *names: str) -> Any:
        """The first of the named fields with a value; "" when none has one."""
        for name in names:
            value = self._values.get(name)
            if value is not None and value != "":
                return value
        return ""

    def read(self, path: str) -> Any:
        """The value a request's field (`contact.client_id`) is read from."""
        return self.value(*_SOURCES[path])

    def source(self, path: str) -> str | None:
        """The record's field a request's field is read from (the first named, when none
        has a value); None for a field not read from the record."""
        names = _SOURCES.get(path)
        if names is None:
            return None
        return next((name for name in names if self.value(name) != ""), names[0])

    def contact(self) -> decision_pb2.Contact:
        zone = str(self.read("contact.time_zone")).strip()
        named = is_local_zone(zone)  # an IANA Area/Location name wins
        return decision_pb2.Contact(
            address=str(self.read("contact.address")),
            client_id=str(self.read("contact.client_id")),
            time_zone=zone if named else "",
            candidate_time_zones=() if named else _OCS_ZONE_NAMES.get(zone.upper(), ()),
            postal_code=_postal_code(self.read("contact.postal_code")),
            state_province=str(self.read("contact.state_province")),
        )

    def decision_request(self) -> decision_pb2.DecisionRequest:
        return decision_pb2.DecisionRequest(
            contact=self.contact(), campaign=str(self.read("campaign"))
        )

    def attempt(self) -> decision_pb2.Attempt:
        """The call-history record as an attempt. Sequence 0 is sent when dialing starts:
        the attempt is in progress, whatever GSW_CALL_RESULT the record still carries
        from its previous attempt."""
        started = str(self.value("GSW_OCS_SEQUENCE_NO")).strip() in ("0", "0.0")
        result = (
            call_result_pb2.CALL_RESULT_UNSPECIFIED
            if started
            else _call_result(self.read("call_result") or 0)
        )
        return decision_pb2.Attempt(
            attempt_id=str(self.read("attempt_id")),
            contact=self.contact(),
            campaign=str(self.read("campaign")),
            channel=channel_pb2.CHANNEL_VOICE,
            call_result=result,  # type: ignore[arg-type]
        )

    def violations(self, prefix: str, found: Iterable[FieldViolation]) -> list[FieldViolation]:
        """Violations of the request read from this record (its fields under `prefix`),
        named by the record's fields they were read from: the dialer's administrator
        knows GSW_PHONE and GSW_CLIENT_ID, not attempts[0].contact.address."""
        named = []
        for violation in found:
            path = violation.field.removeprefix(prefix + ".")
            source = self.source(path) if path != violation.field else None
            named.append(FieldViolation(source or violation.field, violation.description))
        return named
