"""gRPC handlers of cxmesh.iam.v1: proto in, domain and store, proto out."""

from __future__ import annotations

from datetime import datetime

from cxmesh.iam.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    tenant_pb2,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from cxmesh_server.iam.domain import (
    DEFAULT_API_KEY_ROLES,
    PLATFORM_SCOPE,
    ApiKey,
    Tenant,
    validate_api_key,
    validate_tenant,
)
from cxmesh_server.iam.store import IamStore
from cxmesh_server.runtime import paging
from cxmesh_server.runtime.auth import hash_api_key, new_api_key
from cxmesh_server.runtime.context import GrpcContext, current_principal, current_tenant
from cxmesh_server.runtime.convert import resource_id, timestamp
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument
from cxmesh_server.runtime.roles import grants


def tenant_message(tenant: Tenant) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        name=f"tenants/{tenant.tenant_id}",
        display_name=tenant.display_name,
        default_time_zone=tenant.default_time_zone,
        default_region=tenant.default_region,
        create_time=timestamp(tenant.create_time),
    )


def api_key_message(key: ApiKey) -> api_key_pb2.ApiKey:
    return api_key_pb2.ApiKey(
        name=f"apiKeys/{key.api_key_id}",
        display_name=key.display_name,
        roles=list(key.roles),
        key_prefix=key.key_prefix,
        create_time=timestamp(key.create_time),
        revoke_time=timestamp(key.revoke_time),
    )


class TenantHandlers(tenant_service_pb2_grpc.TenantServiceServicer):
    def __init__(self, store: IamStore) -> None:
        self._store = store

    async def CreateTenant(
        self, request: tenant_service_pb2.CreateTenantRequest, context: GrpcContext
    ) -> tenant_service_pb2.CreateTenantResponse:
        tenant = Tenant(
            tenant_id=request.tenant_id,
            display_name=request.tenant.display_name,
            default_time_zone=request.tenant.default_time_zone or "UTC",
            default_region=request.tenant.default_region or "US",
        )
        validate_tenant(tenant)
        created = await self._store.create_tenant(tenant, request.request_id)
        return tenant_service_pb2.CreateTenantResponse(tenant=tenant_message(created))

    async def GetTenant(
        self, request: tenant_service_pb2.GetTenantRequest, context: GrpcContext
    ) -> tenant_service_pb2.GetTenantResponse:
        tenant_id = resource_id(request.name, "tenants", "name")
        principal = current_principal()
        # Platform operators read any tenant; everyone else only their own (RLS enforces it).
        scope = PLATFORM_SCOPE if grants(principal.roles, "iam.tenants.list") else principal.tenant
        tenant = await self._store.get_tenant(scope, tenant_id)
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_message(tenant))

    async def ListTenants(
        self, request: tenant_service_pb2.ListTenantsRequest, context: GrpcContext
    ) -> tenant_service_pb2.ListTenantsResponse:
        size = paging.page_size(request.page_size)
        position = paging.decode_token(request.page_token)
        tenants = await self._store.list_tenants(position[0] if position else None, size + 1)
        next_token = (
            paging.encode_token([tenants[size - 1].tenant_id]) if len(tenants) > size else ""
        )
        return tenant_service_pb2.ListTenantsResponse(
            tenants=[tenant_message(t) for t in tenants[:size]], next_page_token=next_token
        )


class ApiKeyHandlers(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, store: IamStore) -> None:
        self._store = store

    async def CreateApiKey(
        self, request: api_key_service_pb2.CreateApiKeyRequest, context: GrpcContext
    ) -> api_key_service_pb2.CreateApiKeyResponse:
        roles = tuple(request.api_key.roles) or DEFAULT_API_KEY_ROLES
        validate_api_key(request.api_key.display_name, roles)
        secret = new_api_key()
        key, created = await self._store.create_api_key(
            current_tenant(),
            request.api_key.display_name,
            roles,
            hash_api_key(secret),
            secret[:12],
            request.request_id,
        )
        return api_key_service_pb2.CreateApiKeyResponse(
            api_key=api_key_message(key), key=secret if created else ""
        )

    async def GetApiKey(
        self, request: api_key_service_pb2.GetApiKeyRequest, context: GrpcContext
    ) -> api_key_service_pb2.GetApiKeyResponse:
        key_id = resource_id(request.name, "apiKeys", "name")
        key = await self._store.get_api_key(current_tenant(), key_id)
        return api_key_service_pb2.GetApiKeyResponse(api_key=api_key_message(key))

    async def ListApiKeys(
        self, request: api_key_service_pb2.ListApiKeysRequest, context: GrpcContext
    ) -> api_key_service_pb2.ListApiKeysResponse:
        size = paging.page_size(request.page_size)
        position = paging.decode_token(request.page_token)
        after = None
        if position is not None:
            try:
                after = (datetime.fromisoformat(position[0]), str(position[1]))
            except (ValueError, IndexError) as exc:
                raise InvalidArgument(
                    [FieldViolation("page_token", "is not a token this API issued")]
                ) from exc
        keys = await self._store.list_api_keys(current_tenant(), after, size + 1)
        next_token = ""
        if len(keys) > size:
            last = keys[size - 1]
            next_token = paging.encode_token([last.create_time.isoformat(), last.api_key_id])
        return api_key_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in keys[:size]], next_page_token=next_token
        )

    async def RevokeApiKey(
        self, request: api_key_service_pb2.RevokeApiKeyRequest, context: GrpcContext
    ) -> api_key_service_pb2.RevokeApiKeyResponse:
        key_id = resource_id(request.name, "apiKeys", "name")
        key = await self._store.revoke_api_key(current_tenant(), key_id)
        return api_key_service_pb2.RevokeApiKeyResponse(api_key=api_key_message(key))
