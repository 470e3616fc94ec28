"""Call actions that answer with a commsOperation or 202: self mute/unmute, subscribeToTone and
the tones that follow, sendDtmfTones, updateRecordingStatus, changeScreenSharingRole,
addLargeGalleryView, and transfer (the methods of https://learn.microsoft.com/en-us/graph/api/resources/call)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import (
    EmulatedCall,
    add_operation,
    end_call,
    finish_operation,
    notify_call,
    publish_roster,
    result_info,
    scaled,
    set_state,
    spawn,
)
from emulator.odata import (
    CALL,
    TONES,
    BadRequest,
    bounded_int,
    client_context,
    identity_id,
    identity_set,
)
from emulator.roster import media_stream
from emulator.routing import ESTABLISHED, call_action, operation_response

if TYPE_CHECKING:
    from emulator.server import Emulator

# Success ends {0, 7015 GracefulTransferCompleted}; failure returns the call to established
# with {500, 7000} (https://learn.microsoft.com/en-us/graph/api/call-transfer).
TRANSFERRED = result_info(0, 7015, "GracefulTransferCompleted")
TRANSFER_FAILED = result_info(500, 7000, "The transfer target declined the call.")
# The docs give no durations for these; in Graph seconds, before EmulatorConfig.time_scale.
TRANSFER_STEP_SECONDS = 1.0  # transferring -> transferAccepted -> terminated
GALLERY_SECONDS = 0.5  # addLargeGalleryView until the view joins
TONE_SECONDS = 0.1  # how long one sent DTMF tone sounds
MAX_DTMF_TONES = 1000
RECORDING_STATUSES = frozenset({"notRecording", "recording", "failed"})
SCREEN_SHARING_ROLES = frozenset({"viewer", "sharer"})
ESTABLISHING_OR_ESTABLISHED = frozenset({"establishing", "established"})


def routes(emulator: Emulator) -> list[web.RouteDef]:
    def post(action: str, handler: Any, states: frozenset[str] = ESTABLISHED) -> web.RouteDef:
        return web.post(f"{CALL}/{action}", call_action(emulator, handler, states=states))

    return [
        post("mute", mute),
        post("unmute", unmute),
        post("subscribeToTone", subscribe_to_tone),
        post("sendDtmfTones", send_dtmf_tones),
        post("updateRecordingStatus", update_recording_status, ESTABLISHING_OR_ESTABLISHED),
        post("changeScreenSharingRole", change_screen_sharing_role),
        post("addLargeGalleryView", add_large_gallery_view),
        post("transfer", transfer),
    ]


async def mute(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    return _self_mute(emulator, call, body, muted=True)


async def unmute(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    return _self_mute(emulator, call, body, muted=False)


def _self_mute(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], *, muted: bool
) -> web.Response:
    """200 with a completed (un)muteParticipantOperation, then a roster update with the app's
    isMuted changed (https://learn.microsoft.com/en-us/graph/api/call-mute, .../call-unmute)."""
    kind = "muteParticipantOperation" if muted else "unmuteParticipantOperation"
    operation = add_operation(call, kind, client_context(body))
    operation.status = "completed"
    call.bot.is_muted = muted
    publish_roster(emulator, call, [call.bot])
    return operation_response(emulator, call, operation)


async def subscribe_to_tone(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 with a completed subscribeToToneOperation; tones then arrive as call `updated` with
    toneInfo (https://learn.microsoft.com/en-us/graph/api/call-subscribetotone). That page
    limits it to service-hosted calls; the emulator allows it on app-hosted calls too, so an
    app-hosted bot can be tested with tones."""
    operation = add_operation(call, "subscribeToToneOperation", client_context(body))
    operation.status = "completed"
    call.tone_subscribed = True
    return operation_response(emulator, call, operation)


def press_tone(emulator: Emulator, call: EmulatedCall, tone: str) -> None:
    """Someone pressed a key: `updated` call with toneInfo {sequenceId, tone}."""
    call.tone_sequence += 1
    call.tones.append(tone)
    tone_info = {
        "@odata.type": "#microsoft.graph.toneInfo",
        "sequenceId": call.tone_sequence,
        "tone": tone,
    }
    notify_call(emulator, call, "updated", toneInfo=tone_info)


async def send_dtmf_tones(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 with a running sendDtmfTonesOperation; when the tones have played, the operation is
    `deleted` completed with completionReason completedSuccessfully
    (https://learn.microsoft.com/en-us/graph/api/call-senddtmftones)."""
    tones = body.get("tones")
    if (
        not isinstance(tones, list)
        or not 1 <= len(tones) <= MAX_DTMF_TONES
        or not all(isinstance(t, str) and t in TONES for t in tones)
    ):
        raise BadRequest("tones must list tone0-tone9, star, pound, a-d or flash.")
    delay_ms = bounded_int(body, "delayBetweenTonesMs", 0, 60_000, 0)
    operation = add_operation(call, "sendDtmfTonesOperation", client_context(body))
    seconds = len(tones) * TONE_SECONDS + (len(tones) - 1) * delay_ms / 1000.0

    async def play() -> None:
        await asyncio.sleep(scaled(emulator, seconds))
        finish_operation(
            emulator, call, operation, "completed", None, completionReason="completedSuccessfully"
        )

    spawn(call, play())
    return operation_response(emulator, call, operation)


async def update_recording_status(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a completed updateRecordingStatusOperation
    (https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus). The status also
    shows in the app's roster entry as recordingInfo {initiator, recordingStatus}
    (https://learn.microsoft.com/en-us/graph/api/resources/recordinginfo)."""
    status = body.get("status")
    if status not in RECORDING_STATUSES:
        raise BadRequest("status must be notRecording, recording or failed.")
    operation = add_operation(call, "updateRecordingStatusOperation", client_context(body))
    operation.status = "completed"
    call.recording_status = str(status)
    call.recording_history.append((time.monotonic(), str(status)))
    call.bot.recording_info = {
        "@odata.type": "#microsoft.graph.recordingInfo",
        "initiator": {"application": {"id": call.app_id}},
        "recordingStatus": status,
    }
    publish_roster(emulator, call, [call.bot])
    return operation_response(emulator, call, operation)


async def change_screen_sharing_role(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202 and a roster update: the app's videoBasedScreenSharing stream becomes sendOnly for a
    sharer ("only supported for ... App-Hosted Media", https://learn.microsoft.com/en-us/graph/api/call-changescreensharingrole)."""
    role = body.get("role")
    if role not in SCREEN_SHARING_ROLES:
        raise BadRequest("role must be viewer or sharer.")
    if not call.app_hosted:
        raise BadRequest("changeScreenSharingRole is only supported with app-hosted media.")
    call.screen_sharing_role = str(role)
    direction = "sendOnly" if role == "sharer" else "receiveOnly"
    streams = call.bot.media_streams
    vbss = next((s for s in streams if s["mediaType"] == "videoBasedScreenSharing"), None)
    if vbss is None:
        msi = call.roster.next_msi()
        streams.append(
            media_stream("videoBasedScreenSharing", "applicationsharing-video", msi, direction)
        )
    else:
        vbss["direction"] = direction
    publish_roster(emulator, call, [call.bot])
    return web.Response(status=202)


async def add_large_gallery_view(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202 + Location with a running addLargeGalleryViewOperation; then the operation completes
    and the roster gains the LargeGallery-V2 participant
    (https://learn.microsoft.com/en-us/graph/api/call-addlargegalleryview)."""
    operation = add_operation(call, "addLargeGalleryViewOperation", client_context(body))

    async def add_view() -> None:
        await asyncio.sleep(scaled(emulator, GALLERY_SECONDS))
        finish_operation(emulator, call, operation, "completed", None)
        publish_roster(emulator, call, [call.roster.add_large_gallery(call.app_id)])

    spawn(call, add_view())
    return operation_response(emulator, call, operation, status=202)


async def transfer(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202; transferring, then transferAccepted and `deleted` terminated {0, 7015}, or back to
    established with {500, 7000} when the target declines (https://learn.microsoft.com/en-us/graph/api/call-transfer).
    A target whose id is in EmulatorConfig.declining_users declines."""
    target = body.get("transferTarget")
    identity = identity_set(target, "transferTarget")
    assert isinstance(target, dict)
    replaces = target.get("replacesCallId", body.get("replacesCallId"))
    if replaces is not None and not isinstance(replaces, str):
        raise BadRequest("replacesCallId must be a call id.")
    transferee = body.get("transferee")
    if transferee is not None:
        identity_set(transferee, "transferee")
    spawn(call, _run_transfer(emulator, call, identity_id(identity), replaces))
    return web.Response(status=202)


async def _run_transfer(
    emulator: Emulator, call: EmulatedCall, target_id: str | None, replaces: str | None
) -> None:
    set_state(emulator, call, "transferring")
    await asyncio.sleep(scaled(emulator, TRANSFER_STEP_SECONDS))
    if target_id in emulator.config.declining_users:
        call.result_info = TRANSFER_FAILED
        set_state(emulator, call, "established")
        return
    set_state(emulator, call, "transferAccepted")
    await asyncio.sleep(scaled(emulator, TRANSFER_STEP_SECONDS))
    # A consultative transfer (replacesCallId) also ends the app's call with the target.
    replaced = emulator.calls.get(replaces) if replaces else None
    if replaced is not None and replaced.app_id == call.app_id and replaced is not call:
        end_call(emulator, replaced, TRANSFERRED)
    end_call(emulator, call, TRANSFERRED)
