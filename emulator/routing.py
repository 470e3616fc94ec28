"""The checks every call-scoped Graph action makes, in Graph's order: 401 (token), 404 (unknown or
ended call), 403 (another app's call), 400 (malformed body or wrong state); then the action."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import EmulatedCall, Operation
from emulator.odata import (
    BadRequest,
    authenticate,
    bad_request,
    graph_error,
    not_found,
    read_object,
)

if TYPE_CHECKING:
    from emulator.server import Emulator

ActionHandler = Callable[
    ["Emulator", EmulatedCall, dict[str, Any], web.Request], Awaitable[web.StreamResponse]
]
ESTABLISHED = frozenset({"established"})
INCOMING = frozenset({"incoming"})


def find_call(
    emulator: Emulator, request: web.Request, *, allow_ending: bool = False
) -> EmulatedCall | web.Response:
    """The call named in the path, if the caller's app owns it.

    Another app's call is 403: the docs say nothing, and the 403s real bots report (7504
    "Insufficient enterprise tenant permissions", 7505 "Request authorization tenant mismatch")
    are authorization failures of exactly this kind.
    """
    claims = authenticate(emulator, request)
    if isinstance(claims, web.Response):
        return claims
    call = emulator.calls.get(request.match_info["call_id"])
    if call is None or call.state == "terminated" or (call.ending and not allow_ending):
        return not_found()
    if call.app_id != claims.get("appid"):
        return graph_error(403, "Forbidden", "The call belongs to another application.")
    call.touch()
    return call


def call_action(
    emulator: Emulator,
    handler: ActionHandler,
    *,
    states: frozenset[str] | None = ESTABLISHED,
    body_required: bool = False,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def action(request: web.Request) -> web.StreamResponse:
        call = find_call(emulator, request)
        if isinstance(call, web.Response):
            return call
        try:
            body = await read_object(request, required=body_required)
            if states is not None and call.state not in states:
                raise BadRequest(
                    f"The call is {call.state}; this action needs it {' or '.join(sorted(states))}."
                )
            return await handler(emulator, call, body, request)
        except BadRequest as exc:
            return bad_request(str(exc))

    return action


def operation_url(emulator: Emulator, call: EmulatedCall, operation: Operation) -> str:
    return f"{emulator.base_url}/v1.0{call.url}/operations/{operation.id}"


def operation_response(
    emulator: Emulator, call: EmulatedCall, operation: Operation, status: int = 200
) -> web.Response:
    """The operation in the body and its URL in Location (e.g. https://learn.microsoft.com/en-us/graph/api/call-playprompt)."""
    return web.json_response(
        operation.to_graph(),
        status=status,
        headers={"Location": operation_url(emulator, call, operation)},
    )
