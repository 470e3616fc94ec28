"""Signed commsNotifications posted to a call's callbackUri
(https://learn.microsoft.com/en-us/graph/api/resources/commsnotifications, https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications)."""

from __future__ import annotations

import logging
import ssl
import uuid
from typing import Any

import aiohttp

from emulator.keys import SigningKey
from emulator.login import NOTIFICATION_ISSUER
from emulator.notifyfaults import FaultInjector

logger = logging.getLogger(__name__)

NOTIFICATION_TOKEN_LIFETIME_SECONDS = 600.0
POST_TIMEOUT_SECONDS = 10.0


def notification(change_type: str, resource_url: str, resource_data: Any) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.commsNotification",
        "changeType": change_type,
        # Graph still sends the legacy /app path next to resourceUrl (example 3 of
        # https://learn.microsoft.com/en-us/graph/api/call-answer).
        "resource": resource_url.replace("/communications/", "/app/", 1),
        "resourceUrl": resource_url,
        "resourceData": resource_data,
    }


class Notifier:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None,
        faults: FaultInjector | None = None,
    ) -> None:
        self._session = session
        self._ssl = ssl_context
        self._faults = faults  # signing faults: expired, not yet valid, forged, rotated keys
        self.posted = 0
        self.failed = 0

    async def post(
        self,
        key: SigningKey,
        callback_uri: str,
        app_id: str,
        tenant_id: str,
        items: list[dict[str, Any]],
        scenario_id: str,
    ) -> int:
        """POST one commsNotifications batch; returns the HTTP status (0 if it never arrived)."""
        claims = {"iss": NOTIFICATION_ISSUER, "aud": app_id, "tid": tenant_id}
        if self._faults is not None:
            token = self._faults.sign(key, claims, NOTIFICATION_TOKEN_LIFETIME_SECONDS, items)
        else:
            token = key.sign(claims, NOTIFICATION_TOKEN_LIFETIME_SECONDS)
        body = {"@odata.type": "#microsoft.graph.commsNotifications", "value": items}
        headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": "Microsoft-Skype/3.0,(Calling/1.0)",
            "Scenario-Id": scenario_id,
            "X-Microsoft-Skype-Message-ID": str(uuid.uuid4()),
        }
        try:
            async with self._session.post(
                callback_uri,
                json=body,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_SECONDS),
            ) as response:
                self.posted += 1
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failed += 1
            logger.warning("Notifier x %s unreachable: %r", callback_uri, exc)
            return 0
