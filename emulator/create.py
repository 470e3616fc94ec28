"""POST /communications/calls: join a meeting (organizerMeetingInfo with chatInfo, or
joinMeetingIdMeetingInfo), place a peer-to-peer call (one target) or a group call (several),
with app-hosted or service-hosted media (https://learn.microsoft.com/en-us/graph/api/application-post-calls)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import (
    EmulatedCall,
    app_display_name,
    bot_participant,
    end_call,
    establish,
    register,
    result_info,
    set_state,
)
from emulator.odata import (
    CALLS,
    BadRequest,
    authenticate,
    bad_request,
    call_options,
    https_uri,
    identity_set,
    media_config,
    modalities,
    not_found,
    read_object,
)
from emulator.participant import Meeting
from emulator.presence import initial_participant, present_at_start, start_timeline
from emulator.roster import Roster

if TYPE_CHECKING:
    from emulator.server import Emulator

JOIN_BY_ID = "#microsoft.graph.joinMeetingIdMeetingInfo"
# "up to 5 VoIP users" (the group call examples of https://learn.microsoft.com/en-us/graph/api/application-post-calls)
MAX_GROUP_TARGETS = 5
# The docs do not say what a wrong meeting passcode does. A join is asynchronous, so this
# emulator accepts the request (201) and ends the call the way other join failures end:
# terminated with a resultInfo, here 403 (the caller is not allowed in).
WRONG_PASSCODE = result_info(403, 0, "The meeting passcode is wrong or missing.")


class MeetingNotFound(Exception):
    pass


@dataclass
class CallPlan:
    kind: str  # meeting | p2p | group
    meeting: Meeting | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)
    passcode_ok: bool = True


async def create_call(emulator: Emulator, request: web.Request) -> web.Response:
    claims = authenticate(emulator, request)
    if isinstance(claims, web.Response):
        return claims
    try:
        body = await read_object(request)
        plan = plan_call(emulator, body)
    except BadRequest as exc:
        return bad_request(str(exc))
    except MeetingNotFound as exc:
        return not_found(str(exc))
    call = build_call(emulator, body, plan, claims, request.headers.get("Scenario-Id"))
    register(emulator, call)
    lifecycle = (
        establish(emulator, call, start_timeline) if plan.passcode_ok else _refuse(emulator, call)
    )
    call.task = asyncio.create_task(lifecycle)
    location = f"{emulator.base_url}{CALLS}/{call.id}"
    return web.json_response(call.resource(), status=201, headers={"Location": location})


def plan_call(emulator: Emulator, body: dict[str, Any]) -> CallPlan:
    """What the request asks for; raises BadRequest for what Graph would refuse."""
    if body.get("@odata.type") != "#microsoft.graph.call":
        raise BadRequest("@odata.type must be #microsoft.graph.call.")
    https_uri(body, "callbackUri", required=True)
    modalities(body, "requestedModalities")
    media_config(body)
    call_options(body)
    if body.get("tenantId") is not None and not isinstance(body.get("tenantId"), str):
        raise BadRequest("tenantId must be a string.")
    source = body.get("source")
    if source is not None:
        identity_set(source, "source")
    if body.get("meetingInfo") is not None:
        if body.get("targets"):
            raise BadRequest("targets cannot be combined with meetingInfo.")
        return _plan_join(emulator, body)
    targets = body.get("targets")
    if targets is None:
        raise BadRequest("Give chatInfo and meetingInfo to join a meeting, or targets to call.")
    if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_GROUP_TARGETS:
        raise BadRequest(f"targets must list 1 to {MAX_GROUP_TARGETS} participants.")
    identities = [identity_set(t, "targets[]") for t in targets]
    return CallPlan("p2p" if len(targets) == 1 else "group", targets=identities)


def _plan_join(emulator: Emulator, body: dict[str, Any]) -> CallPlan:
    info = body["meetingInfo"]
    if not isinstance(info, dict) or "@odata.type" not in info:
        raise BadRequest("meetingInfo must be a typed meetingInfo.")
    if info["@odata.type"] == JOIN_BY_ID:
        # joinMeetingIdMeetingInfo {joinMeetingId, passcode (optional)}, no chatInfo.threadId needed
        # (https://learn.microsoft.com/en-us/graph/api/resources/joinmeetingidmeetinginfo).
        meeting_id, passcode = info.get("joinMeetingId"), info.get("passcode")
        if not isinstance(meeting_id, str) or not meeting_id:
            raise BadRequest("meetingInfo.joinMeetingId is required.")
        if passcode is not None and not isinstance(passcode, str):
            raise BadRequest("meetingInfo.passcode must be a string.")
        meetings = emulator.config.meetings
        meeting = next((m for m in meetings if m.join_meeting_id == meeting_id), None)
        if meeting is None:
            raise MeetingNotFound("No meeting with that joinMeetingId.")
        ok = meeting.passcode is None or passcode == meeting.passcode
        return CallPlan("meeting", meeting=meeting, passcode_ok=ok)
    chat = body.get("chatInfo")
    if not isinstance(chat, dict) or not isinstance(chat.get("threadId"), str):
        raise BadRequest("chatInfo.threadId is required to join a meeting.")
    meeting = emulator.meeting(chat["threadId"])
    if meeting is None:
        raise MeetingNotFound("No meeting with that threadId.")
    return CallPlan("meeting", meeting=meeting)


def build_call(
    emulator: Emulator,
    body: dict[str, Any],
    plan: CallPlan,
    claims: dict[str, Any],
    scenario_id: str | None,
) -> EmulatedCall:
    options = body.get("callOptions") or {}
    app_id = str(claims["appid"])
    call = EmulatedCall(
        id=str(uuid.uuid4()),
        app_id=app_id,
        tenant_id=str(body.get("tenantId") or claims["tid"]),
        callback_uri=body["callbackUri"],
        direction="outgoing",
        kind=plan.kind,
        request=body,
        scenario_id=scenario_id or str(uuid.uuid4()),
        media=body["mediaConfig"],
        meeting=plan.meeting,
        roster=Roster(delta=bool(options.get("isDeltaRosterEnabled"))),
    )
    if plan.meeting is not None:
        for script in present_at_start(plan.meeting):
            call.roster.add(initial_participant(plan.meeting, script))
    for identity in plan.targets:
        # The first target talks (a P2P call's other side); further group-call targets listen.
        call.roster.add_identity(identity, call.tenant_id, talks=not call.roster.participants)
    others = list(call.roster.participants.values())
    call.scripts = [p.script for p in others if p.script is not None]
    bot = call.roster.add(
        bot_participant(call, body.get("source"), app_display_name(emulator, app_id))
    )
    call.fields["source"] = body.get("source") or {
        "@odata.type": "#microsoft.graph.participantInfo",
        "identity": bot.identity,
    }
    if plan.targets:
        call.fields["targets"] = body["targets"]
    return call


async def _refuse(emulator: Emulator, call: EmulatedCall) -> None:
    set_state(emulator, call, "establishing")
    end_call(emulator, call, WRONG_PASSCODE)
