"""Inbound auth: validate the bearer token on every Graph notification
(https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications).

RS256 only, against keys from the notification OpenID configuration fetched over HTTPS; issuer
one of Graph's two documented issuers; audience the bot's app id; a non-empty tenant claim; exp
and nbf with an explicit leeway. Fails closed: no keys, no entry.

Keys roll over: a token naming a kid we do not have makes us fetch the keys again, promptly the
first time since the last such fetch (a rotation shortly after start-up is accepted), then at most
once per `unknown_kid_refresh_seconds`, so that forged kids cannot turn every request into a
fetch of the key endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from bot.errors import InboundAuthError

logger = logging.getLogger(__name__)

VALID_ISSUERS = ("https://graph.microsoft.com", "https://api.botframework.com")
TENANT_CLAIMS = ("tid", "http://schemas.microsoft.com/identity/claims/tenantid")
KEYS_MAX_AGE_SECONDS = 2 * 3600.0  # the .NET sample refreshes the OpenID config every 2 h
UNKNOWN_KID_REFRESH_SECONDS = 60.0  # a forged kid must not make us hammer the key endpoint
FETCH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class InboundIdentity:
    tenant_id: str
    claims: dict[str, Any]


class TokenRejected(InboundAuthError):
    """Why a token was refused, as a short stable reason for logs and counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # missing | malformed | algorithm | unknown_key | expired | ...


class NotificationValidator:
    def __init__(
        self,
        app_id: str,
        openid_url: str,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None = None,
        leeway_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        unknown_kid_refresh_seconds: float = UNKNOWN_KID_REFRESH_SECONDS,
    ) -> None:
        if not openid_url.startswith("https://"):
            raise ValueError("the notification OpenID configuration must be fetched over https")
        self._app_id = app_id
        self._openid_url = openid_url
        self._session = session
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._leeway = leeway_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._refresh_interval = unknown_kid_refresh_seconds
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None  # any fetch: gates refreshes of stale keys
        self._kid_attempted_at: float | None = None  # fetches for an unknown kid
        self.refreshes = 0  # fetches on demand (unknown kid, keys past their age), not prefetch
        self._lock = asyncio.Lock()
        self.rejected = 0

    async def validate(self, authorization: str | None) -> InboundIdentity:
        try:
            return await self._validate(authorization)
        except InboundAuthError:
            self.rejected += 1
            raise

    async def _validate(self, authorization: str | None) -> InboundIdentity:
        if not authorization or not authorization.startswith("Bearer "):
            raise TokenRejected("missing", "missing bearer token")
        token = authorization[len("Bearer ") :].strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("malformed", f"malformed token: {exc}") from None
        if header.get("alg") != "RS256":
            raise TokenRejected("algorithm", f"algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._app_id,
                issuer=VALID_ISSUERS,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            # Checked after the signature (PyJWT verifies it first): only Graph's own keys get
            # this far, so saying "expired" tells a forger nothing.
            raise TokenRejected("expired", "token expired (beyond the clock-skew leeway)") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not_yet_valid", "token not valid yet (nbf/iat ahead)") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature", "signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("invalid", f"invalid token: {exc}") from None
        tenant = next((claims[c] for c in TENANT_CLAIMS if claims.get(c)), None)
        if not isinstance(tenant, str) or not tenant:
            raise TokenRejected("no_tenant", "token has no tenant claim")
        return InboundIdentity(tenant, claims)

    async def prefetch(self) -> None:
        """Fetch the keys now (at start-up) instead of on the first notification."""
        async with self._lock:
            self._attempted_at = self._clock()
            await self._refresh()
            self._fetched_at = self._attempted_at

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > KEYS_MAX_AGE_SECONDS

    def _may_fetch(self, kid: str, now: float) -> bool:
        """At most one fetch per interval for unknown kids, and one per interval for stale keys,
        whatever the outcome: neither forged kids nor an outage of the key endpoint may turn
        every request into a fetch. The start-up fetch does not count against an unknown kid,
        so a rotation right after start is picked up at once."""
        interval = self._refresh_interval
        if self._stale(now):
            return self._attempted_at is None or now - self._attempted_at > interval
        if kid not in self._keys:
            return self._kid_attempted_at is None or now - self._kid_attempted_at > interval
        return False

    async def _key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys or self._stale(self._clock()):
            async with self._lock:
                now = self._clock()
                if self._may_fetch(kid, now):
                    unknown = kid not in self._keys
                    self._attempted_at = now
                    if unknown:
                        self._kid_attempted_at = now
                    try:
                        await self._refresh()
                        self._fetched_at = now
                        self.refreshes += 1
                        logger.info(
                            "NotificationValidator x fetched signing keys (%s): %s",
                            f"unknown kid {kid!r}" if unknown else "keys past their age",
                            ", ".join(sorted(self._keys)),
                        )
                    except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
                        logger.warning("NotificationValidator x key refresh failed: %r", exc)
                if self._stale(now):
                    self._keys.clear()  # fail closed rather than trust keys past their age
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected("unknown_key", f"no published signing key {kid!r}")
        return key

    async def _refresh(self) -> None:
        config = await self._get_json(self._openid_url)
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("OpenID configuration has no https jwks_uri")
        jwks = jwt.PyJWKSet.from_dict(await self._get_json(jwks_uri))
        self._keys = {k.key_id: k for k in jwks.keys if k.key_id}

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._session.get(
            url, ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        ) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return data
