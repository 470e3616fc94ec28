"""Incoming calls: the `created` notification Graph posts for a call to the app, and the app's
three answers, answer / reject / redirect, inside the 15 s window (5 s for policy-based
recording) (https://learn.microsoft.com/en-us/graph/api/call-answer, .../call-reject,
.../call-redirect)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import (
    POLICY_RING_SECONDS,
    RING_SECONDS,
    RING_TIMEOUT,
    EmulatedCall,
    app_display_name,
    bot_participant,
    end_call,
    establish,
    notify_call,
    register,
    scaled,
)
from emulator.odata import (
    CALL,
    BadRequest,
    bounded_int,
    call_options,
    https_uri,
    identity_id,
    identity_set,
    media_config,
    modalities,
    optional_bool,
)
from emulator.participant import IncomingCall, Meeting, ParticipantScript
from emulator.presence import start_timeline
from emulator.roster import from_script
from emulator.routing import INCOMING, call_action

if TYPE_CHECKING:
    from emulator.server import Emulator

# acceptedModalities (https://learn.microsoft.com/en-us/graph/api/call-answer)
ACCEPTED_MODALITIES = frozenset({"audio", "video", "videoBasedScreenSharing"})
# None, Busy, Forbidden (https://learn.microsoft.com/en-us/graph/api/call-reject)
REJECT_REASONS = frozenset({"none", "busy", "forbidden"})
# "We support up to 25 targets for simulring" (https://learn.microsoft.com/en-us/graph/api/call-redirect)
MAX_REDIRECT_TARGETS = 25
DEFAULT_CALLER = ParticipantScript(
    "Casey Caller", str(uuid.UUID(int=0xCA11E4)), 0xCA11, "", seed=11
)


def create_incoming(emulator: Emulator, body: dict[str, Any]) -> EmulatedCall:
    """A call to the app (POST /emulator/calls/incoming): posts `created` with state incoming."""
    app = emulator.config.apps.get(str(body.get("appId")))
    if app is None:
        raise BadRequest("appId must name a registered application.")
    tenant = body.get("tenantId", app.tenant_id)
    if not isinstance(tenant, str):
        raise BadRequest("tenantId must be a string.")
    policy = optional_bool(body, "policyRecording", False)
    script = _caller(body.get("caller"))
    return ring(
        emulator,
        app.app_id,
        tenant,
        str(https_uri(body, "callbackUri", required=True)),
        script,
        policy,
    )


def ring_scripted(
    emulator: Emulator, app_id: str, callback_uri: str, entry: IncomingCall
) -> EmulatedCall:
    """A scenario's incoming call (emulator/scenario.py): its caller's script and, for policy
    recording, the recorded group who join later."""
    app = emulator.config.apps.get(app_id)
    if app is None:
        raise BadRequest("appId must name a registered application.")
    call = ring(
        emulator, app.app_id, app.tenant_id, callback_uri, entry.caller, entry.policy_recording
    )
    if entry.group:
        # The recorded group plays as a meeting's timeline on this call (presence.py): joins
        # up to the bot's participantCapacity land in this call's roster, the rest ring anew.
        call.meeting = Meeting(
            thread_id=f"19:pbr_{call.id}@thread.v2",
            organizer_id=entry.caller.user_id,
            tenant_id=app.tenant_id,
            participants=[entry.caller, *entry.group],
        )

        def overflow(script: ParticipantScript) -> None:
            if call.state == "established":
                extra = ring(emulator, app.app_id, app.tenant_id, call.callback_uri, script, True)
                call.overflow_calls.append(extra.id)

        call.on_overflow = overflow
    return call


def ring(
    emulator: Emulator,
    app_id: str,
    tenant: str,
    callback_uri: str,
    script: ParticipantScript,
    policy: bool,
) -> EmulatedCall:
    """Ring the app: a `created` notification with state incoming, and the ring timer."""
    call = EmulatedCall(
        id=str(uuid.uuid4()),
        app_id=app_id,
        tenant_id=tenant,
        callback_uri=callback_uri,
        direction="incoming",
        kind="incoming",
        request={"requestedModalities": ["audio"]},
        scenario_id=str(uuid.uuid4()),
        state="incoming",
        scripts=[script],
    )
    caller = call.roster.add(from_script(script))
    call.roster.add(bot_participant(call, None, app_display_name(emulator, app_id)))
    call.fields.update(_incoming_fields(call, script, caller.id, policy))
    register(emulator, call)
    notify_call(emulator, call, "created")
    seconds = POLICY_RING_SECONDS if policy else RING_SECONDS
    call.task = asyncio.create_task(_ring(emulator, call, seconds))
    return call


def _caller(given: Any) -> ParticipantScript:
    if given is None:
        return ParticipantScript(
            DEFAULT_CALLER.display_name,
            DEFAULT_CALLER.user_id,
            DEFAULT_CALLER.msi,
            str(uuid.uuid4()),
            DEFAULT_CALLER.seed,
        )
    if not isinstance(given, dict):
        raise BadRequest("caller must be an object.")
    user_id, name, msi = given.get("userId"), given.get("displayName"), given.get("msi")
    if not isinstance(user_id, str) or not isinstance(name, str):
        raise BadRequest("caller needs userId and displayName strings.")
    if isinstance(msi, bool) or not isinstance(msi, int) or not 0 < msi < 2**32:
        raise BadRequest("caller.msi must be a positive 32-bit integer.")
    return ParticipantScript(name, user_id, msi, str(uuid.uuid4()), seed=msi)


def _incoming_fields(
    call: EmulatedCall, caller: ParticipantScript, caller_participant: str, policy: bool
) -> dict[str, Any]:
    """source, targets and incomingContext as examples 1-3 of https://learn.microsoft.com/en-us/graph/api/call-answer
    show them; a policy
    recording call targets the application instance, observes the caller, and carries
    applicationMetadata.botData (example 3)."""
    kind = "applicationInstance" if policy else "application"
    fields: dict[str, Any] = {
        "source": {
            "@odata.type": "#microsoft.graph.participantInfo",
            "id": caller_participant,
            "identity": {
                "@odata.type": "#microsoft.graph.identitySet",
                "user": {"id": caller.user_id, "displayName": caller.display_name},
            },
            "endpointType": "default",
            "region": "amer",
            "languageId": "en-US",
        },
        "targets": [
            {
                "@odata.type": "#microsoft.graph.invitationParticipantInfo",
                "id": call.my_participant_id,
                "identity": {
                    "@odata.type": "#microsoft.graph.identitySet",
                    kind: {"id": call.app_id, "identityProvider": "AAD"},
                },
                "endpointType": "default",
            }
        ],
        "incomingContext": {
            "@odata.type": "#microsoft.graph.incomingContext",
            "sourceParticipantId": caller_participant,
        },
    }
    if policy:
        fields["incomingContext"]["observedParticipantId"] = caller_participant
        fields["meetingInfo"] = {"@odata.type": "#microsoft.graph.tokenMeetingInfo", "token": ""}
        fields["applicationMetadata"] = {
            "botData": {
                "mediaHostedRegion": "USEA",
                "user": {"participationMethod": "callee", "clientLocation": "US"},
                "otherSideUser": {
                    "id": caller.user_id,
                    "participantId": caller_participant,
                    "tenantId": call.tenant_id,
                    "participationMethod": "caller",
                    "clientLocation": "US",
                },
                "inviteReasons": ["PolicyBasedRecording"],
                "policyIdentifier": "Emulator Recording Policy",
                "pairedRecorders": [],
                "otherRecorders": [],
            }
        }
    return fields


async def _ring(emulator: Emulator, call: EmulatedCall, seconds: float) -> None:
    await asyncio.sleep(scaled(emulator, seconds))
    if call.state == "incoming":
        end_call(emulator, call, RING_TIMEOUT)


async def ring_incoming(emulator: Emulator, callback_uri: str) -> list[EmulatedCall]:
    """Ring the bot at callback_uri with the configured incoming calls (a scenario's
    [[incoming]], EmulatorConfig.incoming) at their times, seconds from now; returns the
    calls once all have rung. Raises BadRequest when one names an unknown app."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    calls = []
    for entry in sorted(emulator.config.incoming, key=lambda c: c.at):
        delay = start + entry.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the scenario's timeline: pacing, not waiting
        app_id = entry.app_id or next(iter(emulator.config.apps), "")
        calls.append(ring_scripted(emulator, app_id, callback_uri, entry))
    return calls


def routes(emulator: Emulator) -> list[web.RouteDef]:
    return [
        web.post(CALL + "/answer", call_action(emulator, answer, states=INCOMING)),
        web.post(CALL + "/reject", call_action(emulator, reject, states=INCOMING)),
        web.post(CALL + "/redirect", call_action(emulator, redirect, states=INCOMING)),
    ]


async def answer(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202; then establishing, the media processor connects (app-hosted), established."""
    accepted = modalities(body, "acceptedModalities", ACCEPTED_MODALITIES)
    media = media_config(body)
    callback = https_uri(body, "callbackUri", required=False)
    options = call_options(body)
    if "participantCapacity" in body:
        call.participant_capacity = bounded_int(body, "participantCapacity", 1, 10_000, 1)
    if call.task is not None:
        call.task.cancel()  # the ring timer
    call.media = media
    call.callback_uri = callback or call.callback_uri
    call.request.update(requestedModalities=accepted, callOptions=options or None)
    call.roster.delta = bool(options.get("isDeltaRosterEnabled"))
    call.task = asyncio.create_task(establish(emulator, call, start_timeline))
    return web.Response(status=202)


async def reject(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202; then the call is `deleted`, with no resultInfo in example 2 of
    https://learn.microsoft.com/en-us/graph/api/call-reject."""
    reason = body.get("reason", "none")
    if not isinstance(reason, str) or reason.lower() not in REJECT_REASONS:
        raise BadRequest("reason must be none, busy or forbidden.")
    call.callback_uri = https_uri(body, "callbackUri", required=False) or call.callback_uri
    end_call(emulator, call, None)
    return web.Response(status=202)


async def redirect(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """202; then `deleted` terminated (https://learn.microsoft.com/en-us/graph/api/call-redirect)."""
    targets = body.get("targets")
    if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_REDIRECT_TARGETS:
        raise BadRequest(f"targets must list 1 to {MAX_REDIRECT_TARGETS} participants.")
    identities = [identity_set(target, "targets[]") for target in targets]
    # timeout: 15 to 90 s; 55 by default for one target, 60 for several
    # (https://learn.microsoft.com/en-us/graph/api/call-redirect).
    bounded_int(body, "timeout", 15, 90, 55 if len(targets) == 1 else 60)
    call.callback_uri = https_uri(body, "callbackUri", required=False) or call.callback_uri
    call.redirected_to = [identity_id(identity) or "" for identity in identities]
    end_call(emulator, call, None)
    return web.Response(status=202)


__all__ = ["create_incoming", "routes"]
