"""/calls/{id}/participants: list and get, invite, mute a participant, remove a participant
(https://learn.microsoft.com/en-us/graph/api/participant-get, .../participant-invite,
.../participant-mute, .../participant-delete)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import (
    EmulatedCall,
    add_operation,
    finish_operation,
    publish_roster,
    scaled,
    spawn,
)
from emulator.odata import CALL, BadRequest, client_context, identity_set, not_found
from emulator.routing import call_action, find_call, operation_response

if TYPE_CHECKING:
    from emulator.server import Emulator

PARTICIPANTS = CALL + "/participants"
# "Inviting up to 5 participants is supported" (https://learn.microsoft.com/en-us/graph/api/participant-invite)
MAX_INVITES = 5
INVITE_SECONDS = 1.0  # until the invitees answer; the docs give no figure
# removedState.reason is a free string
# (https://learn.microsoft.com/en-us/graph/api/resources/removedstate); the emulator's values:
REMOVED_BY_APP = "removedByApplication"


def routes(emulator: Emulator) -> list[web.RouteDef]:
    async def list_participants(request: web.Request) -> web.Response:
        call = find_call(emulator, request, allow_ending=True)
        if isinstance(call, web.Response):
            return call
        context = f"{emulator.base_url}/v1.0/$metadata#communications/calls('{call.id}')"
        return web.json_response(
            {"@odata.context": f"{context}/participants", "value": call.roster.snapshot()}
        )

    async def get_participant(request: web.Request) -> web.Response:
        call = find_call(emulator, request, allow_ending=True)
        if isinstance(call, web.Response):
            return call
        participant = call.roster.get(request.match_info["participant_id"])
        if participant is None:
            return not_found("Participant not found.")
        return web.json_response(participant.to_graph())

    return [
        web.get(PARTICIPANTS, list_participants),
        web.get(PARTICIPANTS + "/{participant_id}", get_participant),
        web.post(PARTICIPANTS + "/invite", call_action(emulator, invite, body_required=True)),
        web.post(PARTICIPANTS + "/{participant_id}/mute", call_action(emulator, mute)),
        web.delete(PARTICIPANTS + "/{participant_id}", call_action(emulator, remove)),
    ]


async def invite(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a running inviteParticipantsOperation; then the operation `deleted`
    completed, then a roster update with the new participants
    (https://learn.microsoft.com/en-us/graph/api/participant-invite)."""
    invited = body.get("participants")
    if not isinstance(invited, list) or not 1 <= len(invited) <= MAX_INVITES:
        raise BadRequest(f"participants must list 1 to {MAX_INVITES} invitationParticipantInfo.")
    identities = [identity_set(p, "participants[]") for p in invited]
    for entry in invited:
        replaces = entry.get("replacesCallId")
        if replaces is not None and not isinstance(replaces, str):
            raise BadRequest("replacesCallId must be a call id.")
    operation = add_operation(call, "inviteParticipantsOperation", client_context(body))
    operation.extra["participants"] = [
        {
            "@odata.type": "#microsoft.graph.invitationParticipantInfo",
            "identity": identity,
            "replacesCallId": entry.get("replacesCallId"),
        }
        for identity, entry in zip(identities, invited, strict=True)
    ]

    async def join() -> None:
        await asyncio.sleep(scaled(emulator, INVITE_SECONDS))
        finish_operation(emulator, call, operation, "completed", None)
        added = [
            call.roster.add_identity(identity, call.tenant_id, talks=False)
            for identity in identities
        ]
        for participant in added:
            if participant.script is not None:
                call.scripts.append(participant.script)
                if call.link is not None:
                    call.link.add_participant(participant.script)
        publish_roster(emulator, call, added)

    spawn(call, join())
    return operation_response(emulator, call, operation)


async def mute(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a completed muteParticipantOperation; roster update with isMuted
    (https://learn.microsoft.com/en-us/graph/api/participant-mute)."""
    participant = call.roster.get(request.match_info["participant_id"])
    if participant is None:
        return not_found("Participant not found.")
    operation = add_operation(call, "muteParticipantOperation", client_context(body))
    operation.status = "completed"
    participant.is_muted = True
    if call.link is not None and participant.script is not None:
        call.link.set_muted(participant.script.msi, True)
    publish_roster(emulator, call, [participant])
    return operation_response(emulator, call, operation)


async def remove(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """204; the participant leaves the roster (https://learn.microsoft.com/en-us/graph/api/participant-delete).
    The app leaves a call by deleting the call, so naming its own participant is a bad request
    here."""
    participant_id = request.match_info["participant_id"]
    if participant_id == call.my_participant_id:
        raise BadRequest("To leave the call, DELETE the call.")
    removed = call.roster.remove(participant_id, REMOVED_BY_APP)
    if removed is None:
        return not_found("Participant not found.")
    if removed.script is not None:
        call.scripts = [s for s in call.scripts if s.msi != removed.script.msi]
        if call.link is not None:
            call.link.remove_participant(removed.script.msi)
    publish_roster(emulator, call, [removed])
    return web.Response(status=204)
