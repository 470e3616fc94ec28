"""The Graph calls API under /v1.0/communications/calls
(https://learn.microsoft.com/en-us/graph/api/resources/call): creating calls (emulator.create),
answering incoming ones (emulator.incoming), call and participant actions (emulator.operations,
emulator.mediaops, emulator.participants), and here GET, DELETE, keepAlive and GET of an
operation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator import incoming, operations
from emulator import mediaops as media_operations
from emulator import participants as participant_actions
from emulator.calls import HUNG_UP, EmulatedCall, end_call
from emulator.create import create_call
from emulator.odata import CALL, CALLS, not_found
from emulator.routing import call_action, find_call

if TYPE_CHECKING:
    from emulator.server import Emulator

__all__ = ["EmulatedCall", "routes"]


def routes(emulator: Emulator) -> list[web.RouteDef]:
    async def create(request: web.Request) -> web.Response:
        return await create_call(emulator, request)

    async def get_call(request: web.Request) -> web.Response:
        call = find_call(emulator, request, allow_ending=True)
        if isinstance(call, web.Response):
            return call
        return web.json_response(call.resource())

    async def delete_call(request: web.Request) -> web.Response:
        """204, then `updated` terminating and `deleted` terminated {0}
        (https://learn.microsoft.com/en-us/graph/api/call-delete)."""
        call = find_call(emulator, request)
        if isinstance(call, web.Response):
            return call
        end_call(emulator, call, HUNG_UP)
        return web.Response(status=204)

    async def keep_alive(
        emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
    ) -> web.Response:
        """200 and no notification; the inactivity clock was reset by the lookup itself, and an
        ended call was already 404 (https://learn.microsoft.com/en-us/graph/api/call-keepalive)."""
        return web.Response(status=200)

    async def get_operation(request: web.Request) -> web.Response:
        call = find_call(emulator, request, allow_ending=True)
        if isinstance(call, web.Response):
            return call
        operation = call.operations.get(request.match_info["operation_id"])
        if operation is None:
            return not_found("Operation not found.")
        return web.json_response(operation.to_graph())

    return [
        web.post(CALLS, create),
        web.get(CALL, get_call),
        web.delete(CALL, delete_call),
        web.post(CALL + "/keepAlive", call_action(emulator, keep_alive, states=None)),
        web.get(CALL + "/operations/{operation_id}", get_operation),
        *incoming.routes(emulator),
        *operations.routes(emulator),
        *media_operations.routes(emulator),
        *participant_actions.routes(emulator),
    ]
