"""The HTTPS notification webhook. Authenticates before it parses.

https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from bot.calls import CallCollection
from bot.errors import InboundAuthError
from bot.inbound_auth import NotificationValidator, TokenRejected

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/api/calling"
MAX_BODY_BYTES = 1024 * 1024
TOLD_REASONS = {"expired": "The token expired.", "not_yet_valid": "The token is not valid yet."}


@dataclass
class WebhookStats:
    accepted: int = 0
    unauthorized: int = 0
    malformed: int = 0
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
    return app


async def _notifications(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    try:
        await request.app[VALIDATOR].validate(request.headers.get("Authorization"))
    except InboundAuthError as exc:
        reason = exc.reason if isinstance(exc, TokenRejected) else "invalid"
        stats.unauthorized += 1
        stats.unauthorized_reasons[reason] += 1
        logger.warning(
            "Webhook x 401 (%s): %s; notification from %s not applied",
            reason,
            exc,
            request.remote,
        )
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
        body = json.loads(await request.read())
        items = body["value"]
        if not isinstance(items, list):
            raise TypeError("value is not an array")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as exc:
        stats.malformed += 1
        return web.json_response({"error": "badRequest", "message": f"{exc}"}, status=400)
    calls = request.app[CALLS]
    for item in items:
        calls.apply(item)
    stats.accepted += 1
    # The .NET SDK's ProcessNotificationAsync answers 202 Accepted.
    return web.Response(status=202)
