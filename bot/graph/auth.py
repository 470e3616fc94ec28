"""Outbound auth: MSAL client-credentials tokens for Graph (graph-comms.md section 2.1)."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from typing import Any

import msal
import requests

from bot.errors import GraphAuthError

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MICROSOFT_LOGIN_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us"}


AUTHORITY_TIMEOUT_SECONDS = 10.0


class _TimeoutSession(requests.Session):
    """MSAL skips its own timeout when given an http_client; a hung authority must not hang us."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", AUTHORITY_TIMEOUT_SECONDS)
        return super().request(*args, **kwargs)


class TokenProvider:
    """Acquires and caches app tokens; MSAL refreshes them before expiry.

    MSAL is blocking (requests), so every call runs in a worker thread, never on the loop.
    """

    def __init__(self, app_id: str, secret: str, authority: str, ca_file: str | None) -> None:
        self._app_id = app_id
        self._secret = secret
        self._authority = authority
        self._ca_file = ca_file
        self._app: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self._app is None:
                http = _TimeoutSession()
                if self._ca_file:
                    # REQUESTS_CA_BUNDLE would override `verify` (verified-facts.md): a local
                    # authority needs a session that ignores the environment.
                    http.trust_env = False
                    http.verify = self._ca_file
                microsoft = urllib.parse.urlsplit(self._authority).hostname in MICROSOFT_LOGIN_HOSTS
                self._app = msal.ConfidentialClientApplication(
                    self._app_id,
                    client_credential=self._secret,
                    authority=self._authority,
                    http_client=http,
                    instance_discovery=microsoft,
                    validate_authority=microsoft,
                )
            return self._app

    def _acquire(self) -> str:
        try:
            result = self._client().acquire_token_for_client(scopes=[GRAPH_SCOPE])
        except (requests.RequestException, ValueError) as exc:
            raise GraphAuthError(0, "authorityUnreachable", str(exc)) from exc
        token = result.get("access_token")
        if not isinstance(token, str):
            raise GraphAuthError(
                401, str(result.get("error", "noToken")), str(result.get("error_description", ""))
            )
        return token

    async def token(self) -> str:
        return await asyncio.to_thread(self._acquire)
