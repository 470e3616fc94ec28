"""Graph calls API client on aiohttp (https://learn.microsoft.com/en-us/graph/api/resources/call#methods)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from bot.errors import GraphError, GraphThrottledError
from bot.graph.auth import TokenProvider

USER_AGENT = "GraphCommunicationsClient-graph-media-bot/0.1"
REQUEST_TIMEOUT_SECONDS = 30.0
logger = logging.getLogger(__name__)


RETRY_STATUSES = (429, 503, 504)
IDEMPOTENT = ("GET", "DELETE", "PUT")  # 504 may mean "done, but late": retried only for these
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 60.0
Sleep = Callable[[float], Awaitable[None]]


def retry_after_seconds(value: str | None, attempt: int, now: datetime | None = None) -> float:
    """Seconds to wait: Retry-After as delta-seconds or an HTTP date (RFC 9110 10.2.3), else
    exponential back-off; capped so a bad header cannot park a call for long."""
    delay = BACKOFF_BASE_SECONDS * 2**attempt
    if value:
        try:
            given = float(value)
            if math.isfinite(given):
                delay = given
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
                delay = (when - (now or datetime.now(UTC))).total_seconds()
            except (TypeError, ValueError):
                pass
    return min(max(delay, 0.0), MAX_RETRY_AFTER_SECONDS)


class GraphClient:
    """Sends Graph requests with MSAL tokens; retries 429/503/504 honouring Retry-After."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._sleep = sleep
        self.retries = 0
        self.tokens = tokens
        self._session = session
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.requests_made = 0

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        scenario_id: str = "",
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Send a request, retrying throttling; returns the JSON body ({} for none).

        `deadline` (event-loop time) bounds the retries: a retry that could not be sent before
        it is not attempted (answering an incoming call has Graph's 15 s window).
        Raises GraphThrottledError when retries run out, GraphError for any other failure.
        """
        client_request_id = str(uuid.uuid4())  # one id across retries: it names the request
        loop = asyncio.get_running_loop()
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await self._once(method, path, body, scenario_id, client_request_id)
            except GraphThrottledError as exc:
                delay = retry_after_seconds(exc.retry_after, attempt)
                last = attempt == MAX_ATTEMPTS - 1
                late = deadline is not None and loop.time() + delay >= deadline
                if last or late or (exc.status == 504 and method not in IDEMPOTENT):
                    raise
                self.retries += 1
                logger.info(
                    "Graph > %s %s got %d; retrying in %.1f s", method, path, exc.status, delay
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        scenario_id: str,
        client_request_id: str,
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {await self.tokens.token()}",
            "Client-Request-Id": client_request_id,
            "Scenario-Id": scenario_id or str(uuid.uuid4()),
            "User-Agent": USER_AGENT,
        }
        self.requests_made += 1
        try:
            async with self._session.request(
                method,
                self._base + path,
                json=body,
                headers=headers,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as response:
                text = (await response.read()).decode("utf-8", errors="replace")
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphError(0, "unreachable", f"{method} {path}: {exc!r}") from exc
        data: Any = {}
        if text:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = {"raw": text[:500]}
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if not isinstance(error, dict):  # OData says an object; be lenient with the rest
                error = {"code": str(error or "unknown"), "message": text[:200]}
            code, message = str(error.get("code", "unknown")), str(error.get("message", ""))
            if status in RETRY_STATUSES:
                raise GraphThrottledError(status, code, message, data, retry_after)
            raise GraphError(status, code, message, data)
        return data if isinstance(data, dict) else {"value": data}
