"""The bodies of POST /communications/calls for joining a meeting, and the one line a log says
about a request (https://learn.microsoft.com/en-us/graph/api/application-post-calls)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from bot.graph import shapes
from bot.participants import describe_identity


def meeting_body(
    chat: dict[str, Any], meeting: dict[str, Any], guest_name: str | None
) -> dict[str, Any]:
    """chatInfo and meetingInfo, and with guest_name a guest identity as the source."""
    body: dict[str, Any] = {"chatInfo": chat, "meetingInfo": meeting}
    if guest_name is not None:
        # Joining as a guest needs Calls.JoinGroupCallAsGuest.All (Permissions in
        # https://learn.microsoft.com/en-us/graph/api/application-post-calls).
        body["source"] = {
            "@odata.type": "#microsoft.graph.participantInfo",
            "identity": shapes.identity_set(guest_id=str(uuid.uuid4()), display_name=guest_name),
        }
    return body


def describe_request(body: Mapping[str, Any]) -> str:
    """What a POST /communications/calls asks for, as a log line says it."""
    meeting = body.get("meetingInfo")
    if isinstance(meeting, dict):
        chat = body.get("chatInfo")
        thread = chat.get("threadId") if isinstance(chat, dict) else None
        return f"joining meeting {thread or meeting.get('joinMeetingId') or '(no id)'}"
    targets = body.get("targets") or []
    return "calling " + ", ".join(
        describe_identity(t.get("identity") if isinstance(t, dict) else None) for t in targets
    )
