"""The HTTPS notification webhook (graph-comms.md section 1.7). Authenticates before it parses."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from bot.calls import CallCollection
from bot.errors import InboundAuthError
from bot.inbound_auth import NotificationValidator

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/api/calling"
MAX_BODY_BYTES = 1024 * 1024


@dataclass
class WebhookStats:
    accepted: int = 0
    unauthorized: int = 0
    malformed: int = 0


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
        stats.unauthorized += 1
        logger.info("Webhook x 401: %s", exc)
        # The reason is logged, not told: a forger learns nothing about which check failed.
        return web.json_response({"error": "unauthorized"}, status=401)
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
    # The .NET SDK answers 202 Accepted (graph-comms.md 1.7).
    return web.Response(status=202)
