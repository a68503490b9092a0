"""The caller of the current RPC, set by the server interceptor for the handler."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from cxmesh_server.runtime.errors import Unauthenticated

if TYPE_CHECKING:
    import grpc

# The context handlers receive; typed loosely because stubs make it generic.
GrpcContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, established from credentials only."""

    tenant: str
    subject: str
    roles: frozenset[str]
    # "jwt" or "api_key": some surfaces (GES) behave differently per credential kind.
    credential: str


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "cxmesh_principal", default=None
)


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def current_principal() -> Principal:
    """The authenticated caller; handlers of non-public RPCs always have one."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no credentials")
    return principal


def current_tenant() -> str:
    return current_principal().tenant
