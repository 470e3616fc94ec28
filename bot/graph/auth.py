"""Outbound auth: MSAL client-credentials tokens for Graph (the OAuth 2.0 client credentials
flow, https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bot.errors import GraphAuthError

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MICROSOFT_LOGIN_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us"}


AUTHORITY_TIMEOUT_SECONDS = 10.0


class _TimeoutSession(requests.Session):
    """MSAL skips its own timeout when given an http_client; a hung authority must not hang us."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", AUTHORITY_TIMEOUT_SECONDS)
        return super().request(*args, **kwargs)


def certificate_credential(path: str) -> dict[str, str]:
    """MSAL's certificate credential: the key and the certificate. Without a SHA-1 "thumbprint"
    MSAL names the certificate by its SHA-256 thumbprint (x5t#S256) and signs PS256; the
    SHA-1 form is deprecated in MSAL's documentation."""
    pem = Path(path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, password=None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "private_key": key_pem.decode(),
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


class TokenProvider:
    """Acquires and caches app tokens; MSAL refreshes them before expiry.

    MSAL is blocking (requests), so every call runs in a worker thread, never on the loop.
    """

    def __init__(
        self,
        app_id: str,
        secret: str | None,
        authority: str,
        ca_file: str | None,
        certificate_file: str | None = None,
    ) -> None:
        """Authenticate with a client secret, or with a certificate (a PEM file holding the
        private key and the certificate; MSAL signs a client assertion with it)."""
        if not secret and not certificate_file:
            raise ValueError("a client secret or a certificate is required")
        self._app_id = app_id
        self._credential: str | dict[str, str] = (
            certificate_credential(certificate_file) if certificate_file else str(secret)
        )
        self._authority = authority
        self._ca_file = ca_file
        self._app: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self._app is None:
                http = _TimeoutSession()
                if self._ca_file:
                    # requests lets REQUESTS_CA_BUNDLE override a session's `verify`: a local
                    # authority needs a session that ignores the environment.
                    http.trust_env = False
                    http.verify = self._ca_file
                microsoft = urllib.parse.urlsplit(self._authority).hostname in MICROSOFT_LOGIN_HOSTS
                self._app = msal.ConfidentialClientApplication(
                    self._app_id,
                    client_credential=self._credential,
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
