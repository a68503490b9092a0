"""Estimated wait time per virtual queue, from what routing reports (GES modes).

- mode1: the throughput of the last 32 handled interactions (completions per second over
  the time they span); agents are ignored.
- mode2: the average handling time of those interactions spread over the agents logged in;
  unknown (−1) while none is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

WINDOW = 32
RESULT_VALID = 0
RESULT_NO_INTERACTIONS = -1
RESULT_NO_AGENTS = -2


@dataclass(frozen=True, slots=True)
class Handled:
    finished: datetime
    handle_seconds: float


@dataclass(frozen=True, slots=True)
class Estimate:
    seconds: int  # −1 when unknown
    result_code: int
    message: str


def estimate(
    mode: str, position: int, handled: Sequence[Handled], agents_logged_in: int
) -> Estimate:
    """The wait of the caller at 1-based `position` on the queue."""
    recent = sorted(handled, key=lambda h: h.finished)[-WINDOW:]
    if mode == "mode1":
        if len(recent) < 2:
            return Estimate(-1, RESULT_NO_INTERACTIONS, "mode1: no interactions yet")
        span = (recent[-1].finished - recent[0].finished).total_seconds()
        if span <= 0:
            return Estimate(0, RESULT_VALID, "mode1: from throughput")
        per_second = (len(recent) - 1) / span
        return Estimate(round(position / per_second), RESULT_VALID, "mode1: from throughput")
    label = "mode2" if mode != "mode3" else "mode3 (computed as mode2)"
    if agents_logged_in <= 0:
        return Estimate(-1, RESULT_NO_AGENTS, f"{label}: no agents logged in")
    if not recent:
        return Estimate(-1, RESULT_NO_INTERACTIONS, f"{label}: no interactions yet")
    average = sum(h.handle_seconds for h in recent) / len(recent)
    return Estimate(
        round(position * average / agents_logged_in), RESULT_VALID, f"{label}: from agents"
    )
