"""What text a contact's ids and addresses may hold."""

from __future__ import annotations

import re

# Control characters: Postgres text refuses NUL, and none belongs in an id, an address or
# a reason (they corrupt logs, exports and files).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
