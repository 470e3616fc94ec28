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


class GraphAuthError(GraphError):
    """No access token could be acquired (bad credentials, unreachable authority)."""


class InboundAuthError(Exception):
    """A notification's bearer token failed validation; the webhook answers 401."""
