"""AIP-158 pagination: page sizes with defaults and caps, opaque page tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument

Row = TypeVar("Row")


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


@dataclass(frozen=True, slots=True)
class OffsetPage:
    """A page read by offset: fetch `limit` rows (one more than the page) from `offset`."""

    offset: int
    size: int

    @property
    def limit(self) -> int:
        return self.size + 1

    def next_token(self, fetched: int) -> str:
        """The token of the next page, empty when `fetched` shows this page is the last."""
        return encode_token([self.offset + self.size]) if fetched > self.size else ""


def offset_page(requested_size: int, token: str, *, default: int = 50) -> OffsetPage:
    position = decode_token(token)
    try:
        offset = int(position[0]) if position else 0
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token this API issued")]
        ) from exc
    if offset < 0:
        raise InvalidArgument([FieldViolation("page_token", "is not a token this API issued")])
    return OffsetPage(offset, page_size(requested_size, default=default))


async def read_page(
    requested_size: int,
    token: str,
    fetch: Callable[[int, int], Awaitable[Sequence[Row]]],
) -> tuple[list[Row], str]:
    """One page of an offset-paged listing: its rows and the next page's token."""
    page = offset_page(requested_size, token)
    rows = await fetch(page.offset, page.limit)
    return list(rows[: page.size]), page.next_token(len(rows))
