"""The emulator's live status page: meetings, calls, participants (with who is speaking) and
operations, at GET /emulator/status (HTML that polls GET /emulator/status.json every second).
Loopback only, like the rest of /emulator/ (admin.py): it shows call details."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import ENDED, EmulatedCall

if TYPE_CHECKING:
    from emulator.server import Emulator

ADMIN = "/emulator"
CALLS_SHOWN = 200  # the newest calls; a long-running emulator keeps up to MAX_CALLS


def routes(emulator: Emulator) -> list[web.RouteDef]:
    page = resources.files("emulator").joinpath("static/status.html").read_text("utf-8")

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def status_json(request: web.Request) -> web.Response:
        return web.json_response(status(emulator))

    return [
        web.get(ADMIN + "/status", status_page),
        web.get(ADMIN + "/status.json", status_json),
    ]


def status(emulator: Emulator) -> dict[str, Any]:
    calls = list(emulator.calls.values())[-CALLS_SHOWN:]
    return {
        "graph": f"{emulator.base_url}/v1.0",
        "apps": [
            {"appId": a.app_id, "tenantId": a.tenant_id} for a in emulator.config.apps.values()
        ],
        "meetings": [
            {
                "threadId": m.thread_id,
                "subject": m.subject,
                "tenantId": m.tenant_id,
                "joinUrl": emulator.join_url(m),
                "joinPage": emulator.join_page_url(m),
                "participants": [
                    {"name": p.display_name, "kind": p.identity_kind, "msi": p.msi}
                    for p in m.participants
                ],
                "calls": [c.id for c in calls if c.meeting is m and c.state not in ENDED],
            }
            for m in emulator.config.meetings
        ],
        "calls": [_call(c) for c in reversed(calls)],
        "requests": len(emulator.requests),
    }


def _call(call: EmulatedCall) -> dict[str, Any]:
    speaking = _speaking(call)
    participants = []
    for participant in call.roster.participants.values():
        msis = [
            int(s["sourceId"])
            for s in participant.media_streams
            if s.get("mediaType") == "audio" and str(s.get("sourceId", "")).isdigit()
        ]
        participants.append(
            {
                "id": participant.id,
                "name": _name(participant.identity),
                "kind": next(iter(participant.identity), ""),
                "muted": participant.is_muted,
                "speaking": any(m in speaking for m in msis),
                "streams": [f"{s['mediaType']}:{s['sourceId']}" for s in participant.media_streams],
                "me": participant.id == call.my_participant_id,
            }
        )
    return {
        "id": call.id,
        "appId": call.app_id,
        "tenantId": call.tenant_id,
        "kind": call.kind,
        "direction": call.direction,
        "state": call.state,
        "states": list(call.states_notified),
        "resultInfo": call.result_info,
        "media": None if call.media is None else ("app" if call.app_hosted else "service"),
        "participants": participants,
        "operations": [
            {"type": op.kind, "status": op.status, "resultInfo": op.result_info}
            for op in list(call.operations.values())[-20:]
        ],
        "recordingStatus": call.recording_status,
        "notifications": len(call.notifications),
    }


def _speaking(call: EmulatedCall) -> set[int]:
    link = call.link
    if link is None or call.state in ENDED:
        return set()
    log = link.speaking_log
    return set(log[-1].audible) if log else set()


def _name(identity: dict[str, Any]) -> str:
    for value in identity.values():
        if isinstance(value, dict):
            return str(value.get("displayName") or value.get("id") or "")
    return ""
