"""One exception root per boundary: Graph (outbound) and inbound notifications."""

from __future__ import annotations

from typing import Any


class GraphError(Exception):
    """Graph answered with an error, or could not be reached."""

    def __init__(
        self, status: int, code: str, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"Graph {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class GraphThrottledError(GraphError):
    """Graph answered 429, 503 or 504 (after the client's retries, when it reaches the caller)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        body: dict[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(status, code, message, body)
        self.retry_after = retry_after


class GraphAuthError(GraphError):
    """No access token could be acquired (bad credentials, unreachable authority)."""


class InboundAuthError(Exception):
    """A notification's bearer token failed validation; the webhook answers 401."""
