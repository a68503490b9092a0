"""AIP-158 pagination: page sizes with defaults and caps, opaque page tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument


def page_size(requested: int, *, default: int = 50, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or default, maximum)


def encode_token(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def decode_token(token: str) -> list[Any] | None:
    """The position after which the next page starts; None for the first page."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token this API issued")]
        ) from exc
    if not isinstance(position, list):
        raise InvalidArgument([FieldViolation("page_token", "is not a token this API issued")])
    return position
