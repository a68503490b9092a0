"""What our services answered under load, from their own metrics: h2load sees HTTP 200 for
every gRPC call that reached a server, whatever its grpc-status, so a run of errors
(UNIMPLEMENTED, INVALID_ARGUMENT, UNAUTHENTICATED) would pass for a run of answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.load import LoadResult


def handled(metrics_port: int, method: str) -> Counter[str]:
    """Calls of `method` the service on `metrics_port` has completed, by gRPC code."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    codes: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("grpc_method") == method:
                codes[sample.labels["grpc_code"]] += int(sample.value)
    return codes


_FINE = frozenset({"OK", "CANCELLED"})


@dataclass
class Answered:
    """Filled in when the block ends: calls of the method answered OK meanwhile (None when
    no service was asked: the bare echo keeps no metrics)."""

    ok: int | None = None

    def covers(self, requests: int) -> None:
        """Raises unless the services answered at least the `requests` a load tool counted."""
        if self.ok is not None and self.ok < requests:
            raise RuntimeError(f"{requests} calls counted, only {self.ok} answered OK")


@contextmanager
def only_ok(metrics_ports: Sequence[int], method: str) -> Iterator[Answered]:
    """Raises when the block ends if the services on `metrics_ports` answered any call of
    `method` with an error meanwhile (the client's cancellations aside), or answered none.
    With no ports, checks nothing."""
    before = [handled(port, method) for port in metrics_ports]
    answered = Answered()
    yield answered
    if not metrics_ports:
        return
    delta: Counter[str] = Counter()
    for port, earlier in zip(metrics_ports, before, strict=True):
        delta.update(handled(port, method))
        delta.subtract(earlier)
    # h2load resets the streams still in flight when a timed run ends: those calls end
    # CANCELLED by the client's doing; the calls it counted must all be OK (`covers`).
    errors = {code: count for code, count in delta.items() if code not in _FINE and count}
    if errors:
        raise RuntimeError(
            f"{method} answered {errors} during the run: its figures would count them"
        )
    if delta["OK"] <= 0:
        raise RuntimeError(f"no call of {method} was answered during the run")
    answered.ok = delta["OK"]


def answered_ok(
    metrics_ports: Sequence[int], method: str, load: Callable[[], LoadResult]
) -> LoadResult:
    """`load`'s result, once the services' own counts show every call of it answered OK."""
    with only_ok(metrics_ports, method) as answered:
        result = load()
    answered.covers(result.requests)
    return result
