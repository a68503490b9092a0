"""The local development signing key and the bearer tokens it signs.

`make run` and the tests keep an ES256 key under their state folder (never in the repo),
publish its public half as a JWKS that the services and Envoy trust, and mint tokens with
it. Production deployments point CXMESH_JWT_JWKS_URL at their identity provider instead.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEV_ISSUER = "cxmesh-dev"
DEV_AUDIENCE = "cxmesh"


@dataclass(frozen=True)
class SigningKey:
    private_key: ec.EllipticCurvePrivateKey
    kid: str

    @property
    def jwks(self) -> dict[str, list[dict[str, str]]]:
        public = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        public.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [public]}

    def mint(
        self,
        *,
        tenant: str,
        roles: list[str],
        subject: str = "developer",
        ttl_seconds: int = 12 * 3600,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        now: float | None = None,
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": issued,
            "exp": issued + ttl_seconds,
            "tenant": tenant,
            "roles": roles,
        }
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid})


def generate_key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), kid=uuid.uuid4().hex[:16])


def ensure_dev_key(folder: Path) -> tuple[SigningKey, Path]:
    """Loads the key in `folder`, creating it the first time; returns it and the JWKS path."""
    folder.mkdir(parents=True, exist_ok=True)
    key_path, kid_path, jwks_path = folder / "signing-key.pem", folder / "kid", folder / "jwks.json"
    if key_path.exists() and kid_path.exists():
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        key = SigningKey(private, kid_path.read_text().strip())
    else:
        key = generate_key()
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        kid_path.write_text(key.kid)
    jwks_path.write_text(json.dumps(key.jwks))
    return key, jwks_path
