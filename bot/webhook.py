"""The HTTPS notification webhook. Authenticates before it parses.

https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from bot.calls import CallCollection
from bot.errors import InboundAuthError
from bot.inbound_auth import NotificationValidator, TokenRejected
from media import safe_json
from media.listener import auth_blocked, auth_failed

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/api/calling"
MAX_BODY_BYTES = 1024 * 1024
TOLD_REASONS = {"expired": "The token expired.", "not_yet_valid": "The token is not valid yet."}
SIGNED_REASONS = frozenset({*TOLD_REASONS, "tenant_not_allowed"})  # the signature verified


@dataclass
class WebhookStats:
    accepted: int = 0
    unauthorized: int = 0
    malformed: int = 0
    rate_limited: int = 0  # refused: the address is over its failed-authentication budget
    unauthorized_reasons: Counter[str] = field(default_factory=Counter)  # expired, unknown_key...


VALIDATOR = web.AppKey("validator", NotificationValidator)
CALLS = web.AppKey("calls", CallCollection)
STATS = web.AppKey("stats", WebhookStats)


def create_app(validator: NotificationValidator, calls: CallCollection) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[VALIDATOR] = validator
    app[CALLS] = calls
    app[STATS] = WebhookStats()
    app.router.add_post(WEBHOOK_PATH, _notifications)
    app.on_startup.append(_start_validator)  # its scheduled key refresh lives as long as we do
    app.on_cleanup.append(_close_validator)
    return app


async def _start_validator(app: web.Application) -> None:
    app[VALIDATOR].start()


async def _close_validator(app: web.Application) -> None:
    await app[VALIDATOR].close()


def _too_many() -> web.Response:
    """RFC 6585 section 4, and the connection closes (new ones are refused at accept until
    the address's budget refills, media/listener.py)."""
    response = web.json_response({"error": "tooManyRequests"}, status=429)
    response.headers["Retry-After"] = "60"
    response.force_close()
    return response


async def _notifications(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    if auth_blocked(request):  # on a connection opened before the address went over
        stats.rate_limited += 1
        return _too_many()
    try:
        await request.app[VALIDATOR].validate(request.headers.get("Authorization"))
    except InboundAuthError as exc:
        reason = exc.reason if isinstance(exc, TokenRejected) else "invalid"
        stats.unauthorized += 1
        stats.unauthorized_reasons[reason] += 1
        # Counted against the address: tokens Graph did not sign. A stale or another tenant's
        # token verified as Graph's, and Graph's own addresses must not be shut out by it.
        if reason not in SIGNED_REASONS and not auth_failed(request):
            stats.rate_limited += 1  # said in the listener's periodic warning, not per attempt
            return _too_many()
        status = 403 if reason == "tenant_not_allowed" else 401
        logger.warning(
            "Webhook x %d (%s): %s; notification from %s not applied",
            status,
            reason,
            exc,
            request.remote,
        )
        if status == 403:
            # Graph signed it, for another tenant: the credentials are good but do not grant
            # this bot's webhook (RFC 9110 section 15.5.4, 403 Forbidden).
            return web.json_response({"error": "forbidden"}, status=403)
        # The reason is logged, and told only when the signature verified (expiry is checked
        # after it): a forger learns nothing about which check failed, while Graph's own stale
        # token is named. RFC 6750 section 3: answered with WWW-Authenticate, invalid_token.
        told = TOLD_REASONS.get(reason)
        challenge = 'Bearer error="invalid_token"'
        if told is not None:
            challenge += f', error_description="{told}"'
        refusal = {"error": "unauthorized", **({"message": told} if told else {})}
        return web.json_response(refusal, status=401, headers={"WWW-Authenticate": challenge})
    try:
        body = safe_json.loads(await request.read())  # oversized numbers, nesting: refused
        items = body["value"]
        if not isinstance(items, list):
            raise TypeError("value is not an array")
    except (safe_json.JsonRefused, KeyError, TypeError) as exc:
        stats.malformed += 1
        return web.json_response({"error": "badRequest", "message": f"{exc}"}, status=400)
    calls = request.app[CALLS]
    for item in items:
        calls.apply(item)
    stats.accepted += 1
    # The .NET SDK's ProcessNotificationAsync answers 202 Accepted.
    return web.Response(status=202)
