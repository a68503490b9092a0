"""Authentication (bearer tokens, API keys) and authorization (per-RPC permission).

The rule of each RPC comes from the contract (`cxmesh.types.v1.method_auth`); an RPC
without one is refused to everybody (fail closed). The tenant is taken from the
credentials only: the `tenant` claim of a token, or the tenant an API key belongs to.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from google.protobuf import descriptor_pool
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cxmesh.types.v1 import auth_pb2
from cxmesh_server.runtime.context import Principal
from cxmesh_server.runtime.errors import PermissionDenied, Unauthenticated, Unavailable
from cxmesh_server.runtime.roles import API_KEY_ROLES, grants
from cxmesh_server.runtime.settings import AuthSettings

# Infrastructure RPCs every caller may use without credentials.
PUBLIC_SERVICE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
API_KEY_HEADER = "x-api-key"
API_KEY_PREFIX = "cxk_"


@dataclass(frozen=True, slots=True)
class MethodRule:
    permission: str
    allow_api_key: bool
    public: bool


DENY_ALL = MethodRule(permission="", allow_api_key=False, public=False)


def method_rule(full_method: str) -> MethodRule:
    """The rule of `/pkg.Service/Method`, read from the generated descriptors."""
    if full_method.startswith(PUBLIC_SERVICE_PREFIXES):
        return MethodRule(permission="", allow_api_key=False, public=True)
    service, _, method = full_method.lstrip("/").partition("/")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return DENY_ALL
    options = descriptor.GetOptions()
    if not options.HasExtension(auth_pb2.method_auth):
        return DENY_ALL
    rule = options.Extensions[auth_pb2.method_auth]
    return MethodRule(
        permission=rule.permission, allow_api_key=rule.allow_api_key, public=rule.public
    )


def hash_api_key(key: str) -> str:
    """API keys are 256-bit random secrets, so one SHA-256 is a sound at-rest hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_redis_key(key_hash: str) -> str:
    """Where the IAM service mirrors an active key for every service to check."""
    return f"cx:apikey:{key_hash}"


class JwtVerifier:
    """Validates bearer tokens against a JWKS from a file or a URL."""

    ALGORITHMS = ("RS256", "ES256")
    # Verified tokens are remembered until they expire (at most this long): a dialer sends
    # the same token thousands of times a second, and a signature check costs more than
    # the RPC it guards.
    CACHE_SECONDS = 60.0
    CACHE_ENTRIES = 10_000

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._verified: dict[str, tuple[float, Principal]] = {}
        self._keys: dict[str, Any] = {}
        self._client: jwt.PyJWKClient | None = None
        if settings.jwks_file is not None:
            jwks = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
            self._keys = {key.key_id or "": key.key for key in jwks.keys}
        elif settings.jwks_url:
            self._client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300)

    def _signing_key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid") or ""
        if kid not in self._keys:
            raise Unauthenticated("unknown signing key", reason="INVALID_TOKEN")
        return self._keys[kid]

    def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal, expires = self._verify(token)
        if len(self._verified) >= self.CACHE_ENTRIES:
            self._verified.clear()
        self._verified[token] = (min(expires, now + self.CACHE_SECONDS), principal)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=list(self.ALGORITHMS),
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from exc
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthenticated(f"invalid token: {exc}", reason="INVALID_TOKEN") from exc
        tenant = claims.get("tenant")
        roles = claims.get("roles", [])
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("token has no tenant claim", reason="INVALID_TOKEN")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token roles must be a list of strings", reason="INVALID_TOKEN")
        principal = Principal(
            tenant=tenant, subject=str(claims["sub"]), roles=frozenset(roles), credential="jwt"
        )
        return principal, float(claims["exp"])


class Authenticator:
    """Turns call metadata into a Principal and checks the RPC's permission."""

    # A valid API key is remembered this long: a dialer sends the same key thousands of
    # times a second, and a revocation then takes effect within this time on every replica.
    API_KEY_CACHE_SECONDS = 1.0
    API_KEY_CACHE_ENTRIES = 10_000

    def __init__(self, verifier: JwtVerifier | None, redis: Redis | None) -> None:
        self._verifier = verifier
        self._redis = redis
        self._api_keys: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, rule: MethodRule, metadata: Mapping[str, str]) -> Principal | None:
        if rule.public:
            return None
        if not rule.permission:
            raise PermissionDenied("this RPC is not open to any caller", reason="NO_AUTH_RULE")
        principal = await self._principal(rule, metadata)
        if not grants(principal.roles, rule.permission):
            raise PermissionDenied(
                f"missing permission {rule.permission}",
                metadata={"permission": rule.permission},
            )
        return principal

    async def _principal(self, rule: MethodRule, metadata: Mapping[str, str]) -> Principal:
        authorization = metadata.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            if self._verifier is None:
                raise Unauthenticated("bearer tokens are not configured", reason="INVALID_TOKEN")
            return self._verifier.verify(token.strip())
        api_key = metadata.get(API_KEY_HEADER, "")
        if api_key:
            if not rule.allow_api_key:
                raise Unauthenticated("this RPC needs a bearer token", reason="API_KEY_NOT_ALLOWED")
            return await self._api_key_principal(api_key)
        raise Unauthenticated("credentials required", reason="MISSING_CREDENTIALS")

    async def _api_key_principal(self, api_key: str) -> Principal:
        if self._redis is None:
            raise Unauthenticated("API keys are not configured", reason="INVALID_API_KEY")
        now = time.monotonic()
        key_hash = hash_api_key(api_key)  # the cache holds no secrets
        cached = self._api_keys.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self._load_api_key(key_hash)
        if len(self._api_keys) >= self.API_KEY_CACHE_ENTRIES:
            self._api_keys.clear()
        self._api_keys[key_hash] = (now + self.API_KEY_CACHE_SECONDS, principal)
        return principal

    async def _load_api_key(self, key_hash: str) -> Principal:
        assert self._redis is not None
        try:
            fields = await self._redis.hgetall(api_key_redis_key(key_hash))
        except RedisError as exc:
            raise Unavailable("credential store unavailable") from exc
        if not fields:
            raise Unauthenticated("invalid or revoked API key", reason="INVALID_API_KEY")
        # The client decodes responses, so every field is a str.
        values = {str(k): str(v) for k, v in fields.items()}
        roles = frozenset(values.get("roles", "").split(",")) & API_KEY_ROLES
        return Principal(
            tenant=values["tenant"],
            subject=values.get("name", "api-key"),
            roles=roles,
            credential="api_key",
        )
