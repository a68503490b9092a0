"""AIP-134 update masks: which fields an Update changes."""

from __future__ import annotations

from collections.abc import Set

from google.protobuf.field_mask_pb2 import FieldMask

from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument


def update_paths(mask: FieldMask, updatable: Set[str]) -> set[str]:
    """The fields to change; `*` means every updatable field. Anything else is refused."""
    paths = set(mask.paths)
    if "*" in paths:
        return set(updatable)
    if not paths:
        raise InvalidArgument([FieldViolation("update_mask", "name the fields to change")])
    if not paths <= updatable:
        raise InvalidArgument(
            [FieldViolation("update_mask", f"updatable fields: {sorted(updatable)}")]
        )
    return paths
