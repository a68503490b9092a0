"""Prometheus metrics of the callbacks service (GES exposes `ges_callbacks_created`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CREATED = Counter(
    "cxmesh_callbacks_created_total", "Callbacks created.", ("tenant", "callback_service")
)
COMPLETED = Counter(
    "cxmesh_callbacks_completed_total",
    "Callbacks completed, by reason (CANCELLED and FAIL_TIMEOUT_TTL included).",
    ("tenant", "callback_service", "reason"),
)
QUEUED = Gauge(
    "cxmesh_callbacks_queued",
    "Callbacks waiting on a virtual queue (every replica reports the same count).",
    ("tenant", "virtual_queue"),
    multiprocess_mode="max",
)
ESTIMATED_WAIT = Gauge(
    "cxmesh_callbacks_estimated_wait_seconds",
    "The last wait estimate of a virtual queue (mode2 for a callback queued now; -1 unknown).",
    ("tenant", "virtual_queue"),
    multiprocess_mode="max",
)
