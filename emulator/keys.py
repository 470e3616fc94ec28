"""RSA signing keys published as JWKS, for access tokens and for notification tokens."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class SigningKey:
    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return jwk

    def sign(self, claims: dict[str, Any], lifetime_seconds: float = 3600.0) -> str:
        now = int(time.time())
        body = {"iat": now, "nbf": now, "exp": now + int(lifetime_seconds), **claims}
        return jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def verify(token: str, key: SigningKey, audience: str) -> dict[str, Any]:
    """Verify a token this emulator issued. Raises jwt.InvalidTokenError."""
    return jwt.decode(
        token, key.private_key.public_key(), algorithms=["RS256"], audience=audience, leeway=60
    )
