"""The Graph calls API: POST /communications/calls (meeting join with app-hosted media), GET and
DELETE, with the documented responses and notification sequences (graph-comms.md 1.2-1.6)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web

from emulator.keys import verify
from emulator.login import GRAPH_RESOURCE
from emulator.mediaprocessor import MediaProcessorError, MediaProcessorLink
from emulator.notifier import notification
from emulator.participant import Meeting

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

CALLS = "/v1.0/communications/calls"
MODALITIES = {"audio", "video", "videoBasedScreenSharing", "data"}
# 500/7112: "MediaControllerConversationAddParticipantFailed", the documented symptom of a bot
# media endpoint that cannot be reached (graph-comms.md 1.4 and 1.8).
MEDIA_FAILED = {
    "code": 500,
    "subcode": 7112,
    "message": "MediaControllerConversationAddParticipantFailed",
}
HUNG_UP = {"code": 0, "subcode": 0, "message": "The call was ended by the application."}


@dataclass
class EmulatedCall:
    id: str
    app_id: str
    tenant_id: str
    callback_uri: str
    request: dict[str, Any]
    meeting: Meeting
    scenario_id: str
    my_participant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    chain_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "establishing"
    result_info: dict[str, Any] | None = None
    states_notified: list[str] = field(default_factory=list)
    link: MediaProcessorLink | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"/communications/calls/{self.id}"

    def resource(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.call",
            "id": self.id,
            "state": self.state,
            "direction": "outgoing",
            "callbackUri": self.callback_uri,
            "callChainId": self.chain_id,
            "myParticipantId": self.my_participant_id,
            "requestedModalities": self.request.get("requestedModalities"),
            "mediaConfig": self.request.get("mediaConfig"),
            "chatInfo": self.request.get("chatInfo"),
            "meetingInfo": self.request.get("meetingInfo"),
            "tenantId": self.tenant_id,
            "resultInfo": self.result_info,
        }

    def roster(self) -> list[dict[str, Any]]:
        people = [
            {
                "@odata.type": "#microsoft.graph.participant",
                "id": p.participant_id,
                "info": {
                    "identity": {"user": {"id": p.user_id, "displayName": p.display_name}},
                    "endpointType": "default",
                },
                "mediaStreams": [
                    {
                        "mediaType": "audio",
                        "label": "main-audio",
                        "sourceId": str(p.msi),
                        "direction": "sendReceive",
                        "serverMuted": False,
                    }
                ],
                "isMuted": False,
                "isInLobby": False,
            }
            for p in self.meeting.participants
        ]
        people.append(
            {
                "@odata.type": "#microsoft.graph.participant",
                "id": self.my_participant_id,
                "info": {"identity": {"application": {"id": self.app_id}}},
                "mediaStreams": [],
                "isMuted": False,
                "isInLobby": False,
            }
        )
        return people


def graph_error(status: int, code: str, message: str) -> web.Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"request-id": str(uuid.uuid4()), "date": datetime.now(UTC).isoformat()},
        }
    }
    return web.json_response(body, status=status)


def routes(emulator: Emulator) -> list[web.RouteDef]:
    def authenticate(request: web.Request) -> dict[str, Any] | web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            return verify(header[7:], emulator.token_key, GRAPH_RESOURCE)
        except jwt.InvalidTokenError as exc:
            return graph_error(401, "InvalidAuthenticationToken", f"Access token invalid: {exc}")

    async def create_call(request: web.Request) -> web.Response:
        claims = authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return graph_error(400, "BadRequest", "The request body is not valid JSON.")
        problem = _validate_join(body)
        if problem:
            return graph_error(400, "BadRequest", problem)
        meeting = emulator.meeting(body["chatInfo"]["threadId"])
        if meeting is None:
            return graph_error(404, "NotFound", "No meeting with that threadId.")
        blob = json.loads(body["mediaConfig"]["blob"])
        call = EmulatedCall(
            id=str(uuid.uuid4()),
            app_id=claims["appid"],
            tenant_id=claims["tid"],
            callback_uri=body["callbackUri"],
            request=body,
            meeting=meeting,
            scenario_id=request.headers.get("Scenario-Id", str(uuid.uuid4())),
        )
        emulator.calls[call.id] = call
        call.task = asyncio.create_task(_establish(emulator, call, blob))
        location = f"{emulator.base_url}{CALLS}/{call.id}"
        return web.json_response(call.resource(), status=201, headers={"Location": location})

    async def get_call(request: web.Request) -> web.Response:
        claims = authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        call = emulator.calls.get(request.match_info["call_id"])
        if call is None or call.state == "terminated":
            return graph_error(404, "NotFound", "Call not found.")
        return web.json_response(call.resource())

    async def delete_call(request: web.Request) -> web.Response:
        claims = authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        call = emulator.calls.get(request.match_info["call_id"])
        if call is None or call.state in ("terminating", "terminated"):
            return graph_error(404, "NotFound", "Call not found.")
        if call.task is not None:
            call.task.cancel()
        call.task = asyncio.create_task(_terminate(emulator, call, HUNG_UP))
        return web.Response(status=204)

    return [
        web.post(CALLS, create_call),
        web.get(CALLS + "/{call_id}", get_call),
        web.delete(CALLS + "/{call_id}", delete_call),
    ]


def _validate_join(body: Any) -> str | None:
    """What Graph would reject in a meeting-join request, as a message; None if it is fine."""
    if not isinstance(body, dict):
        return "The body must be a call object."
    if body.get("@odata.type") != "#microsoft.graph.call":
        return "@odata.type must be #microsoft.graph.call."
    callback = body.get("callbackUri")
    if not isinstance(callback, str) or not callback.startswith("https://"):
        return "callbackUri must be an https URL."
    modalities = body.get("requestedModalities")
    if not isinstance(modalities, list) or not modalities or not set(modalities) <= MODALITIES:
        return "requestedModalities must list audio, video, videoBasedScreenSharing or data."
    media = body.get("mediaConfig")
    if not isinstance(media, dict):
        return "mediaConfig is required."
    if media.get("@odata.type") != "#microsoft.graph.appHostedMediaConfig":
        return "Only appHostedMediaConfig is emulated so far."
    try:
        blob = json.loads(media.get("blob", ""))
    except (TypeError, json.JSONDecodeError):
        return "mediaConfig.blob must be a JSON string."
    if not isinstance(blob, dict) or not isinstance(blob.get("mpUri"), str):
        return "mediaConfig.blob must carry mpUri."
    chat, meeting = body.get("chatInfo"), body.get("meetingInfo")
    if not isinstance(chat, dict) or not isinstance(chat.get("threadId"), str):
        return "chatInfo.threadId is required to join a meeting."
    if not isinstance(meeting, dict) or "@odata.type" not in meeting:
        return "meetingInfo is required to join a meeting."
    return None


async def _notify_call(emulator: Emulator, call: EmulatedCall, change_type: str) -> None:
    call.states_notified.append(call.state)
    item = notification(change_type, call.url, call.resource())
    await emulator.post_notifications(call, [item])


async def _establish(emulator: Emulator, call: EmulatedCall, blob: dict[str, Any]) -> None:
    await _notify_call(emulator, call, "updated")  # establishing
    if not call.meeting.participants:
        await _terminate(emulator, call, MEDIA_FAILED)
        return
    try:
        call.link = MediaProcessorLink(blob, emulator.client_ssl)
        await call.link.connect(
            call.meeting.participants[0], emulator.config.media_connect_timeout_seconds
        )
    except MediaProcessorError as exc:
        logger.info("Call(%s) media failed: %s", call.id, exc)
        await _terminate(emulator, call, MEDIA_FAILED)
        return
    call.state = "established"
    await _notify_call(emulator, call, "updated")
    roster_url = f"{call.url}/participants"
    await emulator.post_notifications(call, [notification("updated", roster_url, call.roster())])
    await call.link.failed.wait()
    # The bot's media went away under an established call: Graph ends the call.
    await _terminate(emulator, call, MEDIA_FAILED)


async def _terminate(emulator: Emulator, call: EmulatedCall, result: dict[str, Any]) -> None:
    if call.state in ("terminating", "terminated"):
        return
    if call.state == "established":
        call.state = "terminating"
        await _notify_call(emulator, call, "updated")
    if call.link is not None:
        await call.link.close("call ended")
    call.state = "terminated"
    call.result_info = result
    await _notify_call(emulator, call, "deleted")
