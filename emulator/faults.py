"""Every Graph request, recorded for tests; and injected throttling/outage answers (429/503 with
Retry-After, https://learn.microsoft.com/en-us/graph/throttling) that tests arm through
POST /emulator/faults."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from emulator.odata import BadRequest, app_id_of, graph_error

if TYPE_CHECKING:
    from emulator.server import Emulator

GRAPH_PREFIXES = ("/v1.0/", "/beta/")
FAULT_CODES = {429: "TooManyRequests", 503: "ServiceUnavailable"}
MAX_RULES = 100


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    app_id: str | None
    received_at: float = field(default_factory=time.monotonic)  # benchmarks time answers


@dataclass
class FaultRule:
    status: int
    retry_after_seconds: float
    remaining: int
    path_prefix: str

    def response(self) -> web.Response:
        # Retry-After in whole seconds, rounded up (RFC 9110 section 10.2.3: delay-seconds).
        retry_after = str(math.ceil(self.retry_after_seconds))
        message = "Too many requests." if self.status == 429 else "The service is unavailable."
        return graph_error(
            self.status, FAULT_CODES[self.status], message, headers={"Retry-After": retry_after}
        )


def parse_rule(body: dict[str, Any]) -> FaultRule:
    status, retry_after = body.get("status"), body.get("retryAfterSeconds")
    count, prefix = body.get("count", 1), body.get("pathPrefix", "/v1.0/")
    if status not in FAULT_CODES:
        raise BadRequest("status must be 429 or 503.")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after < 0:
        raise BadRequest("retryAfterSeconds must be a number of seconds, 0 or more.")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadRequest("count must be a positive integer.")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise BadRequest("pathPrefix must be a path starting with /.")
    return FaultRule(int(status), float(retry_after), count, prefix)


def add_rule(emulator: Emulator, rule: FaultRule) -> None:
    if len(emulator.faults) >= MAX_RULES:
        raise BadRequest(f"At most {MAX_RULES} fault rules can be armed.")
    emulator.faults.append(rule)


def take_fault(emulator: Emulator, path: str) -> FaultRule | None:
    """The first armed rule for this path, counted down; spent rules are dropped."""
    for rule in emulator.faults:
        if path.startswith(rule.path_prefix):
            rule.remaining -= 1
            if rule.remaining <= 0:
                emulator.faults.remove(rule)
            return rule
    return None


def middleware(emulator: Emulator) -> Middleware:
    @web.middleware
    async def record_and_fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Graph requests (under /v1.0/ or /beta/) are recorded in arrival order; an armed fault
        answers in the handler's place, so the request has no effect."""
        if not request.path.startswith(GRAPH_PREFIXES):
            return await handler(request)
        raw = await request.read()  # aiohttp keeps the body for the handler
        try:
            body = json.loads(raw) if raw.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        emulator.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
                body,
                app_id_of(emulator, request),
            )
        )
        rule = take_fault(emulator, request.path)
        if rule is not None:
            return rule.response()
        return await handler(request)

    return record_and_fault
