"""The emulator's own control API under /emulator/ (JSON, no auth): start incoming calls, press
DTMF tones, arm 429/503 faults, and read the emulator's full view of a call. Tests and people
drive the emulated other side through it; it is not part of Graph."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from emulator.calls import ENDED, EmulatedCall
from emulator.faults import add_rule, parse_rule
from emulator.impairment import Impairment
from emulator.incoming import create_incoming, ring_incoming
from emulator.mediaprocessor import MediaProcessorLink, Vanishing
from emulator.odata import (
    TONES,
    BadRequest,
    bad_request,
    graph_error,
    https_uri,
    not_found,
    optional_bool,
    read_object,
)
from emulator.operations import press_tone

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

ADMIN = "/emulator"


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin API rings bots and arms faults without authentication: only for this machine,
    however the emulator was bound (a public --host must not expose it)."""
    if request.path.startswith(ADMIN + "/") and not _loopback(request.remote):
        return graph_error(403, "Forbidden", "The emulator admin API answers loopback only.")
    return await handler(request)


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def routes(emulator: Emulator) -> list[web.RouteDef]:
    async def incoming(request: web.Request) -> web.Response:
        try:
            call = create_incoming(emulator, await read_object(request))
        except BadRequest as exc:
            return bad_request(str(exc))
        logger.info("Incoming call %s for app %s", call.id, call.app_id)
        return web.json_response({"callId": call.id}, status=201)

    async def tones(request: web.Request) -> web.Response:
        call = emulator.calls.get(request.match_info["call_id"])
        if call is None or call.ending:
            return not_found()
        try:
            tone = (await read_object(request)).get("tone")
        except BadRequest as exc:
            return bad_request(str(exc))
        if tone not in TONES:
            return bad_request("tone must be tone0-tone9, star, pound, a-d or flash.")
        if not call.tone_subscribed:
            return graph_error(409, "Conflict", "The application has not subscribed to tones.")
        if call.state != "established":
            return graph_error(409, "Conflict", f"The call is {call.state}, not established.")
        press_tone(emulator, call, str(tone))
        return web.json_response({"sequenceId": call.tone_sequence}, status=202)

    async def faults(request: web.Request) -> web.Response:
        try:
            add_rule(emulator, parse_rule(await read_object(request)))
        except BadRequest as exc:
            return bad_request(str(exc))
        return web.Response(status=204)

    def media_link(request: web.Request) -> MediaProcessorLink | web.Response:
        call = emulator.calls.get(request.match_info["call_id"])
        if call is None or call.ending:
            return not_found()
        link = call.link
        if link is None or link.vanished is not None or not link.connected.is_set():
            return graph_error(409, "Conflict", "The call has no connected app-hosted media.")
        return link

    async def impairment(request: web.Request) -> web.Response:
        link = media_link(request)
        if isinstance(link, web.Response):
            return link
        if request.method == "POST":
            try:
                link.set_impairment(Impairment.parse(await read_object(request)))
            except BadRequest as exc:
                return bad_request(str(exc))
        return web.json_response(
            {
                "impairment": link.impairment.to_json(),
                "mediaSeconds": link.media_seconds(),
                "counts": link.impairment_counts.to_json(),
            }
        )

    async def vanish(request: web.Request) -> web.Response:
        link = media_link(request)
        if isinstance(link, web.Response):
            return link
        try:
            body = await read_object(request, required=False)
            ends = optional_bool(body, "graphEndsCall", True)
            detection = body.get("detectionSeconds")
            if detection is not None and (
                isinstance(detection, bool)
                or not isinstance(detection, int | float)
                or detection < 0
            ):
                raise BadRequest("detectionSeconds must be a number of seconds, 0 or more.")
        except BadRequest as exc:
            return bad_request(str(exc))
        await link.vanish(Vanishing(ends, None if detection is None else float(detection)))
        return web.Response(status=204)

    async def ring_scenario(request: web.Request) -> web.Response:
        """Ring the bot with the scenario's incoming calls, at their times from now."""
        try:
            body = await read_object(request)
            callback = https_uri(body, "callbackUri", required=True)
        except BadRequest as exc:
            return bad_request(str(exc))
        if not emulator.config.incoming:
            return graph_error(409, "Conflict", "The scenario has no incoming calls.")
        task = asyncio.create_task(ring_incoming(emulator, str(callback)))
        emulator.background.add(task)
        task.add_done_callback(emulator.background.discard)
        return web.json_response({"calls": len(emulator.config.incoming)}, status=202)

    async def list_calls(request: web.Request) -> web.Response:
        return web.json_response(
            {"value": [{"id": c.id, "state": c.state} for c in emulator.calls.values()]}
        )

    async def view_call(request: web.Request) -> web.Response:
        call = emulator.calls.get(request.match_info["call_id"])
        if call is None:
            return not_found()
        return web.json_response(call_view(call))

    return [
        web.post(ADMIN + "/calls/incoming", incoming),
        web.post(ADMIN + "/calls/{call_id}/tones", tones),
        web.post(ADMIN + "/faults", faults),
        web.post(ADMIN + "/calls/{call_id}/media/impairment", impairment),
        web.get(ADMIN + "/calls/{call_id}/media/impairment", impairment),
        web.post(ADMIN + "/calls/{call_id}/media/vanish", vanish),
        web.post(ADMIN + "/scenario/ring", ring_scenario),
        web.get(ADMIN + "/calls", list_calls),
        web.get(ADMIN + "/calls/{call_id}", view_call),
    ]


def call_view(call: EmulatedCall) -> dict[str, Any]:
    """Everything the emulator knows about a call, for tests to assert on."""
    hosting = None if call.media is None else ("app" if call.app_hosted else "service")
    return {
        "id": call.id,
        "appId": call.app_id,
        "tenantId": call.tenant_id,
        "direction": call.direction,
        "kind": call.kind,
        "state": call.state,
        "ended": call.state in ENDED,
        "statesNotified": list(call.states_notified),
        "resultInfo": call.result_info,
        "callbackUri": call.callback_uri,
        "mediaHosting": hosting,
        "myParticipantId": call.my_participant_id,
        "participants": call.roster.snapshot(),
        "rosterSequenceNumber": call.roster.sequence,
        "deltaRoster": call.roster.delta,
        "operations": [
            {
                "id": op.id,
                "type": op.kind,
                "status": op.status,
                "clientContext": op.client_context,
                "resultInfo": op.result_info,
            }
            for op in call.operations.values()
        ],
        "recordingStatus": call.recording_status,
        "toneSubscribed": call.tone_subscribed,
        "tones": list(call.tones),
        "muted": call.bot.is_muted,
        "screenSharingRole": call.screen_sharing_role,
        "notificationsPosted": len(call.notifications),
    }
