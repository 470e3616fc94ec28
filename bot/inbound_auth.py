"""Inbound auth: validate the bearer token on every Graph notification
(https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications).

RS256 only, against keys from the notification OpenID configuration fetched over HTTPS; issuer
one of Graph's two documented issuers; audience the bot's app id; a non-empty tenant claim,
and one of the allowed tenants when a list is set (empty: any tenant, as a multi-tenant app
needs); exp and nbf with an explicit leeway. Fails closed: no keys, no entry.

Signing keys roll over, and a token names its key by `kid`. Keys are kept current two ways:

- Scheduled: the OpenID configuration and the JWKS are fetched again every
  `KEYS_REFRESH_SECONDS` (2 h, as Microsoft's samples do: AuthenticationProvider.cs in
  microsoftgraph/microsoft-graph-comms-samples, Samples/Common/Sample.Common/Authentication),
  with no request needed; a failed refresh is retried every `KEYS_RETRY_SECONDS`. Keys nobody
  managed to refresh for `KEYS_MAX_AGE_SECONDS` are dropped (fail closed).
- On demand, for a kid we do not have (Graph can sign with a new key before our schedule comes
  round; "RefreshOnIssuerKeyNotFound" in
  https://learn.microsoft.com/en-us/entra/identity-platform/howto-build-services-resilient-to-metadata-refresh).

Anybody can put any kid in a token, so the on-demand path is built so that forged kids can
neither hammer the key endpoint nor keep a genuine new kid out:

- Coalesced: every unknown kid waits for the same next fetch; at most one fetch is in flight
  and at most one more is queued behind it, whatever the number of waiters. A kid is only
  answered by a fetch that started after it arrived (the one in flight may predate its key).
- Rate: a token bucket, `UNKNOWN_KID_BURST` fetches at once, then one per
  `unknown_kid_refresh_seconds` (S). So the key endpoint sees at most BURST + t/S on-demand
  fetches in t seconds, whatever arrives, however many distinct kids.
- No starvation: the queued fetch runs on that fixed cadence and serves every kid waiting, so
  forged kids cannot use a budget up for a genuine one: a genuine new kid waits at most S (plus
  the fetches' own timeouts) for a fetch that looks for it too. Waiting, rather than refusing
  at once, matters because Graph does not post a refused notification again.
- Negative cache: a kid that a fetch (started after the kid arrived) did not find is refused at
  once for `NEGATIVE_KID_SECONDS`, costing no fetch and no wait; at most `NEGATIVE_KIDS` are
  remembered (the oldest forgotten first: a forgotten kid just waits for a fetch again, still
  inside the rate above; a kid longer than `MAX_KID_CHARS` is refused unfetched and
  unremembered). The time is short so that a genuine kid Graph used a moment before
  publishing it is looked for again soon; any fetch in between that finds it admits it at once.

All timing reads the injected `clock` and waits with the injected `sleep`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from bot.errors import InboundAuthError

logger = logging.getLogger(__name__)

VALID_ISSUERS = ("https://graph.microsoft.com", "https://api.botframework.com")
TENANT_CLAIMS = ("tid", "http://schemas.microsoft.com/identity/claims/tenantid")
KEYS_REFRESH_SECONDS = 2 * 3600.0  # the .NET sample refreshes the OpenID config every 2 h
KEYS_RETRY_SECONDS = 60.0  # a failed scheduled refresh is tried again this soon
KEYS_MAX_AGE_SECONDS = 3 * KEYS_REFRESH_SECONDS  # two refreshes and their retries may fail
UNKNOWN_KID_REFRESH_SECONDS = 5.0  # S: on-demand fetches after the burst, one per this
UNKNOWN_KID_BURST = 3
NEGATIVE_KID_SECONDS = 60.0
NEGATIVE_KIDS = 4096
MAX_KID_CHARS = 128  # Graph's kids are some 30 characters; a longer one is refused unfetched
FETCH_TIMEOUT_SECONDS = 5.0  # each of the two GETs (OpenID configuration, then JWKS)

Sleep = Callable[[float], Awaitable[None]]
# What a broken or hostile key endpoint can make the fetch raise (KeyError, TypeError: a JWK
# of the wrong shape).
FETCH_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, jwt.PyJWTError)


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
        allowed_tenants: Iterable[str] = (),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """allowed_tenants: tenant ids (compared case-insensitively) whose notifications are
        accepted; empty: any tenant's. clock and sleep time every refresh and wait."""
        if not openid_url.startswith("https://"):
            raise ValueError("the notification OpenID configuration must be fetched over https")
        self._app_id = app_id
        self._openid_url = openid_url
        self._session = session
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._leeway = leeway_seconds
        self._clock = clock
        self._sleep = sleep
        self._tenants = frozenset(t.strip().lower() for t in allowed_tenants if t.strip())
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the start of the last fetch that succeeded
        self._refresh_due = clock() + KEYS_RETRY_SECONDS  # prefetch() normally comes first
        self._interval = unknown_kid_refresh_seconds
        self._tokens = float(UNKNOWN_KID_BURST)
        self._tokens_at = clock()
        self._inflight: asyncio.Task[BaseException | None] | None = None
        self._queued: asyncio.Task[BaseException | None] | None = None  # the next on-demand
        self._negative: OrderedDict[str, float] = OrderedDict()  # kid -> refused until
        self._maintainer: asyncio.Task[None] | None = None
        self.fetches = 0  # every fetch of the keys, whatever started it
        self.refreshes = 0  # on-demand fetches that succeeded (unknown kid, keys past their age)
        self.scheduled = 0  # scheduled fetches that succeeded
        self.negative_hits = 0  # tokens refused at once: their kid was looked for already
        self.rejected = 0

    # -- validation -----------------------------------------------------------------------------

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
        if self._tenants and tenant.strip().lower() not in self._tenants:
            # Graph signed it, for this app, but for a tenant this bot does not serve.
            raise TokenRejected("tenant_not_allowed", f"tenant {tenant!r} is not allowed")
        return InboundIdentity(tenant, claims)

    # -- keys -----------------------------------------------------------------------------------

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > KEYS_MAX_AGE_SECONDS

    async def _key(self, kid: str) -> jwt.PyJWK:
        now = self._clock()
        if not self._stale(now) and kid in self._keys:
            return self._keys[kid]
        if len(kid) > MAX_KID_CHARS:  # nor remembered: the negative cache stays small
            raise TokenRejected("unknown_key", f"no published signing key {kid[:32]!r}...")
        if self._refused(kid, now):
            self.negative_hits += 1
            raise TokenRejected("unknown_key", f"no published signing key {kid!r}")
        queued = self._queued
        if queued is None or queued.done():
            queued = self._queued = asyncio.create_task(self._on_demand(kid))
        # Shielded: a waiter that goes away (the client hung up) does not cancel everyone's.
        error = await asyncio.shield(queued)
        now = self._clock()
        if self._stale(now):
            self._keys.clear()  # fail closed rather than trust keys past their age
        key = self._keys.get(kid)
        if key is not None:
            return key
        if error is None:  # looked for, after it arrived, and not there
            self._negative[kid] = now + NEGATIVE_KID_SECONDS
            self._negative.move_to_end(kid)
            while len(self._negative) > NEGATIVE_KIDS:
                self._negative.popitem(last=False)
        raise TokenRejected("unknown_key", f"no published signing key {kid!r}")

    def _refused(self, kid: str, now: float) -> bool:
        until = self._negative.get(kid)
        if until is None:
            return False
        if until > now:
            return True
        del self._negative[kid]
        return False

    def _take_token(self, now: float) -> float:
        """0 and a token taken if one is there; else how long until one is."""
        if self._interval <= 0:
            return 0.0
        elapsed = max(0.0, now - self._tokens_at)
        self._tokens = min(float(UNKNOWN_KID_BURST), self._tokens + elapsed / self._interval)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) * self._interval

    async def _on_demand(self, kid: str) -> BaseException | None:
        """The queued fetch: after the one in flight (its answer may predate the kids waiting
        here), and once the bucket has a token. It stops being the queued one as it starts, so
        a kid arriving later waits for a fetch of its own."""
        while (wait := self._take_token(self._clock())) > 0:
            await self._sleep(wait)
        while (inflight := self._inflight) is not None and not inflight.done():
            await asyncio.shield(inflight)
        if self._queued is asyncio.current_task():
            self._queued = None
        stale = self._stale(self._clock())
        error = await self._shared_fetch()
        if error is None:
            self.refreshes += 1
            logger.info(
                "NotificationValidator x fetched signing keys (%s): %s",
                "keys past their age" if stale and kid in self._keys else f"unknown kid {kid!r}",
                ", ".join(sorted(self._keys)),
            )
        return error

    async def _shared_fetch(self) -> BaseException | None:
        """The fetch in flight, or a new one: never two at once."""
        inflight = self._inflight
        if inflight is None or inflight.done():
            inflight = self._inflight = asyncio.create_task(self._fetch())
        return await asyncio.shield(inflight)

    async def _fetch(self) -> BaseException | None:
        started = self._clock()
        self.fetches += 1
        try:
            self._keys = await self._download()
        except FETCH_ERRORS as exc:
            logger.warning("NotificationValidator x key refresh failed: %r", exc)
            return exc
        self._fetched_at = started
        self._refresh_due = started + KEYS_REFRESH_SECONDS
        return None

    async def _download(self) -> dict[str, jwt.PyJWK]:
        config = await self._get_json(self._openid_url)
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("OpenID configuration has no https jwks_uri")
        jwks = jwt.PyJWKSet.from_dict(await self._get_json(jwks_uri))
        return {k.key_id: k for k in jwks.keys if k.key_id}

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._session.get(
            url, ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        ) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return data

    # -- lifecycle: the start-up fetch and the schedule --------------------------------------------

    async def prefetch(self) -> None:
        """Fetch the keys now (at start-up) instead of on the first notification. Does not
        count against unknown kids, so a rotation right after start is picked up at once."""
        error = await self._shared_fetch()
        if error is not None:
            raise error

    def start(self) -> None:
        """Start the scheduled refresh (the webhook app does, as it starts)."""
        if self._maintainer is None or self._maintainer.done():
            self._maintainer = asyncio.create_task(self._maintain(), name="notification-keys")

    async def close(self) -> None:
        tasks = [t for t in (self._maintainer, self._queued, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._maintainer = self._queued = self._inflight = None

    async def _maintain(self) -> None:
        while True:
            wait = self._refresh_due - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue  # look again: a fetch in between may have moved the due time
            if await self._shared_fetch() is None:
                self.scheduled += 1
                logger.info(
                    "NotificationValidator x refreshed signing keys (scheduled): %s",
                    ", ".join(sorted(self._keys)),
                )
            else:
                self._refresh_due = self._clock() + KEYS_RETRY_SECONDS
