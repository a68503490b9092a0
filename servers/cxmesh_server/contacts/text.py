"""What text a contact's ids and addresses may hold."""

from __future__ import annotations

import re

# Control characters: Postgres text refuses NUL, and none belongs in an id, an address or
# a reason (they corrupt logs, exports and files).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_plain(value: str, most: int, least: int = 0) -> bool:
    """Whether `value` has `least` to `most` characters and no control character."""
    return least <= len(value) <= most and not CONTROL.search(value)
