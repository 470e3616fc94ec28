"""Graph calls API client on aiohttp (graph-comms.md section 1.2)."""

from __future__ import annotations

import json
import ssl
import uuid
from typing import Any

import aiohttp

from bot.errors import GraphError
from bot.graph.auth import TokenProvider

USER_AGENT = "GraphCommunicationsClient-graph-media-bot/0.1"
REQUEST_TIMEOUT_SECONDS = 30.0


class GraphClient:
    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._session = session
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.requests_made = 0

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, scenario_id: str = ""
    ) -> dict[str, Any]:
        """Send one request; returns the JSON body ({} for none). Raises GraphError."""
        headers = {
            "Authorization": f"Bearer {await self._tokens.token()}",
            "Client-Request-Id": str(uuid.uuid4()),
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
            raise GraphError(
                status, str(error.get("code", "unknown")), str(error.get("message", "")), data
            )
        return data if isinstance(data, dict) else {"value": data}

    async def create_call(self, call: dict[str, Any], scenario_id: str = "") -> dict[str, Any]:
        return await self.request("POST", "/communications/calls", call, scenario_id)

    async def delete_call(self, call_id: str, scenario_id: str = "") -> None:
        await self.request("DELETE", f"/communications/calls/{call_id}", None, scenario_id)
