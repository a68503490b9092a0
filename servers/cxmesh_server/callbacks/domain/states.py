"""The callback state machine (the GES `callbackState` values)."""

from __future__ import annotations

from cxmesh.callbacks.v1 import callback_pb2

S = callback_pb2
# Which states a callback may move to from each state. A claim that routing does not report
# in time returns ROUTING to QUEUED; a customer not reached is scheduled again for a retry
# (the service does that itself when routing reports COMPLETED with NOT_AVAILABLE).
TRANSITIONS: dict[int, frozenset[int]] = {
    S.CALLBACK_STATE_SCHEDULED: frozenset({S.CALLBACK_STATE_QUEUED, S.CALLBACK_STATE_COMPLETED}),
    S.CALLBACK_STATE_QUEUED: frozenset({S.CALLBACK_STATE_ROUTING, S.CALLBACK_STATE_COMPLETED}),
    S.CALLBACK_STATE_ROUTING: frozenset(
        {
            S.CALLBACK_STATE_PROCESSING,
            S.CALLBACK_STATE_QUEUED,
            S.CALLBACK_STATE_SCHEDULED,
            S.CALLBACK_STATE_COMPLETED,
        }
    ),
    S.CALLBACK_STATE_PROCESSING: frozenset(
        {S.CALLBACK_STATE_COMPLETED, S.CALLBACK_STATE_QUEUED, S.CALLBACK_STATE_SCHEDULED}
    ),
    S.CALLBACK_STATE_COMPLETED: frozenset(),
}
# Where a wait estimate is shown (GES: positionInQueue and estimatedWaitTime).
WAITING_STATES = (
    S.CALLBACK_STATE_QUEUED,
    S.CALLBACK_STATE_ROUTING,
    S.CALLBACK_STATE_PROCESSING,
)


def transition_problem(current: int, target: int, reason: int) -> str | None:
    """Why moving from `current` to `target` (with `reason`) is refused, or None."""
    if target not in TRANSITIONS.get(current, frozenset()):
        return (
            f"a {callback_pb2.CallbackState.Name(callback_pb2.CallbackState.ValueType(current))} callback cannot become "
            f"{callback_pb2.CallbackState.Name(callback_pb2.CallbackState.ValueType(target))}"
        )
    if (target == S.CALLBACK_STATE_COMPLETED) != (reason != S.CALLBACK_REASON_UNSPECIFIED):
        return "a reason is given exactly when a callback completes"
    return None
