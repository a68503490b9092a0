"""Channels for calls from one service to another, carrying the trace context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from cxmesh_server.runtime import tracing


def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in tracing.inject_metadata():
        metadata[key] = value
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _Propagate:
    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(details), request)


class _UnaryUnary(_Propagate, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _UnaryStream(_Propagate, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _StreamUnary(_Propagate, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


class _StreamStream(_Propagate, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


def service_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to another service that propagates W3C trace context."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()],  # type: ignore[list-item]
        options=[("grpc.lb_policy_name", "round_robin")],
    )
